"""``python -m audio2lmk.train experiment=NAME [key=value ...]`` (Hydra; ``-m`` sweeps).

Composes ``conf/audio2lmk/train.yaml`` (groups ``model``, ``data`` and the shared ``trainer``,
``logger``, ``callbacks``, ``paths``, ``hydra``; experiments in ``experiments/audio2lmk/experiment``),
seeds everything, builds the data module and the Lightning module from the config, fits
(``ckpt_path=...`` resumes), writes the inference folder when ``export_dir`` is set (rank zero),
and returns ``optimized_metric`` for sweepers. See ``docs/audio2lmk-training.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR, seed_everything
from common.errors import UserError, exit_on_user_error
from common.training import fit, metric_for_sweep

log = logging.getLogger("audio2lmk.train")


def _resolve_path(value: str | None, cfg: DictConfig) -> Path | None:
    """A user path: absolute as given, relative to the folder the command was started from."""
    if value is None:
        return None
    return Path(cfg.paths.work_dir) / Path(str(value)).expanduser()


def train(cfg: DictConfig) -> tuple[dict[str, float], Path | None]:
    """Run one training job from a composed config; returns the final metrics and the export folder."""
    threads = cfg.get("num_threads")
    if threads is not None:
        if int(threads) < 1:
            raise UserError(f"num_threads={threads}: give a whole number >= 1, or null for torch's default")
        torch.set_num_threads(int(threads))
    seed_everything(cfg.get("seed"))
    export_dir = _resolve_path(cfg.get("export_dir"), cfg)
    if export_dir is not None:  # fail before training, not after
        from common.atomic import check_output_folder

        check_output_folder(export_dir, bool(cfg.get("overwrite")))
    ckpt = _resolve_path(cfg.get("ckpt_path"), cfg)
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"ckpt_path={ckpt}: no such checkpoint; give a .ckpt file of an earlier run")
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    for model in (module.mesh_model, module.pose_model):
        if model is not None and float(model.config.fps) != datamodule.fps:
            raise UserError(
                f"the model runs at {model.config.fps} fps but data.fps={datamodule.fps}; make them equal"
            )
    run_cfg = cfg.copy()
    OmegaConf.set_struct(run_cfg, False)
    run_cfg.ckpt_path = str(ckpt) if ckpt is not None else None
    trainer, metrics = fit(run_cfg, module, datamodule)
    if export_dir is not None and trainer.is_global_zero:
        module.export(
            export_dir,
            fps=datamodule.fps,
            styles=datamodule.train_speakers,
            data=datamodule.describe(),
            pose_postprocess=OmegaConf.to_container(cfg.pose_postprocess, resolve=True),
            metrics={k: v for k, v in metrics.items() if k.startswith("val/")},
        )
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("val/"))
    log.info(
        "finished: %s%s", shown or "no validation metrics", f"; model in {export_dir}" if export_dir else ""
    )
    return metrics, export_dir


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "audio2lmk"), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metric_for_sweep(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
