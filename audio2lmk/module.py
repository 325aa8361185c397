"""Lightning training of Audio2Mesh and Audio2Pose, together or alone.

:class:`Audio2LmkModule` holds ``mesh_model`` (:class:`~audio2lmk.models.Audio2MeshModel`) and/or
``pose_model`` (:class:`~audio2lmk.models.Audio2PoseModel`); either may be None. A batch comes from
:class:`audio2lmk.data.Audio2LmkDataModule` (``audio (B, N)``, ``offsets (B, T, 468, 3)`` cm,
``pose (B, T, 6)`` relative to the window's first frame, ``mask (B, T)``, ``style (B,)``,
``clip (B,)``).

Loss (all terms are masked means over real frames)::

    mesh_weight * (L1(offsets) + lip_weight * L1(lip offsets) + velocity_weight * L1(d/dt offsets))
    + pose_weight * (L1(pose) + velocity_weight * L1(d/dt pose))

The pose model is trained with teacher forcing (:func:`~audio2lmk.models.shift_poses`, zero
initial pose). Validation logs ``val/loss`` (the same loss) and, through
:class:`audio2lmk.metrics.Audio2LmkMetrics`, ``val/lve_mm``, ``val/mve_mm``, ``val/mouth_corr``
(mesh model) and ``val/pose_l1`` (pose model; poses *generated* autoregressively from a zero
initial pose with the window's style id, unless ``generate_val_poses=False``, which uses the
teacher-forced prediction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from audio2lmk.metrics import LIP_VERTICES, Audio2LmkMetrics
from audio2lmk.models import Audio2MeshModel, Audio2PoseModel, shift_poses
from common.errors import UserError

log = logging.getLogger(__name__)

MAX_VAL_CLIPS = 4096
"""Per-clip metric slots when the module runs without a data module that knows its clips."""


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred - target|`` over the frames where ``mask`` (B, T) is True; ``(B, T, ...)`` inputs."""
    weight = mask.to(pred.dtype).reshape(*mask.shape, *([1] * (pred.ndim - 2)))
    count = weight.sum() * pred[0, 0].numel()
    return ((pred - target).abs() * weight).sum() / count.clamp_min(1.0)


