"""``python -m lmk2video.evaluate models=[DIR,...] [index=DIR] [clip=ID] [start=0] [frames=16] [out=FILE.json]``

Does generated video follow its landmarks? Each model renders a held-out clip excerpt and MediaPipe on its
frames is compared with the conditioning landmarks, beside the real frames and the reference frame repeated
(metric and references: :mod:`lmk2video.following`). Prints the scores as JSON (and writes them to ``out``).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from common.atomic import atomic_output, check_output
from common.config import CONF_DIR
from common.errors import UserError, exit_on_user_error


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from common.index import load_index, split_by_speaker
    from common.logs import quiet_libraries
    from lmk2video.data import load_excerpt
    from lmk2video.following import evaluate

    quiet_libraries()
    work = Path(cfg.paths.work_dir)
    if not cfg.models:
        raise UserError("models=[DIR,...] is required: the model folders to evaluate")
    out = None if cfg.out is None else work / Path(str(cfg.out)).expanduser()
    if out is not None:
        check_output(out, cfg.overwrite)
    clips = load_index(work / Path(str(cfg.index)).expanduser())
    _, val = split_by_speaker(
        clips, list(cfg.val_speakers) if cfg.val_speakers else None, seed=cfg.split_seed
    )
    chosen = [c for c in sorted(val, key=lambda c: c.id) if cfg.clip is None or c.id == cfg.clip]
    if not chosen:
        raise UserError(
            f"clip={cfg.clip} is not a held-out clip; choose one of {', '.join(c.id for c in val)}"
        )
    excerpt = load_excerpt(chosen[0], int(cfg.start), int(cfg.frames))
    models = [str(work / Path(str(m)).expanduser()) for m in cfg.models]
    face_model = None if cfg.face_model is None else str(work / Path(str(cfg.face_model)).expanduser())
    video_dir = None if cfg.video_dir is None else work / Path(str(cfg.video_dir))
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    results = evaluate(models, excerpt, face_model, cfg.steps, cfg.cfg, cfg.seed, cfg.device, video_dir)
    report = {
        "clip": chosen[0].id,
        "start": int(cfg.start),
        "frames": excerpt.sequence.num_frames,
        "scores": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if out is not None:
        with atomic_output(out) as tmp:
            tmp.write_text(text)


if __name__ == "__main__":
    main()
