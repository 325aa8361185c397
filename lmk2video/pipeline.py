"""LandmarkVideoPipeline: reference image + landmark drawings -> video, with a landmark-conditioned video diffusion model.

Components (AniPortrait's design), registered as a diffusers ``DiffusionPipeline``:

* ``vae``: diffusers ``AutoencoderKL``; reference image -> latents, latents -> frames. ``None`` makes a
  pixel-space model: the "latents" are the RGB frames themselves in ``[-1, 1]`` (3 channels, scale factor 1),
  for small models trained from scratch, where a randomly initialised VAE would leave nothing to learn from;
* ``image_encoder``: transformers ``CLIPVisionModelWithProjection``; reference image -> one cross-attention token;
* ``feature_extractor``: transformers ``CLIPImageProcessorPil``; the image encoder's resize, crop, normalisation;
* ``reference_unet``: :class:`~lmk2video.models.reference_unet.ReferenceUNet`; reference latents -> reference bank;
* ``denoising_unet``: :class:`~lmk2video.models.denoising_unet.DenoisingUNet`; denoises the video latents;
* ``pose_guider``: :class:`~lmk2video.models.pose_guider.PoseGuider`; landmark drawings -> UNet residuals;
* ``scheduler``: a diffusers scheduler (DDIM with v-prediction, zero terminal SNR, trailing spacing by default);

plus config values ``landmark_style`` (the :mod:`common.draw` style the pose guider was trained on), the
default output ``width`` / ``height``, the ``framing`` of the reference crop, ``sampling`` (the steps and guidance
scale the model recommends, :attr:`LandmarkVideoPipeline.sampling_defaults`) and ``distilled`` (a few-step
student of :mod:`lmk2video.distillation`, whose own scheduler is a consistency sampler).

The model folder
----------------
``save_pretrained(DIR)`` writes diffusers' layout: ``model_index.json`` (component -> [library, class], the
config values) and one sub-folder per component. :meth:`LandmarkVideoPipeline.from_pretrained` reads it with our
own loader instead of diffusers' generic one, because (diffusers 0.42) the generic loader refuses a custom
component whose module has not been imported and whose module does not itself hold the name ``ModelMixin``,
and it loads the VAE and the CLIP encoder non-strictly (missing weights are silently initialised at random).
Ours accepts only the known component classes (a model folder never makes us import a module it names), loads
every weight file strictly (``use_safetensors``: no pickle), checks that the components fit each other, and
turns every problem into one :class:`~common.errors.UserError` naming the folder and what is wrong.

Generation (:meth:`LandmarkVideoPipeline.stream`)
-------------------------------------------------
1. Reference, once: VAE latents (``mean * scaling_factor``), the CLIP image embedding as the single
   cross-attention token ``(1, 1, D)``, and the reference UNet's bank (timestep 0, AniPortrait).
2. Pose features, once for the whole video: the pose guider on every landmark drawing (in chunks of
   ``pose_chunk`` frames, exact since the guider treats frames independently) with the reference's own
   landmark drawing as its reference input; stored on ``pose_cache_device`` (the GPU, or the CPU for videos
   too long to hold there; each window's slice is copied over when used).
3. Initial noise drawn frame by frame from ``generator`` on the CPU, in frame order, so it depends on neither
   the window layout nor the device, and the first frames' noise does not change when the video is longer.
4. ``num_inference_steps`` scheduler steps; at each, the UNet runs on every context window
   (:mod:`lmk2video.context`), classifier-free guidance batched as ``[unconditional, conditional]`` (the
   unconditional half has a zero image embedding and, as in AniPortrait, no reference attention:
   ``reference_mask = [False, True]``; both halves get the pose features); each frame's prediction is the
   weighted average over its windows, then guidance ``u + cfg * (c - u)``, then the scheduler step on the
   whole video. Latents and the averaging are kept in float32 whatever the model dtype.
5. VAE decoding in chunks of ``decode_chunk`` frames, yielded as RGB uint8 arrays, so a caller can stream
   frames to a video writer with memory flat in the video's length.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection, PreTrainedModel

from common.draw import get_style
from common.errors import UserError
from common.weights import format_keys
from lmk2video.context import SHIFT_WITH_CACHE, context_windows, fit_context, step_offset, window_weights
from lmk2video.models.denoising_unet import DeepCache, DenoisingUNet
from lmk2video.models.pose_guider import PoseGuider
from lmk2video.models.reference_attention import ReferenceBank
from lmk2video.models.reference_unet import ReferenceUNet

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
COMPONENT_NAMES = (
    "vae",
    "image_encoder",
    "feature_extractor",
    "reference_unet",
    "denoising_unet",
    "pose_guider",
    "scheduler",
)
# Classes a model folder may name for each component: (library, class name) -> class.
_KNOWN_CLASSES: dict[str, dict[tuple[str, str], type]] = {
    "vae": {("diffusers", "AutoencoderKL"): AutoencoderKL},
    "image_encoder": {("transformers", "CLIPVisionModelWithProjection"): CLIPVisionModelWithProjection},
    "feature_extractor": {
        ("transformers", "CLIPImageProcessorPil"): CLIPImageProcessorPil,
        ("transformers", "CLIPImageProcessor"): CLIPImageProcessorPil,
    },
    "reference_unet": {("lmk2video.models.reference_unet", "ReferenceUNet"): ReferenceUNet},
    "denoising_unet": {("lmk2video.models.denoising_unet", "DenoisingUNet"): DenoisingUNet},
    "pose_guider": {("lmk2video.models.pose_guider", "PoseGuider"): PoseGuider},
}
# Components a model folder may leave out (``[null, null]`` in model_index.json): a pixel-space model has no VAE.
OPTIONAL_COMPONENTS = ("vae",)
IMAGE_CHANNELS = 3
# The config values of a model folder besides its components (model_index.json).
SETTING_NAMES = ("landmark_style", "width", "height", "framing", "sampling", "distilled")
REBUILD_HINT = (
    "re-create the model folder (python -m lmk2video.init, or save_pretrained of a trained pipeline)"
)


class FrameSource(Protocol):
    """Landmark drawings, read in chunks: ``len()`` frames, ``source[a:b]`` -> (b - a, H, W, 3) uint8.

    A numpy array is one; :class:`lmk2video.framing.LandmarkDrawings` draws lazily.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> np.ndarray: ...


