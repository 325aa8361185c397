"""audio2lmk inference: an exported model folder + speech + a reference face -> a landmark sequence.

Model folder (written by ``python -m audio2lmk.train ... export_dir=DIR`` through
:func:`export_audio2lmk`)::

    DIR/audio2lmk.json     format, version, fps, sample_rate, styles (training speakers, in
                           style-id order), pose_postprocess, data (index, split), metrics
    DIR/audio2mesh/        Audio2MeshModel.save_pretrained (absent for a pose-only model)
    DIR/audio2pose/        Audio2PoseModel.save_pretrained (absent for a mesh-only model)

:func:`audio_to_landmarks` builds the output sequence:

* frames: ``num_frames_for(len(audio), fps)`` (one per ``1 / fps`` of audio, rounded up);
* mesh: the reference's mesh (its first frame) plus the predicted offsets (the reference itself
  for a pose-only model);
* pose: ``"model"``: the predicted poses (relative to the first frame) composed onto the
  reference pose (``common.geometry.relative_to_absolute``), so frame 0 has the reference's pose,
  then the folder's ``pose_postprocess`` (rotation scale, smoothing window); ``"still"``: the
  reference pose in every frame; a path: a ``.npy`` template or a landmark ``.npz``
  (``common.edit.load_pose_source`` + ``set_pose``);
* ``image_size`` = the reference's, ``reference_mesh`` / ``reference_pose`` set, and the inputs
  recorded in ``meta``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audio2lmk.models import Audio2MeshModel, Audio2PoseModel
from common.atomic import atomic_folder
from common.audio import SAMPLE_RATE, load_audio, num_frames_for
from common.edit import load_pose_source, set_pose, smooth
from common.errors import UserError
from common.geometry import absolute_to_relative, relative_to_absolute
from common.lmkfile import LandmarkSequence

log = logging.getLogger(__name__)

INFO_NAME = "audio2lmk.json"
FORMAT = "audio2lmk"
FORMAT_VERSION = 1
MESH_DIR, POSE_DIR = "audio2mesh", "audio2pose"
DEFAULT_POSTPROCESS = {"rotation_scale": 1.0, "smooth": 1}


@dataclass
class LoadedAudio2Lmk:
    """A loaded model folder: the networks (either may be None) and ``audio2lmk.json``."""

    mesh_model: Audio2MeshModel | None
    pose_model: Audio2PoseModel | None
    info: dict[str, Any]
    path: Path | None = None
    styles: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def pose_postprocess(self) -> dict[str, Any]:
        return {**DEFAULT_POSTPROCESS, **self.info.get("pose_postprocess", {})}

    def to(self, device: str | torch.device) -> LoadedAudio2Lmk:
        for model in (self.mesh_model, self.pose_model):
            if model is not None:
                model.to(device)
        return self


# --------------------------------------------------------------------------------------------
# Export and loading
# --------------------------------------------------------------------------------------------


def export_audio2lmk(
    directory: str | os.PathLike,
    *,
    mesh_model: Audio2MeshModel | None,
    pose_model: Audio2PoseModel | None,
    fps: float,
    styles: Sequence[str],
    data: Mapping[str, Any] | None = None,
    pose_postprocess: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write a model folder (see the module docstring); replaces an existing folder atomically.

    The folder is first written beside ``directory`` and renamed into place, so a failed export
    leaves any previous folder intact and no half-written one.
    """
    if mesh_model is None and pose_model is None:
        raise ValueError("export needs a mesh model, a pose model or both")
    for model in (mesh_model, pose_model):
        if model is not None and float(model.config.fps) != float(fps):
            raise ValueError(f"{type(model).__name__} runs at {model.config.fps} fps, the export says {fps}")
    if pose_model is not None and len(styles) > pose_model.config.num_styles:
        raise ValueError(f"{len(styles)} styles but the pose model has {pose_model.config.num_styles}")
    target = Path(directory).expanduser().resolve()
    postprocess = {**DEFAULT_POSTPROCESS, **(pose_postprocess or {})}
    _check_postprocess(postprocess, str(target))
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "fps": float(fps),
        "sample_rate": SAMPLE_RATE,
        "mesh_model": MESH_DIR if mesh_model is not None else None,
        "pose_model": POSE_DIR if pose_model is not None else None,
        "styles": list(styles),
        "pose_postprocess": postprocess,
        "data": dict(data or {}),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    with atomic_folder(target, overwrite=True) as tmp:
        if mesh_model is not None:
            mesh_model.save_pretrained(tmp / MESH_DIR)
        if pose_model is not None:
            pose_model.save_pretrained(tmp / POSE_DIR)
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=1))
    log.info("exported the audio2lmk model to %s", target)
    return target


