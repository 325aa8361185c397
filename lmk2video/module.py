"""LandmarkVideoModule: lmk2video training (AniPortrait's stage 1 and stage 2) as a LightningModule.

The module holds the pipeline's components (:class:`~lmk2video.pipeline.LandmarkVideoPipeline`) as its
sub-modules; :meth:`LandmarkVideoModule.pipeline` wraps the live components in a pipeline (no copy) for
validation and export.

Stages (:meth:`LandmarkVideoModule.configure_stage`)
---------------------------------------------------
* stage 1 (images): the denoising UNet without its motion modules, the reference UNet (less the layers
  that cannot reach the reference bank: :meth:`ReferenceUNet.freeze_unused_parameters`) and the pose guider;
* stage 2 (clips): the denoising UNet's motion modules only;

the VAE and the image encoder are always frozen. Frozen networks stay in eval mode.

One training step (:meth:`LandmarkVideoModule.compute_loss`)
------------------------------------------------------------
1. Without gradients: the target frames' VAE latents (a posterior sample), the reference's latents (the
   posterior mean, as generation encodes it), the reference's CLIP image embedding (CLIP's own preprocessing
   on the uint8 image, as generation does).
2. Noise ``n ~ N(0, I)`` plus ``noise_offset * N(0, I)`` per sample and channel (shared by frames and pixels),
   timesteps uniform in ``[0, T)``, ``x_t = add_noise(x_0, n, t)`` and the target
   ``v = get_velocity(x_0, n, t)`` (or ``n`` / ``x_0`` for epsilon / sample prediction) with diffusers'
   ``DDPMScheduler`` built from the model's scheduler config (v-prediction, zero terminal SNR).
3. Condition dropout for classifier-free guidance: each sample, with probability ``uncond_ratio``, gets a zero
   image embedding and no reference attention (``reference_mask`` False), exactly the unconditional branch of
   generation; the pose features are kept, as generation keeps them in both branches.
4. The reference bank (reference UNet at timestep 0), the pose guider on the target drawings with the
   reference drawing, the denoising UNet; loss = per-sample MSE, weighted by min-SNR-gamma (:func:`snr_weights`:
   AniPortrait's ``min(SNR + 1, gamma) / (SNR + 1)`` for v-prediction by default, none when ``snr_gamma`` is
   null).

The training noise schedule is the model's scheduler config (what generation samples with) unless
``loss.beta_schedule`` names another (AniPortrait trains with ``scaled_linear`` and samples with ``linear``).

Every random draw of a step comes from a generator seeded with (seed, step, process rank), so a run resumed
from a checkpoint continues with the noise an uninterrupted run would have drawn.

EMA (``ema_decay``): a float32 copy of the trainable parameters, ``ema = decay * ema + (1 - decay) * param``
after every optimizer step, saved in checkpoints; validation and export use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from common.errors import UserError
from lmk2video.data import to_uint8
from lmk2video.pipeline import SETTING_NAMES

log = logging.getLogger(__name__)

COMPONENTS = ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider")
ALWAYS_FROZEN = ("vae", "image_encoder")
# Min-SNR variants (:func:`snr_weights`) and the training beta schedules ``loss.beta_schedule`` accepts.
SNR_WEIGHTINGS = ("aniportrait", "min_snr")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class LossSettings:
    """Diffusion-loss options (``loss`` in ``conf/lmk2video/train.yaml``)."""

    noise_offset: float = 0.05
    snr_gamma: float | None = 5.0
    snr_weighting: str = "min_snr"
    uncond_ratio: float = 0.1
    beta_schedule: str | None = None

    def __post_init__(self) -> None:
        if self.snr_weighting not in SNR_WEIGHTINGS:
            raise UserError(
                f"loss.snr_weighting={self.snr_weighting!r}: use one of {', '.join(SNR_WEIGHTINGS)}"
            )
        if self.beta_schedule is not None and self.beta_schedule not in BETA_SCHEDULES:
            raise UserError(
                f"loss.beta_schedule={self.beta_schedule!r}: use one of {', '.join(BETA_SCHEDULES)} or null "
                "(the model's own scheduler)"
            )
        if self.noise_offset < 0 or not 0 <= self.uncond_ratio <= 1:
            raise UserError(
                f"loss.noise_offset={self.noise_offset} must be >= 0 and loss.uncond_ratio={self.uncond_ratio} "
                "between 0 and 1"
            )
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UserError(f"loss.snr_gamma={self.snr_gamma} must be positive (5 is usual) or null (off)")


@dataclasses.dataclass
class ValidationSettings:
    """What validation renders (``val`` in ``conf/lmk2video/train.yaml``) through :mod:`lmk2video.rendering`.

    ``frames`` landmark frames of the validation excerpt, ``steps`` sampler steps, guidance ``cfg``, noise
    ``seed``, context windows, ``use_ema`` (render with the EMA weights when EMA is on), ``video`` (False:
    validation loss only), ``face_model`` (a MediaPipe .task: also log the landmark-following metric).
    """

    frames: int = 16
    steps: int = 10
    cfg: float = 3.5
    seed: int = 42
    context_frames: int = 16
    context_overlap: int = 4
    use_ema: bool = True
    video: bool = True
    face_model: str | None = None

    def sampler(self) -> Any:
        """The :class:`lmk2video.rendering.SamplerOptions` of these settings."""
        from lmk2video.rendering import SamplerOptions

        return SamplerOptions.from_values(dataclasses.asdict(self))


# ------------------------------------------------------------------------------------------- helpers


def seed_for(*values: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence), for per-step generators."""
    return int(
        np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


def snr_weights(
    snr: torch.Tensor,
    gamma: float | None,
    prediction_type: str = "v_prediction",
    weighting: str = "aniportrait",
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for per-sample signal-to-noise ratios ``snr`` (B,).

    All ones when ``gamma`` is None. Otherwise, for v-prediction:

    * ``weighting="aniportrait"`` (AniPortrait's and diffusers' training scripts): ``min(SNR + 1, gamma) /
      (SNR + 1)``, 1 at the pure-noise timesteps (SNR 0 with zero terminal SNR), where layout and head pose
      are decided;
    * ``weighting="min_snr"`` (the paper's form): ``min(SNR, gamma) / (SNR + 1)``, 0 at SNR 0 and under 0.01
      for about the last fifth of the timesteps.

    Epsilon prediction: ``min(SNR, gamma) / SNR`` (0 where SNR is 0); sample prediction: ``min(SNR, gamma)``.
    """
    if weighting not in SNR_WEIGHTINGS:
        raise UserError(f"snr weighting {weighting!r}: use one of {', '.join(SNR_WEIGHTINGS)}")
    if gamma is None:
        return torch.ones_like(snr)
    if prediction_type == "v_prediction":
        numerator = snr + 1 if weighting == "aniportrait" else snr
        return torch.clamp(numerator, max=float(gamma)) / (snr + 1)
    clipped = torch.clamp(snr, max=float(gamma))
    if prediction_type == "epsilon":
        return torch.where(
            snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.zeros_like(snr)
        )
    if prediction_type == "sample":
        return clipped
    raise UserError(f"prediction_type={prediction_type!r}: use v_prediction, epsilon or sample")


class EMA:
    """Exponential moving average of named parameters, kept in float32 beside them.

    ``update``: ``shadow = decay * shadow + (1 - decay) * param``. ``swapped``: a context in which the
    parameters hold the averages (restored after).
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float) -> None:
        if not 0 < decay < 1:
            raise UserError(f"ema_decay={decay} must be between 0 and 1 (0.9999 is usual) or null (off)")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in named_parameters}

    @torch.no_grad()
    def update(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        for name, param in named_parameters:
            shadow = self.shadow[name]
            if shadow.device != param.device:
                shadow = self.shadow[name] = shadow.to(param.device)
            shadow.lerp_(param.detach().float(), 1.0 - self.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> Iterator[None]:
        params = dict(named_parameters)
        backup = {n: p.detach().clone() for n, p in params.items()}
        try:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(self.shadow[name].to(param.device, param.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(backup[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        unexpected = sorted(set(state["shadow"]) - set(self.shadow))
        if missing or unexpected:
            raise UserError(
                f"the checkpoint's EMA does not match the trainable parameters (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}); resume with the same stage and model"
            )
        for name, value in state["shadow"].items():
            self.shadow[name] = value.to(self.shadow[name].device, torch.float32).clone()
        self.num_updates = int(state["num_updates"])


def adamw_8bit(params: Iterable[nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW (``optimizer=adamw8bit``); a clear error when bitsandbytes is missing."""
    try:
        import bitsandbytes
    except ImportError:
        raise UserError(
            "optimizer=adamw8bit needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(or pip install talking-portrait[bnb]); or use optimizer=adamw"
        ) from None
    return bitsandbytes.optim.AdamW8bit(params, **kwargs)


class WarmupConstant:
    """LambdaLR factor of a constant schedule with linear warmup: ``min(1, (step + 1) / warmup_steps)``."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = max(1, int(warmup_steps))

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps)


# ------------------------------------------------------------------------------------------- module


class LandmarkVideoModule(pl.LightningModule):
    """lmk2video training (see the module docstring).

    Subclasses train other stages (:class:`lmk2video.distillation.DistillationModule`): they override
    :meth:`configure_stage`, :meth:`compute_loss` and :attr:`excluded_from_checkpoint`.

    Args:
        pipeline: the model to train (:func:`lmk2video.building.load_or_build`); its components become this
            module's sub-modules.
        stage: 1 (denoising UNet 2-D part, reference UNet, pose guider) or 2 (motion modules).
        optimizer: a function ``parameters -> optimizer`` (Hydra ``_partial_``; default AdamW, lr 1e-5).
        warmup_steps: linear learning-rate warmup, then constant.
        loss: :class:`LossSettings` values.
        ema_decay: EMA of the trainable parameters (None: off).
        gradient_checkpointing: recompute activations of the trained networks in the backward pass.
        validation: :class:`ValidationSettings` values.
        seed: seed of the per-step noise.
        media_dir: where validation videos are written (``val_step{step:07d}.mp4``).
    """

    # Top-level sub-modules whose (frozen) weights checkpoints leave out.
    excluded_from_checkpoint: tuple[str, ...] = ALWAYS_FROZEN

    def __init__(
        self,
        pipeline: Any,
        stage: int = 1,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        warmup_steps: int = 1,
        loss: dict[str, Any] | LossSettings | None = None,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        validation: dict[str, Any] | ValidationSettings | None = None,
        seed: int = 0,
        media_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        for name in COMPONENTS:
            setattr(self, name, getattr(pipeline, name))
        self.feature_extractor = pipeline.feature_extractor
        self.inference_scheduler_config = dict(pipeline.scheduler.config)
        self.inference_scheduler_class = type(pipeline.scheduler)
        self.pipeline_settings = {k: pipeline.config[k] for k in SETTING_NAMES if k in pipeline.config}
        accepted = inspect.signature(DDPMScheduler.__init__).parameters
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, lr=1e-5, weight_decay=1e-2)
        self.warmup_steps = int(warmup_steps)
        self.loss_settings = loss if isinstance(loss, LossSettings) else LossSettings(**(loss or {}))
        train_schedule = {k: v for k, v in pipeline.scheduler.config.items() if k in accepted}
        if self.loss_settings.beta_schedule is not None:
            train_schedule["beta_schedule"] = self.loss_settings.beta_schedule
        self.noise_scheduler = DDPMScheduler.from_config(train_schedule)
        self.validation_settings = (
            validation
            if isinstance(validation, ValidationSettings)
            else ValidationSettings(**(validation or {}))
        )
        self.seed = int(seed)
        self.media_dir = None if media_dir is None else Path(media_dir)
        self.stage = stage
        self.frozen_modules: list[str] = []
        self.configure_stage(self.stage)
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()
        self.ema = EMA(self.trainable_parameters(), ema_decay) if ema_decay is not None else None
        # The EMA travels in the state dict (checkpoints, and the weights ddp_spawn hands back to the launching
        # process) without being a buffer that DistributedDataParallel would broadcast at every step.
        self.register_state_dict_post_hook(_add_ema_state)
        self.register_load_state_dict_pre_hook(_take_ema_state)
        self._excerpt = None

    # ---------------------------------------------------------------------------------------- stages

    def configure_stage(self, stage: int) -> None:
        """Set which parameters train (see the module docstring) through the networks' named methods."""
        unet, reference, guider = self.denoising_unet, self.reference_unet, self.pose_guider
        for name in ALWAYS_FROZEN:
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(False)
        if stage == 1:
            unet.set_2d_trainable(True)
            unet.set_motion_modules_trainable(False)
            reference.requires_grad_(True)
            reference.freeze_unused_parameters()
            guider.requires_grad_(True)
            self.frozen_modules = list(ALWAYS_FROZEN)
        elif stage == 2:
            if not unet.has_motion_modules:
                raise UserError(
                    "stage=2 trains the motion modules but the denoising UNet has none; set model.motion_module "
                    "(a stage-2 experiment) or init_from a model with motion modules"
                )
            unet.set_2d_trainable(False)
            unet.set_motion_modules_trainable(True)
            reference.requires_grad_(False)
            guider.requires_grad_(False)
            self.frozen_modules = [*ALWAYS_FROZEN, "reference_unet", "pose_guider"]
        else:
            raise UserError(f"stage={stage}: choose 1 (images) or 2 (motion modules)")
        self.stage = stage
        self.train(self.training)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every parameter that trains, in module order."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Gradient checkpointing in the networks that train (the frozen ones keep no activations anyway)."""
        self.denoising_unet.enable_gradient_checkpointing()
        if self.stage == 1:
            self.reference_unet.enable_gradient_checkpointing()
            self.pose_guider.enable_gradient_checkpointing()

    def train(self, mode: bool = True) -> LandmarkVideoModule:
        super().train(mode)
        for name in self.frozen_modules:
            module = getattr(self, name, None)
            if module is not None:
                module.eval()
        return self

    # ---------------------------------------------------------------------------------------- pipeline

    def pipeline(self) -> Any:
        """A :class:`LandmarkVideoPipeline` around the live components (shared, not copied)."""
        from lmk2video.pipeline import LandmarkVideoPipeline

        scheduler = self.inference_scheduler_class.from_config(self.inference_scheduler_config)
        pipe = LandmarkVideoPipeline(
            **{name: getattr(self, name) for name in COMPONENTS},
            feature_extractor=self.feature_extractor,
            scheduler=scheduler,
            **self.pipeline_settings,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @contextlib.contextmanager
    def averaged_weights(self, enabled: bool = True) -> Iterator[None]:
        """A context in which the trainable parameters hold their EMA (when EMA is on and ``enabled``)."""
        if self.ema is None or not enabled:
            yield
            return
        with self.ema.swapped(self.trainable_parameters()):
            yield

    def export(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder ``lmk2video.generate model=DIR`` loads (EMA weights when EMA is on)."""
        from lmk2video.building import write_model_folder

        with self.averaged_weights():
            path = write_model_folder(self.pipeline(), out, overwrite=overwrite)
        log.info("exported the model to %s", path)
        return path

    # ---------------------------------------------------------------------------------------- loss

    def _encode(self, images: torch.Tensor, generator: torch.Generator | None, sample: bool) -> torch.Tensor:
        """(B, 3, F, H, W) or (B, 3, H, W) images in [-1, 1] -> float32 latents of the same layout."""
        from lmk2video.pipeline import encode_images

        video = images.ndim == 5
        if video:
            b, c, f, h, w = images.shape
            images = images.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        latents = encode_images(self.vae, images, generator=generator, sample=sample).float()
        if video:
            latents = latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
        return latents

    def image_embeds(self, references: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) references in [-1, 1] -> (B, 1, D) CLIP image embeddings (CLIP's own preprocessing)."""
        images = [to_uint8(r) for r in references]
        pixels = self.feature_extractor(images=images, return_tensors="pt").pixel_values
        encoder = self.image_encoder
        embeds = encoder(pixels.to(device=references.device, dtype=encoder.dtype)).image_embeds
        return embeds[:, None]

    def compute_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch (see the module docstring) and per-sample details.

        Returns ``(loss, details)``, details holding ``mse`` (B,), ``weights`` (B,), ``timesteps`` (B,),
        ``dropped`` (B,) bool.
        """
        settings = self.loss_settings
        pixels = batch["pixel_values"]
        b = pixels.shape[0]
        device = pixels.device
        with torch.no_grad():
            latents = self._encode(pixels, generator, sample=True)
            reference_latents = self._encode(batch["reference"], None, sample=False)
            embeds = self.image_embeds(batch["reference"]).float()
        noise = torch.randn(latents.shape, generator=generator, device=device)
        if settings.noise_offset > 0:
            offset = torch.randn((b, latents.shape[1], 1, 1, 1), generator=generator, device=device)
            noise = noise + settings.noise_offset * offset
        scheduler = self.noise_scheduler
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=device
        )
        dropped = torch.rand((b,), generator=generator, device=device) < settings.uncond_ratio
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        elif prediction_type == "epsilon":
            target = noise
        elif prediction_type == "sample":
            target = latents
        else:
            raise UserError(
                f"scheduler prediction_type={prediction_type!r}: use v_prediction, epsilon or sample"
            )

        trains_conditioning = self.stage == 1
        with torch.set_grad_enabled(trains_conditioning and torch.is_grad_enabled()):
            bank = self.reference_unet.compute_reference_hidden_states(reference_latents, embeds, timestep=0)
            pose = self.pose_guider(batch["landmarks"], batch["reference_landmarks"])
        cond = torch.where(dropped[:, None, None], torch.zeros_like(embeds), embeds)
        prediction = self.denoising_unet(
            noisy,
            timesteps,
            cond,
            reference_hidden_states=bank,
            down_block_res_samples=pose.down_block_res_samples,
            mid_block_res_sample=pose.mid_block_res_sample,
            reference_mask=~dropped,
        ).sample
        mse = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))
        alphas = scheduler.alphas_cumprod.to(device)[timesteps].float()
        snr = alphas / (1 - alphas)
        weights = snr_weights(snr, settings.snr_gamma, prediction_type, settings.snr_weighting)
        loss = (mse * weights).mean()
        return loss, {"mse": mse.detach(), "weights": weights, "timesteps": timesteps, "dropped": dropped}

    def _generator(self, *values: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed_for(self.seed, *values))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        micro = (
            self.global_step * self.trainer.accumulate_grad_batches
            + batch_idx % self.trainer.accumulate_grad_batches
        )
        loss, details = self.compute_loss(batch, self._generator(0, micro, self.global_rank))
        batch_size = batch["pixel_values"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/mse", details["mse"].mean(), batch_size=batch_size)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.trainable_parameters())

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for _, p in self.trainable_parameters()]
        if not params:
            raise UserError(f"stage={self.stage}: nothing to train")
        optimizer = self.optimizer_factory(params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen networks of :attr:`excluded_from_checkpoint` out (the VAE and image encoder: rebuilt
        from the model config or folder on resume)."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.split(".", 1)[0] in self.excluded_from_checkpoint]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.split(".", 1)[0] in self.excluded_from_checkpoint and key not in state:
                state[key] = value
        has_ema = any(k.startswith(EMA_PREFIX) for k in state)
        if (self.ema is not None) != has_ema:
            raise UserError(
                f"the checkpoint was saved {'with' if has_ema else 'without'} EMA; resume with the same ema_decay "
                f"({'a number' if has_ema else 'null'})"
            )

    # ---------------------------------------------------------------------------------------- sharding

    def _fsdp_root(self) -> Any:
        strategy = getattr(self._trainer, "strategy", None) if self._trainer is not None else None
        return strategy.model if type(strategy).__name__ == "FSDPStrategy" else None

    def setup(self, stage: str) -> None:
        if type(self.trainer.strategy).__name__ == "FSDPStrategy" and self.ema is not None:
            raise UserError("ema_decay is not supported with trainer=fsdp (the EMA is not sharded); use ddp")

    @contextlib.contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Every rank must enter: under FSDP the whole model is gathered on each rank; otherwise nothing."""
        root = self._fsdp_root()
        if root is None:
            yield
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(root, writeback=False):
            yield

    def export_from_all_ranks(
        self, trainer: pl.Trainer, out: str | Path, overwrite: bool = False
    ) -> Path | None:
        """:meth:`export` on rank zero after training; every rank calls it (FSDP gathers the model)."""
        self._trainer = trainer
        with self.full_parameters():
            path = self.export(out, overwrite=overwrite) if trainer.is_global_zero else None
        trainer.strategy.barrier("export")
        return path

    # ---------------------------------------------------------------------------------------- validation

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Validation loss on fixed samples with fixed noise (the same at every validation)."""
        generator = self._generator(1, batch_idx, self.global_rank)
        with self.averaged_weights(self.validation_settings.use_ema):
            loss, details = self.compute_loss(batch, generator)
        batch_size = batch["pixel_values"].shape[0]
        self.log("val/loss", loss, sync_dist=True, batch_size=batch_size)
        self.log("val/mse", details["mse"].mean(), sync_dist=True, batch_size=batch_size)
        return loss

    def on_validation_epoch_end(self) -> None:
        settings = self.validation_settings
        if self.trainer.sanity_checking or not settings.video:
            return
        if self.media_dir is None or self.trainer.datamodule is None:
            return
        path = self.media_dir / f"val_step{self.global_step:07d}.mp4"
        with self.full_parameters():
            if not self.trainer.is_global_zero:
                return
            frames, points = self.render_validation(path)
        self._log_video(path)
        if settings.face_model is not None:
            from lmk2video.following import landmark_following

            scores = landmark_following(frames, points, settings.face_model)
            self.log("val/face_detection_rate", scores.detection_rate, rank_zero_only=True)
            if scores.detected:
                self.log("val/landmark_error_px", scores.mean_error_px, rank_zero_only=True)

    def validation_excerpt(self) -> Any:
        if self._excerpt is None:
            self._excerpt = self.trainer.datamodule.validation_excerpt(self.validation_settings.frames)
        return self._excerpt

    @torch.no_grad()
    def render_validation(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Render the validation excerpt as ``generate`` would (:func:`lmk2video.rendering.render`); write a grid
        video to ``path``.

        Returns the generated frames (F, H, W, 3) and the conditioning landmarks in output pixels (F, 468, 2).
        """
        from common.video import VideoWriter
        from lmk2video.rendering import render

        settings = self.validation_settings
        excerpt = self.validation_excerpt()
        size = (self.pipeline_settings["height"], self.pipeline_settings["width"])
        pipe = self.pipeline()
        options = settings.sampler().fit(pipe, strict=False)
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        was_training = self.training
        self.eval()
        try:
            with self.averaged_weights(settings.use_ema):
                rendering = render(
                    pipe, excerpt.image, excerpt.reference, excerpt.sequence, options, size, generator
                )
                frames = np.concatenate(list(rendering.frames))
        finally:
            self.train(was_training)
        with VideoWriter(path, fps=excerpt.sequence.fps) as writer:
            writer.write(rendering.grid(frames, 0))
        return frames, rendering.output_points(excerpt.sequence, excerpt.reference)

    def _log_video(self, path: Path) -> None:
        for logger in self.loggers:
            kind = type(logger).__name__
            if kind == "WandbLogger":
                logger.log_video("val/video", [str(path)], step=self.global_step, format=["mp4"])
            elif kind == "CSVLogger":
                logger.log_metrics({"val/video": str(path)}, step=self.global_step)


EMA_PREFIX = "_ema."


def _add_ema_state(
    module: LandmarkVideoModule, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    if module.ema is not None:
        state[f"{prefix}{EMA_PREFIX}num_updates"] = torch.tensor(module.ema.num_updates)
        for name, value in module.ema.shadow.items():
            state[f"{prefix}{EMA_PREFIX}{name}"] = value


def _take_ema_state(
    module: LandmarkVideoModule, state: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    keys = [k for k in state if k.startswith(f"{prefix}{EMA_PREFIX}")]
    values = {k[len(prefix) + len(EMA_PREFIX) :]: state.pop(k) for k in keys}
    if module.ema is None or not values:
        return
    updates = int(values.pop("num_updates"))
    module.ema.load_state_dict({"decay": module.ema.decay, "num_updates": updates, "shadow": values})


def trainable_names(module: LandmarkVideoModule) -> list[str]:
    """Names of the parameters that train."""
    return [n for n, _ in module.trainable_parameters()]