def velocity_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_l1` of the frame-to-frame differences (pairs of real frames only)."""
    if pred.shape[1] < 2:
        return pred.new_zeros(())
    return masked_l1(pred.diff(dim=1), target.diff(dim=1), mask[:, 1:] & mask[:, :-1])


class Audio2LmkModule(pl.LightningModule):
    """Trains a mesh head, a pose head, or both (see the module docstring for the loss).

    Args:
        mesh_model: an :class:`Audio2MeshModel` or None.
        pose_model: an :class:`Audio2PoseModel` or None.
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_: true`` config).
        scheduler: ``optimizer -> LRScheduler`` or None (``_partial_: true``), stepped every
            ``scheduler_interval`` (``"step"`` or ``"epoch"``).
        mesh_weight, pose_weight: weights of the two heads' losses.
        lip_weight: extra weight of the lip vertices (:data:`~audio2lmk.metrics.LIP_VERTICES`).
        velocity_weight: weight of the velocity (frame difference) L1 terms.
        generate_val_poses: validate poses by autoregressive generation (True) or teacher forcing.
    """

    def __init__(
        self,
        mesh_model: Audio2MeshModel | None = None,
        pose_model: Audio2PoseModel | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        mesh_weight: float = 1.0,
        pose_weight: float = 1.0,
        lip_weight: float = 0.0,
        velocity_weight: float = 0.0,
        generate_val_poses: bool = True,
    ) -> None:
        super().__init__()
        if mesh_model is None and pose_model is None:
            raise UserError("nothing to train: configure model.mesh_model and/or model.pose_model")
        if scheduler_interval not in ("step", "epoch"):
            raise UserError(f"model.scheduler_interval={scheduler_interval!r}: use 'step' or 'epoch'")
        self.mesh_model = mesh_model
        self.pose_model = pose_model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.mesh_weight, self.pose_weight = float(mesh_weight), float(pose_weight)
        self.lip_weight, self.velocity_weight = float(lip_weight), float(velocity_weight)
        self.generate_val_poses = bool(generate_val_poses)
        self.save_hyperparameters(ignore=["mesh_model", "pose_model", "optimizer", "scheduler"])
        self.val_metrics = Audio2LmkMetrics(MAX_VAL_CLIPS)
        self.register_buffer("lip_index", torch.tensor(LIP_VERTICES), persistent=False)

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        val_records = getattr(datamodule, "val_records", None)
        if val_records:
            self.val_metrics = Audio2LmkMetrics(len(val_records)).to(self.device)
        speakers = getattr(datamodule, "train_speakers", None)
        if self.pose_model is not None and speakers and len(speakers) > self.pose_model.config.num_styles:
            raise UserError(
                f"the data has {len(speakers)} training speakers but the pose model has "
                f"num_styles={self.pose_model.config.num_styles}; set model.pose_model.num_styles>="
                f"{len(speakers)}"
            )

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise UserError("model.optimizer is not configured (e.g. torch.optim.AdamW with _partial_: true)")
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    # ------------------------------------------------------------------ losses

    def _losses(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict, dict]:
        """Total loss, its parts (detached) and the predictions of ``batch``."""
        audio, mask = batch["audio"], batch["mask"].bool()
        frames = mask.shape[1]
        parts: dict[str, torch.Tensor] = {}
        preds: dict[str, torch.Tensor] = {}
        total = audio.new_zeros(())
        if self.mesh_model is not None:
            pred, target = self.mesh_model(audio, frames, phones=batch.get("phones")), batch["offsets"]
            preds["offsets"] = pred
            mesh = parts["mesh_l1"] = masked_l1(pred, target, mask)
            if self.lip_weight:
                lips = parts["lip_l1"] = masked_l1(
                    pred[:, :, self.lip_index], target[:, :, self.lip_index], mask
                )
                mesh = mesh + self.lip_weight * lips
            if self.velocity_weight:
                vel = parts["mesh_velocity_l1"] = velocity_l1(pred, target, mask)
                mesh = mesh + self.velocity_weight * vel
            total = total + self.mesh_weight * mesh
        if self.pose_model is not None:
            target = batch["pose"]
            pred = self.pose_model(audio, shift_poses(target), batch["style"], phones=batch.get("phones"))
            preds["pose"] = pred
            pose = parts["pose_l1"] = masked_l1(pred, target, mask)
            if self.velocity_weight:
                vel = parts["pose_velocity_l1"] = velocity_l1(pred, target, mask)
                pose = pose + self.velocity_weight * vel
            total = total + self.pose_weight * pose
        return total, {k: v.detach() for k, v in parts.items()}, preds

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts, _ = self._losses(batch)
        size = batch["audio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, parts, preds = self._losses(batch)
        size = batch["audio"].shape[0]
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        for name, value in parts.items():
            self.log(
                f"val/{name}_tf" if name.startswith("pose") else f"val/{name}",
                value,
                batch_size=size,
                sync_dist=True,
            )
        pose_pred = preds.get("pose")
        if self.pose_model is not None and self.generate_val_poses:
            pose_pred = self.pose_model.generate(
                batch["audio"],
                num_frames=batch["mask"].shape[1],
                style=batch["style"],
                phones=batch.get("phones"),
            )
        self.val_metrics.update(
            batch["clip"],
            batch["mask"],
            mesh_pred=preds.get("offsets"),
            mesh_target=batch["offsets"] if "offsets" in preds else None,
            pose_pred=pose_pred,
            pose_target=batch["pose"] if pose_pred is not None else None,
        )

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics.update_called:
            for name, value in self.val_metrics.compute().items():
                self.log(f"val/{name}", value, prog_bar=name in ("lve_mm", "mouth_corr"))
        self.val_metrics.reset()

    # ------------------------------------------------------------------ export

    def export(
        self,
        directory: str | Path,
        *,
        fps: float,
        styles: Sequence[str],
        data: Mapping[str, Any] | None = None,
        pose_postprocess: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Path:
        """Write the inference folder (:func:`audio2lmk.inference.export_audio2lmk`)."""
        from audio2lmk.inference import export_audio2lmk

        return export_audio2lmk(
            directory,
            mesh_model=self.mesh_model,
            pose_model=self.pose_model,
            fps=fps,
            styles=styles,
            data=data,
            pose_postprocess=pose_postprocess,
            metrics=metrics,
        )

    def heads(self) -> dict[str, nn.Module]:
        """The configured models by name."""
        return {
            name: model
            for name, model in (("audio2mesh", self.mesh_model), ("audio2pose", self.pose_model))
            if model is not None
        }