@dataclasses.dataclass
class ReferenceCondition:
    """What the reference image contributes, computed once per video.

    Attributes:
        latents: (1, C_latent, h, w) VAE latents times the scaling factor.
        image_embeds: (1, 1, D) CLIP image embedding (the cross-attention token).
        bank: the reference UNet's self-attention inputs, name -> (1, L_i, C_i).
    """

    latents: torch.Tensor
    image_embeds: torch.Tensor
    bank: ReferenceBank


@dataclasses.dataclass
class PoseFeatures:
    """The pose guider's residuals for every frame, ``down`` tensors (1, C_k, F, h_k, w_k) and ``mid`` (or None)."""

    down: list[torch.Tensor]
    mid: torch.Tensor | None

    @property
    def num_frames(self) -> int:
        return int(self.down[0].shape[2])

    def window(
        self, frames: torch.Tensor, batch: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The residuals of ``frames`` (index tensor), repeated to ``batch``, on ``device``: UNet keyword values."""

        def take(x: torch.Tensor) -> torch.Tensor:
            part = x.index_select(2, frames.to(x.device)).to(device=device, dtype=dtype, non_blocking=True)
            return part.expand(batch, *part.shape[1:])

        return tuple(take(x) for x in self.down), None if self.mid is None else take(self.mid)


@dataclasses.dataclass
class _WindowPlan:
    """The context windows of a denoising step: frame indices, per-frame weights (1, 1, n, 1, 1) and each
    frame's total weight (1, 1, F, 1, 1)."""

    frames: list[torch.Tensor]
    weights: list[torch.Tensor]
    total_weight: torch.Tensor

    @classmethod
    def make(cls, windows: list[list[int]], weighting: str, device: torch.device) -> _WindowPlan:
        frames = [torch.tensor(win, device=device) for win in windows]
        weights = [
            torch.tensor(window_weights(len(win), weighting), device=device, dtype=torch.float32)[
                None, None, :, None, None
            ]
            for win in windows
        ]
        num_frames = max(max(win) for win in windows) + 1
        total = torch.zeros((1, 1, num_frames, 1, 1), device=device, dtype=torch.float32)
        for idx, weight in zip(frames, weights):
            total.index_add_(2, idx, weight)
        return cls(frames=frames, weights=weights, total_weight=total)


@dataclasses.dataclass
class LandmarkVideoPipelineOutput(BaseOutput):
    """``frames``: (F, H, W, 3) RGB uint8."""

    frames: np.ndarray


def _images_to_tensor(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1] (the VAE's and the pose guider's input scaling)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device=device)
    return (x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0).to(dtype)


