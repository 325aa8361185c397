"""Rendering as a library: a reference image + a landmark sequence -> frames, with one set of sampler options.

Every caller renders through :func:`render`: ``python -m lmk2video.generate`` (via
:func:`lmk2video.generation.generate`), training's validation (:class:`lmk2video.module.LandmarkVideoModule`)
and evaluation (``python -m lmk2video.evaluate``). What they choose is a :class:`SamplerOptions`; where the
video goes (file, array, logger) is theirs.

Also here: the device, dtype and pose-feature placement rules of the GPU/CPU paths.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.limits import MAX_STEPS
from common.lmkfile import LandmarkSequence
from lmk2video.context import SHIFT_WITH_CACHE, check_context, fit_context, window_weights

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAD_MODES = ("replicate", "reflect", "constant")
POSE_CACHE_GPU_BYTES = 4 * 2**30


def _whole(value: Any, name: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"{name}={value!r} must be a whole number >= {low}")
    return value


# Named sampler settings (``preset=NAME``): the options each fills unless given, for models that are not
# distilled and for distilled students. Measured cost and quality: README, "Fast generation".
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The model's own sampler and recommendation: 25 DDIM steps with guidance 3.5 (AniPortrait), or a student's own.
    "quality": {"undistilled": {}, "distilled": {}},
    # DPM-Solver++ in 10 steps: 2.5x fewer UNet passes than 25 DDIM steps, landmark and identity scores within 7 %.
    "balanced": {"undistilled": {"scheduler": "dpmpp_2m", "steps": 10}, "distilled": {}},
    # The fewest UNet passes: a student's own sampler without guidance; other models DPM-Solver++ in 10 steps
    # guided on the first half of the schedule only.
    "fastest": {
        "undistilled": {"scheduler": "dpmpp_2m", "steps": 10, "cfg_interval": (0.0, 0.5)},
        "distilled": {},
    },
}


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """How a video is sampled (the generate options of the same names; see ``conf/lmk2video/sampling/default.yaml``).

    Attributes:
        steps: scheduler steps; None: what the model recommends (:meth:`fit`; 25 for undistilled models).
        cfg: classifier-free guidance scale (<= 1: none, half the work); None: the model's recommendation (3.5
            for undistilled models, 1 for a guidance-distilled student).
        context_frames, context_overlap, context_stride, context_weighting: the context windows
            (:mod:`lmk2video.context`).
        decode_chunk: frames per VAE decode call.
        pad_mode: padding where the reference crop leaves the image (replicate | reflect | constant).
        scheduler: the sampler (:data:`lmk2video.schedulers.SCHEDULERS`); None: the preset's, else the model's own.
        cfg_interval: ``[a, b]``: guidance only on that part of the schedule (fractions; 0 = first step);
            None: the preset's, else ``[0, 1]``.
        cache_interval: the deep UNet blocks run every N-th step only (DeepCache); None: the preset's, else 1.
        context_shift: move the window grid from step to step (:mod:`lmk2video.context`).
        preset: a named speed/quality trade-off (:data:`PRESETS`) filling the sampler options left at None.

    :meth:`fit` turns the Nones into values for a given model; only fitted options are rendered with.
    """

    steps: int | None = None
    cfg: float | None = None
    context_frames: int = 16
    context_overlap: int = 4
    context_stride: int = 1
    context_weighting: str = "pyramid"
    decode_chunk: int = 4
    pad_mode: str = "replicate"
    scheduler: str | None = None
    cfg_interval: tuple[float, float] | None = None
    cache_interval: int | None = None
    context_shift: bool = False
    preset: str | None = None

    def check(self) -> SamplerOptions:
        """Raise :class:`UserError` for a value that cannot be sampled with; returns ``self``."""
        from lmk2video.schedulers import check_scheduler

        if self.preset is not None and self.preset not in PRESETS:
            raise UserError(f"preset={self.preset!r}; choose {', '.join(PRESETS)} (or null)")
        check_scheduler(self.scheduler)
        interval = self.cfg_interval
        if interval is not None and (
            not isinstance(interval, list | tuple)
            or len(interval) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in interval)
            or not 0 <= interval[0] <= interval[1] <= 1
        ):
            raise UserError(
                f"cfg_interval={interval!r} must be [a, b] with 0 <= a <= b <= 1 (fractions of the schedule, "
                "0 = the first step), e.g. cfg_interval=[0,0.5]"
            )
        if self.steps is not None:
            _whole(self.steps, "steps", 1)
            if self.steps > MAX_STEPS:
                raise UserError(
                    f"steps={self.steps} must be at most {MAX_STEPS} (the schedules have 1000 timesteps)"
                )
        _whole(self.decode_chunk, "decode_chunk", 1)
        if self.cache_interval is not None:
            _whole(self.cache_interval, "cache_interval", 1)
        if not isinstance(self.context_shift, bool):
            raise UserError(f"context_shift={self.context_shift!r} must be true or false")
        if self.context_shift and (self.cache_interval or 1) > 1:
            raise UserError(SHIFT_WITH_CACHE)
        if self.cfg is not None and (
            not isinstance(self.cfg, int | float) or isinstance(self.cfg, bool) or not 0 <= self.cfg <= 100
        ):
            raise UserError(
                f"cfg={self.cfg!r} must be a number from 0 to 100 (3.5 is usual; <= 1 turns guidance off) or "
                "null (the model's recommendation)"
            )
        for name in ("context_frames", "context_overlap", "context_stride"):
            _whole(getattr(self, name), name, 0)
        check_context(self.context_frames, self.context_overlap, self.context_stride)
        window_weights(1, self.context_weighting)
        if self.pad_mode not in PAD_MODES:
            raise UserError(f"pad_mode={self.pad_mode!r}; choose {', '.join(PAD_MODES)}")
        return self

    def fit(self, pipe: Any, *, strict: bool, source: str = "the model") -> SamplerOptions:
        """These options for ``pipe``, every None filled: first from the preset (its values for a distilled
        student or for other models), then ``steps`` and ``cfg`` from the model's recommendation
        (:attr:`~lmk2video.pipeline.LandmarkVideoPipeline.sampling_defaults`), ``cfg_interval`` [0, 1],
        ``cache_interval`` 1; and windows its motion modules accept (:func:`lmk2video.context.fit_context`:
        ``strict`` refuses a longer window, else it is shortened)."""
        frames, overlap = fit_context(
            self.context_frames, self.context_overlap, pipe.max_context_frames, strict=strict, source=source
        )
        chosen = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.preset is not None:
            distilled = bool(pipe.config.get("distilled", False))
            if self.preset == "fastest" and not distilled:
                log.warning(
                    "preset=fastest on %s, a model not distilled: it samples with DPM-Solver++ in 10 steps; a "
                    "distilled student samples in 4 steps without guidance (python -m lmk2video.train "
                    "stage=distill teacher=MODEL ...; docs/lmk2video-training.md)",
                    source,
                )
            chosen = {**PRESETS[self.preset]["distilled" if distilled else "undistilled"], **chosen}
        recommended = pipe.sampling_defaults
        filled = {
            "steps": int(recommended["steps"]),
            "cfg": float(recommended["cfg"]),
            "cfg_interval": (0.0, 1.0),
            "cache_interval": 1,
            **chosen,
            "context_frames": frames,
            "context_overlap": overlap,
        }
        filled["cfg_interval"] = tuple(filled["cfg_interval"])
        return dataclasses.replace(self, **filled)

    def denoise_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`LandmarkVideoPipeline.denoise` for these (fitted) options; the
        sampler itself is chosen with ``pipe.use_scheduler(self.scheduler)``."""
        if self.steps is None or self.cfg is None or self.cfg_interval is None or self.cache_interval is None:
            raise ValueError("fit the options to a model first (SamplerOptions.fit)")
        return {
            "num_inference_steps": self.steps,
            "guidance_scale": float(self.cfg),
            "context_frames": self.context_frames,
            "context_overlap": self.context_overlap,
            "context_stride": self.context_stride,
            "context_weighting": self.context_weighting,
            "cfg_interval": tuple(self.cfg_interval),
            "cache_interval": self.cache_interval,
            "context_shift": self.context_shift,
        }

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> SamplerOptions:
        """The options among ``values`` (other keys are ignored; missing ones keep their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        chosen = {k: v for k, v in values.items() if k in names}
        interval = chosen.get("cfg_interval")
        if interval is not None and not isinstance(interval, str | bytes) and hasattr(interval, "__iter__"):
            chosen["cfg_interval"] = tuple(interval)  # a Hydra ListConfig, a list, a tuple
        return cls(**chosen)


@dataclasses.dataclass
class Rendering:
    """A video being generated by :func:`render`.

    Attributes:
        framed: (H, W, 3) RGB uint8 reference at the output size.
        framing: the reference's crop (:class:`lmk2video.framing.Framing`).
        drawings: the landmark drawings the model is conditioned on (model's style and channel order).
        frames: iterator of (n, H, W, 3) RGB uint8 chunks, one frame per drawing (generation runs as it is read).
    """

    framed: np.ndarray
    framing: Any
    drawings: Any
    frames: Iterator[np.ndarray]

    def grid(self, frames: np.ndarray, start: int) -> np.ndarray:
        """reference | landmarks (RGB) | ``frames`` side by side, for frames ``start ...`` of the video."""
        n = len(frames)
        lmk = self.drawings.rgb(self.drawings[start : start + n])
        return np.concatenate([np.broadcast_to(self.framed, frames.shape), lmk, frames], axis=2)

    def output_points(self, sequence: LandmarkSequence, reference: LandmarkSequence) -> np.ndarray:
        """The conditioning landmarks of ``sequence`` in output pixels (F, 468, 2)."""
        from lmk2video.framing import frame_landmarks

        return frame_landmarks(sequence, reference, self.framing)[0]


def render(
    pipe: Any,
    image: np.ndarray,
    reference: LandmarkSequence,
    sequence: LandmarkSequence,
    options: SamplerOptions,
    size: tuple[int, int],
    generator: torch.Generator,
    pose_cache_device: torch.device | None = None,
) -> Rendering:
    """Reference image + landmarks -> frames.

    Args:
        pipe: a :class:`~lmk2video.pipeline.LandmarkVideoPipeline`.
        image: (H0, W0, 3) RGB uint8 reference image at any size.
        reference: its one-frame landmark sequence (``landmarks2d[0]`` places the crop; mesh and pose are drawn
            as the pose guider's reference input).
        sequence: the landmarks to render, in the reference image's camera (made for this reference:
            :func:`lmk2video.framing.prepare_sequence`, or the reference's own clip).
        options: the sampler (its windows must fit the pipeline: :meth:`SamplerOptions.fit`).
        size: (H, W) of the output.
        generator: CPU generator of the initial noise.
        pose_cache_device: where the pose features are kept (default: the pipeline's device).
    """
    from lmk2video.framing import LandmarkDrawings, frame_landmarks, frame_reference

    face = reference.landmarks2d[0] if reference.landmarks2d is not None else reference.project()[0]
    framed, framing = frame_reference(image, face, size, pad_mode=options.pad_mode, **pipe.framing_options)
    points, reference_points = frame_landmarks(sequence, reference, framing)
    style = pipe.config.landmark_style
    pipe.use_scheduler(options.scheduler)
    drawings = LandmarkDrawings(points, size, style)
    reference_drawing = LandmarkDrawings(reference_points[None], size, style)[0:1][0]
    frames = pipe.stream(
        framed,
        drawings,
        reference_drawing,
        generator=generator,
        decode_chunk=options.decode_chunk,
        pose_cache_device=pose_cache_device,
        **options.denoise_kwargs(),
    )
    return Rendering(framed=framed, framing=framing, drawings=drawings, frames=frames)


# ------------------------------------------------------------------------------------------- devices


def speed_up(pipe: Any, *, compile: bool = False, channels_last: bool = False) -> None:
    """GPU paths, in place (attention is PyTorch SDPA everywhere already, which picks flash or memory-efficient
    kernels where the device has them).

    ``channels_last``: the convolutional networks' weights in channels-last memory format (faster convolutions
    with tensor cores). ``compile``: ``torch.compile`` of the denoising UNet, which runs at every step of every
    window (the reference UNet, the pose guider and the VAE run once per video or chunk and are left alone);
    the first window of a video pays the compilation, and a change of batch (guided and unguided steps) or
    window length compiles once more.
    """
    if channels_last:
        for name in ("denoising_unet", "reference_unet", "pose_guider", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if compile:
        pipe.denoising_unet.compile()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, else fp16 on GPU; fp32 on CPU. Or fp32 | fp16 | bf16."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"dtype={name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def pose_cache_device(
    mode: str, device: torch.device, num_frames: int, size: tuple[int, int], pipe: Any
) -> torch.device:
    """Where the pose features of a whole video are kept: ``device`` | ``cpu`` | ``auto`` (the GPU while they
    take at most 4 GiB: every residual's channels at its resolution, per frame)."""
    if mode == "device" or device.type == "cpu":
        return device
    if mode == "cpu":
        return torch.device("cpu")
    h, w = (v // pipe.vae_scale_factor for v in size)
    channels = pipe.denoising_unet.config.block_out_channels
    values = channels[0] * h * w
    for i, c in enumerate(channels):
        scale = 2 ** min(i + 1, len(channels) - 1)
        values += c * (h // scale) * (w // scale)
    nbytes = values * num_frames * torch.finfo(pipe.pose_guider.dtype).bits // 8
    if nbytes > POSE_CACHE_GPU_BYTES:
        log.info("pose features of %d frames take %.1f GiB: kept on the CPU", num_frames, nbytes / 2**30)
        return torch.device("cpu")
    return device
