"""Few-step students: latent consistency distillation (LCD) of a trained model folder (``stage: distill``).

``python -m lmk2video.train experiment=tiny_distill teacher=MODEL_DIR`` trains a student of the teacher's
denoising UNet (motion modules included) that samples in a few steps with one UNet pass per step; the
reference UNet, the pose guider, the VAE and the image encoder are the teacher's, frozen. What is trained is
the consistency function of Latent Consistency Models (Luo et al., 2023), with the teacher's classifier-free
guidance folded in (the student is always conditional, so generation needs no unconditional pass):

1. Skipping timesteps of a DDIM solver: ``t_n = (n + 1) * k - 1`` for ``n < N`` (``solver_steps`` N, ``k =
   T / N``), as ``LCMScheduler``'s ``original_inference_steps`` samples them. Each sample draws ``n``; ``s =
   max(t_n - k, 0)`` is the next, less noisy, solver timestep.
2. ``x_t`` = the target frames' latents noised to ``t_n``.
3. Teacher, without gradients: the unconditional and conditional predictions at ``(x_t, t_n)`` (exactly
   generation's two branches: zero image embedding and no reference attention for the first), each turned
   into ``(x0, eps)``, combined as ``u + w * (c - u)`` with ``w = guidance_scale``, and one DDIM step to
   ``s``: ``x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps``.
4. Student at ``(x_t, t_n)`` and target network at ``(x_s, s)`` (without gradients), each as the
   consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0(x, t)`` with LCM's boundary scalings
   (``c_skip(0) = 1``, ``c_out(0) = 0``; ``timestep_scaling`` 10, ``sigma_data`` 0.5, as ``LCMScheduler``).
5. Loss: the pseudo-Huber distance ``sqrt((f_student - f_target)^2 + c^2) - c`` (``huber_c``), averaged.

The target network is the student's EMA (``ema_decay``, LCM's 0.95), which is also what is exported; with
``ema_decay: null`` it is the student itself, without gradients (LCM-LoRA's choice). ``distill.lora_rank``
trains LoRA adapters (``peft``) on the student's attention, feed-forward and convolution layers instead of
all its weights; they are merged into the exported weights, so the student folder loads like any other.

The exported folder's scheduler is an ``LCMScheduler`` (or ``TCDScheduler``, ``distill.scheduler``) built
from the teacher's scheduler config with ``original_inference_steps = solver_steps``, and its config
recommends ``distill.steps`` steps without guidance (``sampling``) and marks it ``distilled``, so
``python -m lmk2video.generate model=STUDENT`` samples fast without options.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import UserError
from lmk2video.module import ALWAYS_FROZEN, LandmarkVideoModule

log = logging.getLogger(__name__)

STAGE = "distill"
STUDENT_SCHEDULERS = ("lcm", "tcd")
SIGMA_DATA = 0.5
# LoRA targets (module-name suffixes): attention projections, feed-forward, resnet convolutions, time embedding.
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
)


@dataclasses.dataclass
class DistillSettings:
    """Options of the distillation stage (``distill`` in ``conf/lmk2video/train.yaml``).

    Attributes:
        guidance_scale: the teacher's classifier-free guidance folded into the student (3.5: generate's default).
        solver_steps: N, the DDIM solver's skipping steps (LCM's 50); the student's ``original_inference_steps``.
        scheduler: the exported folder's sampler, ``lcm`` or ``tcd``.
        steps: the steps the exported folder recommends (``generate`` uses them unless ``steps=`` is given).
        huber_c: pseudo-Huber constant of the loss (LCM's 0.001).
        timestep_scaling: of the boundary scalings (LCM's 10; written into the exported scheduler).
        lora_rank: train LoRA adapters of this rank (``peft``) instead of all weights; null: full weights.
        lora_alpha: LoRA scale numerator (null: ``lora_rank``, a scale of 1).
    """

    guidance_scale: float = 3.5
    solver_steps: int = 50
    scheduler: str = "lcm"
    steps: int = 4
    huber_c: float = 0.001
    timestep_scaling: float = 10.0
    lora_rank: int | None = None
    lora_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.scheduler not in STUDENT_SCHEDULERS:
            raise UserError(f"distill.scheduler={self.scheduler!r}; choose {' or '.join(STUDENT_SCHEDULERS)}")
        for name, low in (("solver_steps", 2), ("steps", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"distill.{name}={value!r} must be a whole number >= {low}")
        if self.steps > self.solver_steps:
            raise UserError(
                f"distill.steps={self.steps} must be at most distill.solver_steps={self.solver_steps}"
            )
        if not 1 <= self.guidance_scale <= 100:
            raise UserError(
                f"distill.guidance_scale={self.guidance_scale} must be from 1 (no guidance) to 100 (3.5 is usual)"
            )
        if self.huber_c <= 0 or self.timestep_scaling <= 0:
            raise UserError("distill.huber_c and distill.timestep_scaling must be positive")
        if self.lora_rank is not None and (not isinstance(self.lora_rank, int) or self.lora_rank < 1):
            raise UserError(f"distill.lora_rank={self.lora_rank!r} must be a whole number >= 1 or null")


def solver_timesteps(num_train_timesteps: int, solver_steps: int) -> torch.Tensor:
    """The DDIM solver's skipping timesteps ``(n + 1) * k - 1``, ascending (LCMScheduler's origin timesteps)."""
    k = num_train_timesteps // solver_steps
    return torch.arange(1, solver_steps + 1) * k - 1


def boundary_scalings(
    timesteps: torch.Tensor, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's ``(c_skip, c_out)`` at ``timesteps``: ``(1, 0)`` at t = 0, about ``(0, 1)`` for t >> 0."""
    t = timesteps.float() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (t**2 + SIGMA_DATA**2)
    c_out = t / (t**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def predicted_x0_eps(
    prediction: torch.Tensor, sample: torch.Tensor, alphas: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` from a model output at noise levels ``alphas`` (cumulative, shaped to broadcast)."""
    a, s = alphas.sqrt(), (1 - alphas).sqrt()
    if prediction_type == "v_prediction":
        return a * sample - s * prediction, a * prediction + s * sample
    if prediction_type == "epsilon":
        return (sample - s * prediction) / a.clamp_min(1e-6), prediction
    if prediction_type == "sample":
        return prediction, (sample - a * prediction) / s.clamp_min(1e-6)
    raise UserError(f"scheduler prediction_type={prediction_type!r}: use v_prediction, epsilon or sample")


def add_lora(unet: nn.Module, rank: int, alpha: float | None, seed: int) -> None:
    """LoRA adapters (``peft``) on the UNet's :data:`LORA_TARGETS`; their up-projections start at zero."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, target_modules=list(LORA_TARGETS), init_lora_weights="gaussian"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, unet)


def merge_lora(unet: nn.Module) -> nn.Module:
    """``unet`` with its LoRA adapters merged into the base weights and removed (its original key names)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent) if parent else unet, child, module.get_base_layer())
    return unet


def has_lora(unet: nn.Module) -> bool:
    return any("lora_" in name for name, _ in unet.named_parameters())


class DistillationModule(LandmarkVideoModule):
    """Latent consistency distillation of a teacher model (see the module docstring).

    Args:
        pipeline: the teacher (:meth:`LandmarkVideoPipeline.from_pretrained` of ``teacher=``); its denoising UNet
            becomes the student (trained), a frozen copy the teacher.
        distill: :class:`DistillSettings` values.
        **kwargs: :class:`~lmk2video.module.LandmarkVideoModule`'s (optimizer, ema_decay, validation, seed ...;
            ``loss`` is not used).
    """

    excluded_from_checkpoint = (*ALWAYS_FROZEN, "teacher_unet")

    def __init__(self, pipeline: Any, distill: dict[str, Any] | DistillSettings | None = None, **kwargs: Any):
        from lmk2video.schedulers import make_scheduler

        settings = distill if isinstance(distill, DistillSettings) else DistillSettings(**(distill or {}))
        teacher = copy.deepcopy(pipeline.denoising_unet).requires_grad_(False).eval()
        if settings.lora_rank is not None:
            add_lora(
                pipeline.denoising_unet, settings.lora_rank, settings.lora_alpha, int(kwargs.get("seed", 0))
            )
        super().__init__(pipeline, stage=STAGE, **kwargs)
        self.teacher_unet = teacher
        self.distill_settings = settings
        if self.noise_scheduler.config.num_train_timesteps % settings.solver_steps:
            raise UserError(
                f"distill.solver_steps={settings.solver_steps} must divide the schedule's "
                f"{self.noise_scheduler.config.num_train_timesteps} timesteps (50 is usual)"
            )
        student = make_scheduler(settings.scheduler, self.inference_scheduler_config, distilled=True)
        config = {
            **dict(student.config),
            "original_inference_steps": settings.solver_steps,
            "timestep_scaling": settings.timestep_scaling,
        }
        self.inference_scheduler_class = type(student)
        self.inference_scheduler_config = {k: v for k, v in config.items() if not k.startswith("_")}
        self.pipeline_settings.update(sampling={"steps": settings.steps, "cfg": 1.0}, distilled=True)

    def configure_stage(self, stage: Any) -> None:
        """Only the student trains: all of the denoising UNet, or its LoRA adapters when it has them."""
        if stage != STAGE:
            raise UserError(f"stage={stage!r}: a DistillationModule trains stage={STAGE}")
        for name in (*ALWAYS_FROZEN, "reference_unet", "pose_guider"):
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(False)
        unet = self.denoising_unet
        if has_lora(unet):
            unet.requires_grad_(False)
            for name, parameter in unet.named_parameters():
                parameter.requires_grad_("lora_" in name)
        else:
            unet.requires_grad_(True)
        self.frozen_modules = [*ALWAYS_FROZEN, "reference_unet", "pose_guider", "teacher_unet"]
        self.stage = stage
        self.train(self.training)

    def enable_gradient_checkpointing(self) -> None:
        self.denoising_unet.enable_gradient_checkpointing()

    @torch.no_grad()
    def teacher_fingerprint(self) -> float:
        """A number that identifies the teacher's weights (the sum of all of them, in float64)."""
        return float(sum(p.double().sum() for p in self.teacher_unet.parameters()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the teacher out (it is loaded from ``teacher=`` on resume) but note which it was."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["distill_teacher_fingerprint"] = self.teacher_fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("distill_teacher_fingerprint")
        if saved is None:
            raise UserError(
                "the checkpoint is not a distillation checkpoint; resume with the stage it was trained with"
            )
        now = self.teacher_fingerprint()
        if abs(saved - now) > 1e-9 * max(1.0, abs(saved)):
            raise UserError(
                "the checkpoint was distilled from another teacher than teacher= (its weights differ); resume "
                "with the teacher folder it started from"
            )

    def export(self, out: str | Path, overwrite: bool = False) -> Path:
        """The student's model folder (EMA weights when EMA is on, LoRA merged), with its own scheduler."""
        from lmk2video.building import write_model_folder

        with self.averaged_weights():
            pipe = self.pipeline()
            if has_lora(self.denoising_unet):
                pipe.register_modules(denoising_unet=merge_lora(copy.deepcopy(self.denoising_unet)))
            path = write_model_folder(pipe, out, overwrite=overwrite)
        log.info("exported the %d-step student to %s", self.distill_settings.steps, path)
        return path

    def compute_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The consistency-distillation loss of a batch (see the module docstring) and per-sample details
        (``mse``: the per-sample Huber distance, ``timesteps``: the solver timesteps drawn)."""
        settings = self.distill_settings
        pixels = batch["pixel_values"]
        b, device = pixels.shape[0], pixels.device
        scheduler = self.noise_scheduler
        prediction_type = scheduler.config.prediction_type
        alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        with torch.no_grad():
            latents = self._encode(pixels, generator, sample=True)
            reference_latents = self._encode(batch["reference"], None, sample=False)
            embeds = self.image_embeds(batch["reference"]).float()
            bank = self.reference_unet.compute_reference_hidden_states(reference_latents, embeds, timestep=0)
            pose = self.pose_guider(batch["landmarks"], batch["reference_landmarks"])
        noise = torch.randn(latents.shape, generator=generator, device=device)
        grid = solver_timesteps(scheduler.config.num_train_timesteps, settings.solver_steps).to(device)
        index = torch.randint(0, settings.solver_steps, (b,), generator=generator, device=device)
        start = grid[index]
        previous = (start - (grid[1] - grid[0])).clamp_min(0)
        noisy = scheduler.add_noise(latents, noise, start)

        def shaped(values: torch.Tensor) -> torch.Tensor:
            return values.view(-1, *([1] * (latents.ndim - 1)))

        def run(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor:
            down, mid = pose.down_block_res_samples, pose.mid_block_res_sample
            cond, ref, mask = embeds, bank, None
            if guided:  # [unconditional, conditional], as generation batches them
                x, t = torch.cat([x, x]), torch.cat([t, t])
                cond = torch.cat([torch.zeros_like(embeds), embeds])
                ref = {k: torch.cat([v, v]) for k, v in bank.items()}
                mask = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(
                    device
                )
                down = tuple(None if r is None else torch.cat([r, r]) for r in down)
                mid = None if mid is None else torch.cat([mid, mid])
            return unet(
                x,
                t,
                cond,
                reference_hidden_states=ref,
                down_block_res_samples=down,
                mid_block_res_sample=mid,
                reference_mask=mask,
            ).sample.float()

        def consistency(prediction: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x0, _ = predicted_x0_eps(prediction, x, shaped(alphas_cumprod[t]), prediction_type)
            c_skip, c_out = boundary_scalings(t, settings.timestep_scaling)
            return shaped(c_skip) * x + shaped(c_out) * x0

        # Teacher and target first: the target swaps the EMA into the student's parameters, which must not
        # change between the student's forward pass and its backward pass.
        with torch.no_grad():
            uncond, cond = run(self.teacher_unet, noisy, start, guided=True).chunk(2)
            a_start = shaped(alphas_cumprod[start])
            x0_u, eps_u = predicted_x0_eps(uncond, noisy, a_start, prediction_type)
            x0_c, eps_c = predicted_x0_eps(cond, noisy, a_start, prediction_type)
            w = settings.guidance_scale
            x0 = x0_u + w * (x0_c - x0_u)
            eps = eps_u + w * (eps_c - eps_u)
            a_prev = shaped(alphas_cumprod[previous])
            x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            with self.averaged_weights():
                target = consistency(
                    run(self.denoising_unet, x_prev, previous, guided=False), x_prev, previous
                )
        student = consistency(run(self.denoising_unet, noisy, start, guided=False), noisy, start)
        c = settings.huber_c
        distance = torch.sqrt((student - target).pow(2) + c**2) - c
        per_sample = distance.mean(dim=tuple(range(1, distance.ndim)))
        loss = per_sample.mean()
        return loss, {"mse": per_sample.detach(), "timesteps": start}
