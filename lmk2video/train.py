"""``python -m lmk2video.train experiment=NAME [key=value ...]`` (``-m`` sweeps; docs/lmk2video-training.md)

Trains lmk2video stage 1 or 2 (:mod:`lmk2video.module`), or distils a model folder ``teacher=DIR`` into a
few-step student (``stage=distill``, :mod:`lmk2video.distillation`), on a corpus prepared by
``common.preprocess`` (:mod:`lmk2video.data`), with the trainer, loggers and callbacks of ``conf/common``. Options:
``conf/lmk2video/train.yaml``. At the end, ``export_dir=DIR`` writes the model folder that
``python -m lmk2video.generate model=DIR`` loads (rank zero only). Returns ``optimized_metric`` for sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.atomic import check_output_folder
from common.config import CONF_DIR, seed_everything
from common.errors import UserError, exit_on_user_error

log = logging.getLogger("lmk2video.train")


def _resolve(work_dir: Path, value: str | None) -> Path | None:
    return None if value is None else work_dir / Path(str(value)).expanduser()


def build(cfg: DictConfig) -> tuple[object, object]:
    """The module and data module a composed ``train`` config describes."""
    from lmk2video.building import load_or_build
    from lmk2video.data import LandmarkVideoDataModule
    from lmk2video.distillation import STAGE, DistillationModule
    from lmk2video.module import LandmarkVideoModule
    from lmk2video.pipeline import LandmarkVideoPipeline

    work_dir = Path(cfg.paths.work_dir)
    teacher = _resolve(work_dir, cfg.get("teacher"))
    distilling = cfg.stage == STAGE
    if distilling != (teacher is not None):
        raise UserError(
            f"stage={STAGE} distils the model folder teacher=DIR (e.g. experiment=tiny_distill teacher=DIR)"
            if distilling
            else f"teacher={teacher} is for stage={STAGE} (a distillation experiment); this run has stage={cfg.stage}"
        )
    with torch.no_grad():
        if distilling:
            pipe = LandmarkVideoPipeline.from_pretrained(teacher)
        else:
            pipe = load_or_build(cfg.model, cfg.init_from, work_dir)
    validation = OmegaConf.to_container(cfg.val, resolve=True)
    if validation.get("face_model") is not None:
        validation["face_model"] = str(_resolve(work_dir, validation["face_model"]))
    data = OmegaConf.to_container(cfg.data, resolve=True)
    # The crop the model is trained with travels in its folder (generation frames references with it);
    # data.framing null: the model's own (the choose_framing defaults for a new model).
    if data.get("framing") is None:
        data["framing"] = pipe.framing_options
    pipe.set_framing(data["framing"], "data.framing")
    if distilling:
        module_class, extra = (
            DistillationModule,
            {"distill": OmegaConf.to_container(cfg.distill, resolve=True)},
        )
    else:
        module_class, extra = LandmarkVideoModule, {"stage": cfg.stage}
    module = module_class(
        pipe,
        **extra,
        optimizer=instantiate(cfg.optimizer),
        warmup_steps=int(cfg.warmup_steps),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        ema_decay=cfg.ema_decay,
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
        validation=validation,
        seed=int(cfg.seed),
        media_dir=Path(cfg.paths.output_dir) / "media",
    )
    datamodule = LandmarkVideoDataModule(
        **data,
        height=pipe.config.height,
        width=pipe.config.width,
        landmark_style=pipe.config.landmark_style,
        seed=int(cfg.seed),
        work_dir=str(work_dir),
    )
    return module, datamodule


def run(cfg: DictConfig) -> float | None:
    """Train (and export) for a composed ``train`` config; returns the metric a sweeper optimises."""
    from common.training import fit, metric_for_sweep

    work_dir = Path(cfg.paths.work_dir)
    export_dir = _resolve(work_dir, cfg.export_dir)
    if export_dir is not None:  # fail before training, not after
        check_output_folder(export_dir, bool(cfg.overwrite))
    if cfg.ckpt_path is not None and not _resolve(work_dir, cfg.ckpt_path).is_file():
        raise UserError(
            f"ckpt_path={_resolve(work_dir, cfg.ckpt_path)} does not exist; pass a Lightning .ckpt"
        )
    seed_everything(cfg.seed)
    module, datamodule = build(cfg)
    if cfg.ckpt_path is not None:
        cfg = cfg.copy()
        cfg.ckpt_path = str(_resolve(work_dir, cfg.ckpt_path))
    trainer, metrics = fit(cfg, module, datamodule)
    if export_dir is not None:
        module.export_from_all_ranks(trainer, export_dir, overwrite=bool(cfg.overwrite))
    log.info("metrics: %s", ", ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items())))
    return metric_for_sweep(metrics, cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    from common.logs import quiet_libraries

    quiet_libraries()
    return run(cfg)


if __name__ == "__main__":
    main()
