"""``python -m lmk2video.init experiment=NAME out=DIR [overwrite=true] [model.pretrained.sd15_path=DIR ...]``

Writes the model folder (:class:`~lmk2video.pipeline.LandmarkVideoPipeline` ``save_pretrained`` layout) that
the composed ``model`` config describes: SD1.5 2-D weights, VAE, image encoder and motion modules from the
``model.pretrained`` paths when given, else random (see :mod:`lmk2video.building`). Every pretrained file is
loaded strictly; the folder is written into a temporary folder and renamed at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from common.config import CONF_DIR, seed_everything
from common.errors import UserError, exit_on_user_error

log = logging.getLogger("lmk2video.init")


def run(cfg: DictConfig) -> Path:
    """Build and write the model folder for a composed ``init`` config."""
    if cfg.out is None:
        raise UserError(
            "out=DIR is required, e.g. python -m lmk2video.init experiment=tiny_stage2 out=models/tiny"
        )
    work_dir = Path(cfg.paths.work_dir)
    out = work_dir / Path(str(cfg.out)).expanduser()
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} already exists; choose a new output folder or pass overwrite=true")
    from lmk2video.building import build_pipeline, write_model_folder

    seed_everything(cfg.seed)
    with torch.no_grad():
        pipe = build_pipeline(cfg.model, work_dir)
    write_model_folder(pipe, out, overwrite=bool(cfg.overwrite))
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider")
        if getattr(pipe, name) is not None
    }
    log.info("wrote %s (%s parameters)", out, ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="init")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from common.logs import quiet_libraries

    quiet_libraries()
    run(cfg)


if __name__ == "__main__":
    main()