def encode_images(
    vae: AutoencoderKL | None,
    pixels: torch.Tensor,
    generator: torch.Generator | None = None,
    sample: bool = False,
) -> torch.Tensor:
    """(N, 3, H, W) images in [-1, 1] -> (N, C, h, w) latents times the VAE's scaling factor.

    ``sample``: draw from the VAE's posterior (with ``generator``) instead of taking its mean (training
    targets sample, references take the mean). Without a VAE (pixel space) the images are the latents.
    """
    if vae is None:
        return pixels
    dist = vae.encode(pixels.to(vae.dtype)).latent_dist
    latents = dist.sample(generator) if sample else dist.mean
    return latents * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL | None, latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) latents -> (N, 3, H, W) images in about [-1, 1] (not clamped); identity without a VAE."""
    if vae is None:
        return latents
    return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample


def _framing_config(options: dict[str, float] | None) -> dict[str, float]:
    """Framing options as the model's config stores them (JSON numbers)."""
    return {k: float(v) for k, v in (options or {}).items()}


# What a model samples with unless its folder recommends otherwise (``sampling`` in model_index.json).
SAMPLING_DEFAULTS: dict[str, float] = {"steps": 25, "cfg": 3.5}


def _sampling_config(sampling: dict[str, float] | None) -> dict[str, float]:
    """The recommended sampling a model's config stores: ``steps`` (whole) and ``cfg`` (a number)."""
    sampling = dict(sampling or {})
    unknown = set(sampling) - set(SAMPLING_DEFAULTS)
    if unknown:
        raise UserError(f"sampling has unknown key(s) {', '.join(sorted(unknown))}; allowed: steps, cfg")
    out: dict[str, float] = {}
    if "steps" in sampling:
        steps = sampling["steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise UserError(f"sampling.steps={steps!r} must be a whole number >= 1")
        out["steps"] = int(steps)
    if "cfg" in sampling:
        cfg = sampling["cfg"]
        if not isinstance(cfg, int | float) or isinstance(cfg, bool) or not 0 <= cfg <= 100:
            raise UserError(f"sampling.cfg={cfg!r} must be a number from 0 to 100")
        out["cfg"] = float(cfg)
    return out


class LandmarkVideoPipeline(DiffusionPipeline):
    """Landmark-conditioned portrait video diffusion (see the module docstring).

    Args:
        vae, image_encoder, feature_extractor, reference_unet, denoising_unet, pose_guider, scheduler: the
            components.
        landmark_style: :mod:`common.draw` style of the landmark drawings the pose guider expects.
        width, height: default output size in pixels (multiples of the VAE's downsampling factor).
        framing: :func:`lmk2video.framing.choose_framing` options the model was trained with (how large the
            face is in the frame); generation and validation crop the reference with them. Empty: the defaults.
    """

    model_cpu_offload_seq = "image_encoder->reference_unet->pose_guider->denoising_unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL | None,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor: CLIPImageProcessorPil,
        reference_unet: ReferenceUNet,
        denoising_unet: DenoisingUNet,
        pose_guider: PoseGuider,
        scheduler: SchedulerMixin,
        landmark_style: str = "default",
        width: int = 512,
        height: int = 512,
        framing: dict[str, float] | None = None,
        sampling: dict[str, float] | None = None,
        distilled: bool = False,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            reference_unet=reference_unet,
            denoising_unet=denoising_unet,
            pose_guider=pose_guider,
            scheduler=scheduler,
        )
        self.register_to_config(
            landmark_style=landmark_style,
            width=int(width),
            height=int(height),
            framing=_framing_config(framing),
            sampling=_sampling_config(sampling),
            distilled=bool(distilled),
        )

    # ------------------------------------------------------------------------------------ checks

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (1 for a pixel-space model, which has no VAE)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def max_context_frames(self) -> int | None:
        """Longest window the motion modules accept (their ``max_position``), None without motion modules."""
        motion = self.denoising_unet.config.motion_module
        return None if motion is None else int(motion["max_position"])

    @property
    def latent_channels(self) -> int:
        """Channels of the denoised representation: the VAE's latent channels, or 3 (RGB) without a VAE."""
        return IMAGE_CHANNELS if self.vae is None else int(self.vae.config.latent_channels)

    def encode_images(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, C, h, w) latents: :func:`encode_images` with this VAE."""
        return encode_images(self.vae, pixels, generator, sample)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) latents -> (N, 3, H, W) images in about [-1, 1]: :func:`decode_latents` with this VAE."""
        return decode_latents(self.vae, latents)

    def check_components(self, source: str = "pipeline") -> None:
        """Raise :class:`UserError` when the components do not fit together (``source`` names the folder)."""
        unet, ref, guider = self.denoising_unet, self.reference_unet, self.pose_guider
        problems = []
        if self.image_encoder.config.projection_dim != unet.config.cross_attention_dim:
            problems.append(
                f"image_encoder projection_dim {self.image_encoder.config.projection_dim} != denoising_unet "
                f"cross_attention_dim {unet.config.cross_attention_dim}"
            )
        if ref.config.cross_attention_dim != unet.config.cross_attention_dim:
            problems.append("reference_unet and denoising_unet have different cross_attention_dim")
        latent = self.latent_channels
        if not latent == unet.config.in_channels == unet.config.out_channels == ref.config.in_channels:
            what = "vae latent_channels" if self.vae is not None else "a pixel-space model (no vae) has"
            problems.append(
                f"{what} {latent} must equal the UNets' in/out channels "
                f"({unet.config.in_channels}/{unet.config.out_channels}, reference {ref.config.in_channels})"
            )
        if set(unet.reference_attention_names) != set(ref.reference_attention_names):
            problems.append("reference_unet and denoising_unet do not have the same self-attention layers")
        if tuple(guider.config.unet_block_out_channels) != tuple(unet.config.block_out_channels):
            problems.append(
                f"pose_guider unet_block_out_channels {tuple(guider.config.unet_block_out_channels)} != "
                f"denoising_unet block_out_channels {tuple(unet.config.block_out_channels)}"
            )
        if guider.downsample_factor != self.vae_scale_factor:
            problems.append(
                f"pose_guider downsamples by {guider.downsample_factor}, the vae by {self.vae_scale_factor}"
                + (" (no vae: give the pose guider one block_out_channels entry)" if self.vae is None else "")
            )
        for key in ("width", "height"):
            value = self.config[key]
            if value <= 0 or value % self.vae_scale_factor:
                problems.append(f"{key}={value} is not a positive multiple of {self.vae_scale_factor}")
        if problems:
            raise UserError(
                f"{source}: the components do not fit together: {'; '.join(problems)}; {REBUILD_HINT}"
            )
        try:
            get_style(self.config.landmark_style)
        except UserError as err:
            raise UserError(f"{source}: landmark_style: {err}") from None
        from lmk2video.framing import check_framing_options

        try:
            check_framing_options(self.framing_options)
        except UserError as err:
            raise UserError(f"{source}: framing: {err}; {REBUILD_HINT}") from None

    def use_scheduler(self, name: str | None) -> None:
        """Sample with :mod:`lmk2video.schedulers`' ``name`` (configured like the model's own scheduler), or
        with the model's own again (``None``)."""
        from lmk2video.schedulers import make_scheduler

        own = self.__dict__.setdefault("_own_scheduler", self.scheduler)
        if name is None:
            self.scheduler = own
            return
        distilled = bool(self.config.get("distilled", False))
        self.scheduler = make_scheduler(name, own.config, distilled=distilled, source=str(self.name_or_path))

    def set_framing(self, options: dict[str, float] | None, source: str) -> None:
        """Record the framing options the model is (being) trained with; ``source`` names them in errors."""
        from lmk2video.framing import check_framing_options

        try:
            check_framing_options(dict(options or {}))
        except UserError as err:
            raise UserError(f"{source}: {err}") from None
        self.register_to_config(framing=_framing_config(options))

    @property
    def sampling_defaults(self) -> dict[str, float]:
        """``{"steps", "cfg"}`` the model recommends with its own scheduler (``sampling`` in its config, else
        :data:`SAMPLING_DEFAULTS`)."""
        return {**SAMPLING_DEFAULTS, **dict(self.config.get("sampling") or {})}

    @property
    def framing_options(self) -> dict[str, float]:
        """The :func:`lmk2video.framing.choose_framing` options of this model (``framing`` in its config)."""
        return dict(self.config.get("framing") or {})

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None
    ) -> LandmarkVideoPipeline:
        """Load a model folder written by ``save_pretrained``, strictly (see the module docstring).

        Raises :class:`UserError` for a missing folder, a missing or unknown component, a missing weight file,
        missing / unexpected / mis-shaped weights, or components that do not fit together.
        """
        root = Path(pretrained_model_name_or_path).expanduser()
        index_path = root / MODEL_INDEX
        if not root.is_dir():
            raise UserError(
                f"model folder {root} does not exist; pass the folder written by python -m lmk2video.init"
            )
        if not index_path.is_file():
            raise UserError(f"{root} is not an lmk2video model folder (no {MODEL_INDEX}); {REBUILD_HINT}")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {index_path}: {err}; {REBUILD_HINT}") from None
        if not isinstance(index, dict) or index.get("_class_name") != cls.__name__:
            found = index.get("_class_name") if isinstance(index, dict) else None
            raise UserError(f"{index_path} describes a {found!r}, not a {cls.__name__}; {REBUILD_HINT}")
        missing = [name for name in COMPONENT_NAMES if name not in index]
        if missing:
            raise UserError(f"{index_path} lacks the component(s) {', '.join(missing)}; {REBUILD_HINT}")
        components = {name: _load_component(root, name, index[name], torch_dtype) for name in COMPONENT_NAMES}
        settings = {k: index[k] for k in SETTING_NAMES if k in index}
        try:
            pipe = cls(**components, **settings)
        except UserError as err:
            raise UserError(f"{index_path}: {err}; {REBUILD_HINT}") from None
        pipe.check_components(str(root))
        return pipe

    # ------------------------------------------------------------------------------------ stages

    @torch.no_grad()
    def encode_reference(self, image: np.ndarray) -> ReferenceCondition:
        """Latents, CLIP token and reference bank of an RGB uint8 (H, W, 3) image already at the output size."""
        device = self._execution_device
        dtype = self.vae.dtype if self.vae is not None else self.reference_unet.dtype
        latents = self.encode_images(_images_to_tensor(image[None], device, dtype)).float()
        clip_pixels = self.feature_extractor(images=image, return_tensors="pt").pixel_values
        embeds = self.image_encoder(
            clip_pixels.to(device=device, dtype=self.image_encoder.dtype)
        ).image_embeds
        embeds = embeds[:, None].to(self.denoising_unet.dtype)
        bank = self.reference_unet.compute_reference_hidden_states(
            latents.to(self.reference_unet.dtype), embeds.to(self.reference_unet.dtype), timestep=0
        )
        return ReferenceCondition(latents=latents, image_embeds=embeds, bank=bank)

    @torch.no_grad()
    def encode_landmarks(
        self,
        landmark_images: FrameSource,
        reference_landmark_image: np.ndarray,
        *,
        chunk: int = 16,
        store_device: torch.device | str | None = None,
    ) -> PoseFeatures:
        """Pose-guider residuals of every drawing (F frames of (H, W, 3) uint8), computed once, ``chunk`` at a time.

        ``reference_landmark_image``: (H, W, 3) uint8 drawing of the reference image's own landmarks.
        ``store_device``: where the features are kept (default: the execution device).
        """
        device = self._execution_device
        store = torch.device(store_device) if store_device is not None else device
        dtype = self.pose_guider.dtype
        reference = _images_to_tensor(reference_landmark_image[None], device, dtype)
        total = len(landmark_images)
        down: list[torch.Tensor] = []
        mid: torch.Tensor | None = None
        for start in range(0, total, chunk):
            frames = _images_to_tensor(landmark_images[start : start + chunk], device, dtype)
            out = self.pose_guider(frames.permute(1, 0, 2, 3)[None], reference)
            if not down:  # allocate the whole video's storage once
                down = [
                    torch.empty((*x.shape[:2], total, *x.shape[3:]), dtype=dtype, device=store)
                    for x in out.down_block_res_samples
                ]
                if out.mid_block_res_sample is not None:
                    m = out.mid_block_res_sample
                    mid = torch.empty((*m.shape[:2], total, *m.shape[3:]), dtype=dtype, device=store)
            stop = start + frames.shape[0]
            for storage, x in zip(down, out.down_block_res_samples):
                storage[:, :, start:stop] = x
            if mid is not None:
                mid[:, :, start:stop] = out.mid_block_res_sample
        return PoseFeatures(down=down, mid=mid)

    def prepare_noise(
        self, num_frames: int, height: int, width: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """(1, C, F, h, w) float32 standard normal noise, drawn frame by frame on the CPU (see the module docstring)."""
        shape = (
            self.denoising_unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        frames = [torch.randn(shape, generator=generator, dtype=torch.float32) for _ in range(num_frames)]
        return torch.stack(frames, dim=1)[None]

    @torch.no_grad()
    def denoise(
        self,
        reference: ReferenceCondition,
        pose: PoseFeatures,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        context_frames: int = 16,
        context_overlap: int = 4,
        context_stride: int = 1,
        context_weighting: str = "pyramid",
        eta: float = 0.0,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
        cache_interval: int = 1,
        context_shift: bool = False,
    ) -> torch.Tensor:
        """Run the sampler over context windows; returns the final latents (1, C, F, h, w) float32.

        ``latents``: initial noise (1, C, F, h, w) (default: :meth:`prepare_noise` from ``generator``).
        ``cfg_interval``: ``[a, b]``, the part of the schedule that is guided, as fractions of it (step ``i`` of
        ``N`` sits at ``i / (N - 1)``, 0 = the first, noisiest step); other steps run the conditional branch
        only, at half the cost. ``cache_interval``: N > 1 runs the whole denoising UNet on every N-th step only;
        the steps between reuse its deep features and recompute the shallow blocks (DeepCache).
        ``context_shift``: move the window grid from step to step (:func:`lmk2video.context.step_offset`).
        """
        device = self._execution_device
        unet = self.denoising_unet
        num_frames = pose.num_frames
        h, w = reference.latents.shape[-2:]
        if latents is None:
            latents = self.prepare_noise(
                num_frames, h * self.vae_scale_factor, w * self.vae_scale_factor, generator
            )
        if latents.shape[2] != num_frames or tuple(latents.shape[-2:]) != (h, w):
            raise ValueError(
                f"latents {tuple(latents.shape)} do not match {num_frames} frames of {h}x{w} latents"
            )
        fit_context(min(context_frames, num_frames), context_overlap, self.max_context_frames, strict=True)
        if context_shift and cache_interval > 1:
            raise UserError(SHIFT_WITH_CACHE)
        plans: dict[int, _WindowPlan] = {}

        def plan(step_index: int) -> _WindowPlan:
            offset = step_offset(step_index, context_frames, context_overlap) if context_shift else 0
            if offset not in plans:
                plans[offset] = _WindowPlan.make(
                    context_windows(num_frames, context_frames, context_overlap, context_stride, offset),
                    context_weighting,
                    device,
                )
            return plans[offset]

        cond_embeds = reference.image_embeds.to(unet.dtype)
        guided_embeds = torch.cat([torch.zeros_like(cond_embeds), cond_embeds])
        guided_mask = torch.tensor([False, True], device=device)
        low, high = (float(v) for v in cfg_interval)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        steps = len(self.scheduler.timesteps)
        fixed = plan(0)
        caches = [DeepCache() for _ in fixed.frames] if cache_interval > 1 else None
        latents = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                position = i / (steps - 1) if steps > 1 else 0.0
                do_cfg = guidance_scale > 1.0 and low <= position <= high
                batch = 2 if do_cfg else 1
                embeds, mask = (guided_embeds, guided_mask) if do_cfg else (cond_embeds, None)
                prediction = torch.zeros((batch, *latents.shape[1:]), device=device, dtype=torch.float32)
                windows = plan(i)
                for cache in caches or ():
                    cache.reuse = i % cache_interval != 0
                for w, (idx, weight) in enumerate(zip(windows.frames, windows.weights)):
                    cache = None if caches is None else caches[w]
                    x = latents.index_select(2, idx).expand(batch, -1, -1, -1, -1)
                    x = self.scheduler.scale_model_input(x, t).to(unet.dtype)
                    down, mid = pose.window(idx, batch, device, unet.dtype)
                    out = unet(
                        x,
                        t,
                        embeds,
                        reference_hidden_states=reference.bank,
                        down_block_res_samples=down,
                        mid_block_res_sample=mid,
                        reference_mask=mask,
                        deep_cache=cache,
                    ).sample
                    prediction.index_add_(2, idx, out.float() * weight)
                prediction = prediction / windows.total_weight
                if do_cfg:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(
                    prediction, t, latents, **self._step_kwargs(generator, eta)
                ).prev_sample
                bar.update()
        return latents

    def _step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        params = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 4) -> Iterator[np.ndarray]:
        """Yield the frames of (1, C, F, h, w) latents as RGB uint8 (n, H, W, 3), ``chunk`` frames per VAE call."""
        if chunk < 1:
            raise UserError(f"decode_chunk={chunk} must be at least 1")
        for start in range(0, latents.shape[2], chunk):
            z = latents[0, :, start : start + chunk].permute(1, 0, 2, 3)  # (n, C, h, w)
            images = self.decode_latents(z.to(device=self._execution_device)).float()
            images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            yield images.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------------------------ end to end

    def check_inputs(
        self, reference_image: np.ndarray, landmark_images: FrameSource, reference_landmark_image: np.ndarray
    ) -> tuple[int, int]:
        """(H, W) of the inputs; ``ValueError`` when they disagree or are not multiples of the VAE factor."""
        if reference_image.ndim != 3 or reference_image.shape[2] != 3 or reference_image.dtype != np.uint8:
            raise ValueError(
                f"reference_image must be (H, W, 3) uint8, got {reference_image.shape} {reference_image.dtype}"
            )
        size = reference_image.shape[:2]
        if reference_landmark_image.shape != (*size, 3):
            raise ValueError(
                f"reference_landmark_image {reference_landmark_image.shape} != reference {(*size, 3)}"
            )
        if len(landmark_images) < 1:
            raise ValueError("landmark_images is empty")
        first = landmark_images[0:1]
        if first.shape[1:] != (*size, 3):
            raise ValueError(f"landmark images are {first.shape[1:]}, the reference image {(*size, 3)}")
        s = self.vae_scale_factor
        if size[0] % s or size[1] % s:
            raise UserError(
                f"output size {size[1]}x{size[0]} (WxH) must be a multiple of {s} in both directions"
            )
        return size

    def stream(
        self,
        reference_image: np.ndarray,
        landmark_images: FrameSource,
        reference_landmark_image: np.ndarray,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        context_frames: int = 16,
        context_overlap: int = 4,
        context_stride: int = 1,
        context_weighting: str = "pyramid",
        decode_chunk: int = 4,
        pose_chunk: int = 16,
        pose_cache_device: torch.device | str | None = None,
        eta: float = 0.0,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
        cache_interval: int = 1,
        context_shift: bool = False,
    ) -> Iterator[np.ndarray]:
        """Generate a video and yield it in chunks of RGB uint8 frames (n, H, W, 3), one frame per drawing.

        Args:
            reference_image: (H, W, 3) RGB uint8 at the output size (see :mod:`lmk2video.framing`).
            landmark_images: F drawings (H, W, 3) uint8 in the model's ``landmark_style`` (its channel order).
            reference_landmark_image: (H, W, 3) drawing of the reference image's own landmarks.
            num_inference_steps: scheduler steps.
            guidance_scale: classifier-free guidance scale (<= 1: no guidance, half the work).
            generator: CPU ``torch.Generator`` for the initial noise (and the scheduler's, if it draws any).
            context_frames, context_overlap, context_stride, context_weighting: see :mod:`lmk2video.context`.
            decode_chunk: frames per VAE decode call.
            pose_chunk: frames per pose-guider call.
            pose_cache_device: where the pose features of the whole video are kept (default: the execution device).
            eta: DDIM eta (0: deterministic sampling).
            cfg_interval: the guided part of the schedule (see :meth:`denoise`).
            cache_interval: run the deep UNet blocks every N-th step only (see :meth:`denoise`).
            context_shift: move the window grid from step to step (see :mod:`lmk2video.context`).
        """
        self.check_inputs(reference_image, landmark_images, reference_landmark_image)
        reference = self.encode_reference(reference_image)
        pose = self.encode_landmarks(
            landmark_images, reference_landmark_image, chunk=pose_chunk, store_device=pose_cache_device
        )
        latents = self.denoise(
            reference,
            pose,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            context_frames=context_frames,
            context_overlap=context_overlap,
            context_stride=context_stride,
            context_weighting=context_weighting,
            eta=eta,
            cfg_interval=cfg_interval,
            cache_interval=cache_interval,
            context_shift=context_shift,
        )
        del pose, reference
        yield from self.decode(latents, decode_chunk)

    def __call__(self, *args: Any, **kwargs: Any) -> LandmarkVideoPipelineOutput:
        """:meth:`stream` collected into one array (F, H, W, 3); for short videos and tests."""
        return LandmarkVideoPipelineOutput(frames=np.concatenate(list(self.stream(*args, **kwargs))))


# ---------------------------------------------------------------------------------------- loader


def _component_class(name: str, entry: Any, source: str) -> type:
    """The class a model_index.json entry ``[library, class]`` names, if it is one we load for ``name``."""
    if not (isinstance(entry, list | tuple) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
        raise UserError(
            f"{source}: entry {name!r} must be [library, class name], got {entry!r}; {REBUILD_HINT}"
        )
    library, class_name = entry
    if name == "scheduler":
        import diffusers

        cls = getattr(diffusers, class_name, None) if library == "diffusers" else None
        if isinstance(cls, type) and issubclass(cls, SchedulerMixin):
            return cls
        raise UserError(
            f"{source}: scheduler {library}.{class_name} is not a diffusers scheduler; {REBUILD_HINT}"
        )
    known = _KNOWN_CLASSES[name]
    if (library, class_name) not in known:
        choices = ", ".join(f"{lib}.{cls}" for lib, cls in known)
        raise UserError(f"{source}: component {name!r} is {library}.{class_name}; expected {choices}")
    return known[(library, class_name)]


def load_pretrained_strict(
    cls: type,
    folder: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    use_safetensors: bool | None = True,
    hint: str = REBUILD_HINT,
) -> Any:
    """``cls.from_pretrained(folder)`` for a diffusers or transformers model, strictly, in eval mode.

    Every failure (missing folder or file, bad config, missing / unexpected / mis-shaped weights) is one
    :class:`UserError` naming ``folder`` and ending with ``hint``. ``use_safetensors=True`` refuses pickles.
    """
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if issubclass(cls, PreTrainedModel):  # report mismatched shapes ourselves, as for diffusers models
        kwargs["ignore_mismatched_sizes"] = True
    if use_safetensors is not None:
        kwargs["use_safetensors"] = use_safetensors
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    try:
        model, info = cls.from_pretrained(folder, **kwargs)
    except UserError as err:  # our models' strict loader (common.weights.StrictLoadMixin) names the folder
        raise UserError(_clean(str(err))) from None
    except Exception as err:  # missing files, unreadable JSON, bad config values, shape mismatches
        raise UserError(f"{folder}: cannot load {cls.__name__} ({_describe(err)}); {hint}") from None
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [k if isinstance(k, str) else str(k[0]) for k in info.get(kind, [])]
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')}: {format_keys(keys)}")
    if problems:
        raise UserError(f"{folder}: incomplete weights ({'; '.join(problems)}); {hint}")
    return model.eval()


def _load_component(root: Path, name: str, entry: Any, torch_dtype: torch.dtype | None) -> Any:
    """Load one component from ``root/name`` strictly; every failure is a :class:`UserError` naming the folder.

    An optional component saved as ``None`` (``[null, null]``) loads as ``None``.
    """
    if name in OPTIONAL_COMPONENTS and isinstance(entry, list | tuple) and list(entry) == [None, None]:
        return None
    cls = _component_class(name, entry, str(root / MODEL_INDEX))
    folder = root / name
    if not folder.is_dir():
        raise UserError(f"{root} lacks the {name}/ folder; {REBUILD_HINT}")
    if name not in ("scheduler", "feature_extractor"):
        return load_pretrained_strict(cls, folder, torch_dtype=torch_dtype)
    try:
        return cls.from_pretrained(folder)
    except Exception as err:  # missing or unreadable config file, bad values
        raise UserError(f"{folder}: cannot load {cls.__name__} ({_describe(err)}); {REBUILD_HINT}") from None


def _clean(message: str) -> str:
    """One line, without diffusers' advice to load mismatched weights anyway."""
    text = " ".join(message.split())
    advice = " If you want to instead overwrite"
    if advice in text:
        head, tail = text.split(advice, 1)
        rest = tail.split("; ", 1)  # keep what a wrapping message appended after the diffusers text
        text = head + ("; " + rest[1] if len(rest) == 2 else "")
    return text


def _describe(err: Exception) -> str:
    """One line for a loader's exception: its type and cleaned message."""
    return f"{type(err).__name__}: {_clean(str(err))}"


def load_pipeline(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LandmarkVideoPipeline:
    """:meth:`LandmarkVideoPipeline.from_pretrained` in ``dtype`` (weights cast while loading), moved to ``device``."""
    pipe = LandmarkVideoPipeline.from_pretrained(path, torch_dtype=None if dtype == torch.float32 else dtype)
    return pipe.to(torch.device(device))