def _check_postprocess(post: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(post) - set(DEFAULT_POSTPROCESS))
    scale, k = post.get("rotation_scale"), post.get("smooth")
    if (
        unknown
        or not isinstance(scale, int | float)
        or not np.isfinite(scale)
        or isinstance(k, bool)
        or not isinstance(k, int)
        or k < 1
    ):
        raise UserError(
            f"{source}: pose_postprocess {dict(post)} is invalid; expected rotation_scale (a number) and "
            "smooth (a whole number of frames >= 1) only"
        )


_HINT = "pass a folder written by `python -m audio2lmk.train ... export_dir=DIR`"


def _read_info(path: Path) -> dict[str, Any]:
    """The folder's ``audio2lmk.json``, checked (no model is loaded)."""
    if not path.is_dir():
        raise UserError(f"model folder {path} does not exist; {_HINT}")
    info_path = path / INFO_NAME
    if not info_path.is_file():
        raise UserError(f"{path} is not an audio2lmk model folder (no {INFO_NAME}); {_HINT}")
    try:
        info = json.loads(info_path.read_text())
        fmt, version, fps = info["format"], info["version"], float(info["fps"])
        [str(s) for s in info["styles"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{info_path} is not a valid {INFO_NAME} ({err}); {_HINT}") from None
    if fmt != FORMAT or version != FORMAT_VERSION:
        raise UserError(
            f"{info_path}: format {fmt!r} version {version}, expected {FORMAT!r} version {FORMAT_VERSION}; {_HINT}"
        )
    if not 0 < fps <= 240:
        raise UserError(f"{info_path}: fps {fps:g} is outside (0, 240]; {_HINT}")
    _check_postprocess({**DEFAULT_POSTPROCESS, **info.get("pose_postprocess", {})}, str(info_path))
    return info


def check_model_folder(model_dir: str | os.PathLike) -> float:
    """Check an audio2lmk model folder's description without loading a model; returns its frame rate."""
    return float(_read_info(Path(model_dir).expanduser())["fps"])


def load_audio2lmk(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedAudio2Lmk:
    """Load a model folder written by :func:`export_audio2lmk` (strict: every weight must fit).

    Raises:
        UserError: the folder is missing, is not an audio2lmk model folder, or its parts do not
            match (missing sub-folder, weights that do not fit, fps or style count mismatch).
    """
    path = Path(model_dir).expanduser()
    info = _read_info(path)
    info_path, fps, styles = path / INFO_NAME, float(info["fps"]), [str(s) for s in info["styles"]]
    models: dict[str, Any] = {}
    for key, cls in (("mesh_model", Audio2MeshModel), ("pose_model", Audio2PoseModel)):
        sub = info.get(key)
        if sub is None:
            models[key] = None
            continue
        if not (path / sub).is_dir():
            raise UserError(f"{path}: {INFO_NAME} names the sub-folder {sub}/ but it is missing; {_HINT}")
        model = cls.from_pretrained(path / sub)
        if float(model.config.fps) != fps:
            raise UserError(
                f"{path / sub}: the model runs at {model.config.fps} fps but {INFO_NAME} says {fps}; "
                "re-export the model"
            )
        models[key] = model.to(device).eval()
    if models["mesh_model"] is None and models["pose_model"] is None:
        raise UserError(f"{info_path} lists neither a mesh nor a pose model; {_HINT}")
    pose_model = models["pose_model"]
    if pose_model is not None and len(styles) > pose_model.config.num_styles:
        raise UserError(
            f"{info_path}: {len(styles)} styles but the pose model has {pose_model.config.num_styles}; "
            "re-export the model"
        )
    return LoadedAudio2Lmk(models["mesh_model"], pose_model, info, path, styles)


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def resolve_style(
    loaded: LoadedAudio2Lmk, style: int | str | None, generator: torch.Generator | None
) -> int | None:
    """A style id: ``style`` as an id or a training speaker's name; None draws one from ``generator``.

    Drawn styles are limited to the trained ones (the speakers in ``audio2lmk.json``); a model
    exported without a speaker list draws from all of its ``num_styles``.
    """
    if loaded.pose_model is None:
        return None
    count = len(loaded.styles) or loaded.pose_model.config.num_styles
    names = ", ".join(f"{i}={s}" for i, s in enumerate(loaded.styles)) or f"0..{count - 1}"
    if style is None:
        return int(torch.randint(count, (1,), generator=generator).item())
    if isinstance(style, str) and not style.lstrip("-").isdigit():
        if style not in loaded.styles:
            raise UserError(f"style={style!r} is not a speaker of this model; choose one of {names}")
        return loaded.styles.index(style)
    try:
        sid = int(style)
    except (TypeError, ValueError):
        raise UserError(f"style={style!r} must be a style id or a speaker name ({names})") from None
    if not 0 <= sid < count:
        raise UserError(f"style={sid} is out of range; choose one of {names}")
    return sid


def _postprocess_pose(relative: np.ndarray, post: Mapping[str, Any], fps: float) -> np.ndarray:
    """Scale the rotations of relative poses (T, 6) and smooth them over ``smooth`` frames."""
    from scipy.spatial.transform import Rotation

    out = np.asarray(relative, dtype=np.float64).copy()
    scale, k = float(post["rotation_scale"]), int(post["smooth"])
    if scale != 1.0:
        rotvec = Rotation.from_euler("xyz", out[:, :3], degrees=True).as_rotvec() * scale
        out[:, :3] = Rotation.from_rotvec(rotvec).as_euler("xyz", degrees=True)
    if k > 1:
        carrier = LandmarkSequence(
            mesh=np.zeros((len(out), 468, 3), np.float32), pose=out, fps=fps, image_size=(1, 1)
        )
        out = smooth(carrier, k).pose.astype(np.float64)
    return out


@torch.no_grad()
def audio_to_landmarks(
    model: str | os.PathLike | LoadedAudio2Lmk,
    audio_path: str | os.PathLike | np.ndarray,
    reference: LandmarkSequence,
    pose: str | os.PathLike = "model",
    style: int | str | None = None,
    seed: int | None = None,
) -> LandmarkSequence:
    """Speech -> landmark sequence on the reference face (see the module docstring).

    Args:
        model: a model folder or a :func:`load_audio2lmk` result.
        audio_path: an audio file (any format ``common.audio.load_audio`` reads), or a 16 kHz mono
            float waveform ``(N,)``.
        reference: the reference face; its first frame's mesh and pose are used.
        pose: ``"model"``, ``"still"``, or a pose file (``.npy`` template / landmark ``.npz``).
        style: the pose model's style (id or training speaker name); None: drawn from ``seed``.
        seed: makes the style draw repeatable (None: unseeded).

    Returns:
        A validated :class:`LandmarkSequence` at the model's fps.
    """
    loaded = model if isinstance(model, LoadedAudio2Lmk) else load_audio2lmk(model)
    fps = loaded.fps
    if isinstance(audio_path, np.ndarray):
        samples, audio_name = np.asarray(audio_path, dtype=np.float32).reshape(-1), "array"
        if samples.size == 0:
            raise UserError("the audio array is empty; pass speech")
    else:
        samples, audio_name = load_audio(audio_path, SAMPLE_RATE, min_duration=1.0 / fps), str(audio_path)
    frames = num_frames_for(len(samples), fps)
    if frames < 1:
        raise UserError(f"{audio_name}: the audio covers no video frame at {fps:g} fps; pass longer audio")
    if reference.num_frames < 1:
        raise UserError("the reference has no frames; extract it from an image or a video with a face")
    ref_mesh = reference.mesh[0].astype(np.float32)
    ref_pose = reference.pose[0].astype(np.float64)
    pose_mode = str(pose)
    if pose_mode == "model" and loaded.pose_model is None:
        raise UserError(
            f"{loaded.path or 'the model'} has no pose model; use pose=still or pose=FILE (a .npy "
            "template or a landmark .npz)"
        )
    pose_source = None if pose_mode in ("model", "still") else load_pose_source(pose)

    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    style_id = resolve_style(loaded, style, generator) if pose_mode == "model" else None
    models = [m for m in (loaded.mesh_model, loaded.pose_model) if m is not None]
    device = models[0].device
    wave = torch.from_numpy(samples)[None].to(device)

    if loaded.mesh_model is not None:
        offsets = loaded.mesh_model.eval()(wave, frames)[0].float().cpu().numpy()
        mesh = ref_mesh[None] + offsets
    else:
        mesh = np.repeat(ref_mesh[None], frames, axis=0)

    if pose_mode == "model":
        relative = loaded.pose_model.generate(wave, num_frames=frames, style=style_id)[0]
        relative = _postprocess_pose(relative.double().cpu().numpy(), loaded.pose_postprocess, fps)
        # Re-anchor on the first predicted frame (the model predicts it from a zero initial pose,
        # close to but not exactly zero), then compose onto the reference: frame 0 is its pose.
        poses = relative_to_absolute(absolute_to_relative(relative), ref_pose)
        poses[0] = ref_pose
    else:
        poses = np.repeat(ref_pose[None], frames, axis=0)

    meta = {
        "source": audio_name,
        "source_type": "audio2lmk",
        "model": str(loaded.path) if loaded.path is not None else None,
        "reference": reference.meta.get("source"),
        "pose": pose_mode,
        "style": style_id,
        "style_name": loaded.styles[style_id]
        if style_id is not None and style_id < len(loaded.styles)
        else None,
        "seed": seed,
    }
    seq = LandmarkSequence(
        mesh=mesh,
        pose=poses,
        fps=fps,
        image_size=reference.image_size,
        reference_mesh=ref_mesh,
        reference_pose=ref_pose,
        meta=meta,
    )
    if pose_source is not None:
        seq = set_pose(seq, pose_source)
    return seq.validate("audio2lmk output")
