"""``python -m audio2lmk.infer model=DIR audio=FILE reference=IMAGE_OR_NPZ out=OUT.npz [pose=model|still|FILE] [style=K] [seed=N]``

Writes a landmark file (``common.lmkfile``) with one frame per ``1 / fps`` of audio: the
reference face's mesh plus the predicted offsets, under the predicted head pose starting at the
reference's pose (``pose=still``: the reference pose in every frame; ``pose=FILE``: a ``.npy``
template or a landmark ``.npz``). ``style`` picks the pose model's style (an id or a training
speaker's name); by default it is drawn from ``seed`` (default 0, so repeated runs give the same
file; ``seed=null`` draws it at random). Relative paths are taken from the launch folder.

``python -m common.lmk render OUT.npz -o OUT.mp4 --audio FILE`` shows it. Bad input (unreadable,
empty, silent or too short audio, no face in the reference image, a bad model folder, an
unwritable output) exits with status 2 and one ``error:`` line, and writes nothing; an existing output is
kept unless ``overwrite=true``. Hydra entry
point; options in ``conf/audio2lmk/infer.yaml`` (see :func:`audio2lmk.inference.audio_to_landmarks`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from common.config import CONF_DIR
from common.errors import UserError, exit_on_user_error

log = logging.getLogger("audio2lmk.infer")

USAGE = "python -m audio2lmk.infer model=DIR audio=FILE reference=IMAGE_OR_NPZ out=OUT.npz"


def _path(cfg: DictConfig, key: str) -> Path:
    value = cfg.get(key)
    if value is None or str(value).strip() == "":
        raise UserError(f"{key}=... is required: {USAGE}")
    return Path(cfg.paths.work_dir) / Path(str(value)).expanduser()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "audio2lmk"), config_name="infer")
@exit_on_user_error
def main(cfg: DictConfig) -> str:
    from audio2lmk.inference import audio_to_landmarks, check_model_folder, load_audio2lmk
    from common import limits
    from common.atomic import check_output
    from common.audio import load_audio
    from common.detect import load_reference
    from common.devices import resolve_device
    from common.lmkfile import check_landmark_name

    model_dir, audio_path = _path(cfg, "model"), _path(cfg, "audio")
    reference_path, out = _path(cfg, "reference"), _path(cfg, "out")
    # Options, outputs and inputs first; the models and the face detector only then.
    limits.seed(cfg.seed)
    device = resolve_device(str(cfg.device))
    check_landmark_name(out, f"out={cfg.out}")
    check_output(out, cfg.overwrite)
    pose = str(cfg.pose)
    if pose not in ("model", "still"):
        pose = str(_path(cfg, "pose"))
    fps = check_model_folder(model_dir)
    samples = load_audio(audio_path, min_duration=1.0 / fps)
    # A landmark-file reference is read now; an image needs the face detector, after the model.
    reference = load_reference(reference_path) if reference_path.suffix.lower() == ".npz" else None
    loaded = load_audio2lmk(model_dir, device=device)
    if reference is None:
        reference = load_reference(reference_path, model_path=cfg.face_model)
    seq = audio_to_landmarks(loaded, samples, reference, pose=pose, style=cfg.style, seed=cfg.seed)
    seq.meta["source"] = str(audio_path)
    seq.meta["reference"] = str(reference_path)
    seq.save(out)
    print(f"wrote {out}: {seq.num_frames} frames at {seq.fps:g} fps (pose={pose}, style={seq.meta['style']})")
    return str(out)


if __name__ == "__main__":
    main()
