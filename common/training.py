"""The Lightning run shared by ``audio2lmk.train`` and ``lmk2video.train``.

Builds loggers, callbacks and the trainer from the config (``logger``, ``callbacks``, ``trainer``
groups of ``conf/common``), fits with optional resuming (``ckpt_path``), always closes wandb, and
returns the metrics the sweep optimises.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    return [instantiate(item) for item in cfg.values() if item is not None and "_target_" in item]


def build_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """A ``pl.Trainer`` from ``cfg.trainer`` with the configured loggers and callbacks."""
    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _instantiate_group(cfg.get("callbacks"))
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **kwargs)


def fit(
    cfg: DictConfig, module: pl.LightningModule, datamodule: pl.LightningDataModule
) -> tuple[pl.Trainer, dict[str, float]]:
    """Fit ``module`` on ``datamodule`` (resuming from ``cfg.ckpt_path`` when set).

    Returns the trainer (``trainer.is_global_zero`` decides who exports) and the final metrics.
    """
    trainer = build_trainer(cfg)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
        }
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
            import wandb

            wandb.finish()
    return trainer, metrics


def metric_for_sweep(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a Hydra sweeper optimises (``optimized_metric`` in the config), or None."""
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric %s was not logged; available: %s", name, ", ".join(sorted(metrics)))
        return None
    return metrics[name]
