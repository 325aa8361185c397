"""The landmark sequence file: the versioned ``.npz`` every stage reads and writes.

Schema version 1 (keys are a contract; see README "Landmark file format"):

==================  ===================  ========  ==================================================
key                 shape                dtype     meaning
==================  ===================  ========  ==================================================
``version``         ()                   int       schema version, currently 1
``mesh``            (T, 468, 3)          float32   pose-free metric face mesh, cm (``common.geometry``)
``pose``            (T, 6)               float32   absolute head pose in the camera of ``image_size``:
                                                   XYZ Euler degrees + translation cm
``fps``             ()                   float     frames per second, > 0
``image_size``      (2,)                 int       (H, W) of the frames the pose refers to
``landmarks2d``     (T, 478, 2)          float32   optional: detected pixel landmarks (with iris)
``blendshapes``     (T, 52)              float32   optional: MediaPipe blendshape scores
``face_found``      (T,)                 bool      optional: False where the frame was interpolated
``reference_mesh``  (468, 3)             float32   optional: mesh of the reference face
``reference_pose``  (6,)                 float32   optional: pose of the reference face
``meta``            ()                   str       optional: JSON provenance (source, tool, history)
==================  ===================  ========  ==================================================

Files are written atomically and contain no pickled objects.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common import __version__
from common.atomic import atomic_output
from common.errors import UserError
from common.geometry import NUM_VERTICES, project
from common.limits import MAX_FPS, MAX_IMAGE_SIDE

SCHEMA_VERSION = 1
NUM_LANDMARKS = 478
NUM_BLENDSHAPES = 52
REQUIRED_KEYS = ("mesh", "pose", "fps", "image_size")
OPTIONAL_KEYS = ("landmarks2d", "blendshapes", "face_found", "reference_mesh", "reference_pose", "meta")


@dataclass
class LandmarkSequence:
    """A landmark sequence in memory. Arrays follow the schema in this module's docstring."""

    mesh: np.ndarray
    pose: np.ndarray
    fps: float
    image_size: tuple[int, int]
    landmarks2d: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    face_found: np.ndarray | None = None
    reference_mesh: np.ndarray | None = None
    reference_pose: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mesh = np.asarray(self.mesh, dtype=np.float32)
        self.pose = np.asarray(self.pose, dtype=np.float32)
        self.fps = float(self.fps)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        for name, dtype in (
            ("landmarks2d", np.float32),
            ("blendshapes", np.float32),
            ("face_found", bool),
            ("reference_mesh", np.float32),
            ("reference_pose", np.float32),
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=dtype))

    # ---- properties ------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.mesh.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def __len__(self) -> int:
        return self.num_frames

    # ---- geometry --------------------------------------------------------------------------
    def project(self, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Pixel landmarks (T, 468, 2) of the mesh under the pose, in ``image_size`` (default: the file's)."""
        return project(self.mesh, self.pose, image_size or self.image_size).astype(np.float32)

    # ---- editing helpers -------------------------------------------------------------------
    def select(self, index: np.ndarray | slice) -> LandmarkSequence:
        """A new sequence with the per-frame arrays indexed by ``index`` (slice or integer array)."""
        per_frame = {
            k: (v[index] if v is not None else None)
            for k, v in (
                ("mesh", self.mesh),
                ("pose", self.pose),
                ("landmarks2d", self.landmarks2d),
                ("blendshapes", self.blendshapes),
                ("face_found", self.face_found),
            )
        }
        return replace(self, **per_frame, meta=json.loads(json.dumps(self.meta)))

    def with_history(self, step: str) -> LandmarkSequence:
        """Record an editing step in ``meta['history']`` (returned copy)."""
        meta = json.loads(json.dumps(self.meta))
        meta.setdefault("history", []).append(step)
        return replace(self, meta=meta)

    # ---- validation and I/O ----------------------------------------------------------------
    def validate(self, source: str = "landmark sequence") -> LandmarkSequence:
        """Check shapes, dtypes, finiteness and ranges; raise :class:`UserError` naming the key."""
        t = self.mesh.shape[0] if self.mesh.ndim == 3 else None

        def bad(key: str, problem: str, fix: str) -> UserError:
            return UserError(f"{source}: key '{key}' {problem}; {fix}")

        if self.mesh.ndim != 3 or self.mesh.shape[1:] != (NUM_VERTICES, 3):
            raise bad(
                "mesh", f"has shape {self.mesh.shape}, expected (T, {NUM_VERTICES}, 3)", "re-extract the file"
            )
        if t == 0:
            raise bad("mesh", "has no frames", "extract from an input with at least one face frame")
        if self.pose.shape != (t, 6):
            raise bad(
                "pose", f"has shape {self.pose.shape}, expected ({t}, 6)", "give one 6-D pose per mesh frame"
            )
        if not np.isfinite(self.fps) or not 0 < self.fps <= MAX_FPS:
            raise bad(
                "fps",
                f"is {self.fps:g}, outside (0, {MAX_FPS:g}]",
                "set the frame rate, e.g. with `common.lmk edit --fps 30`",
            )
        if min(self.image_size) <= 0 or max(self.image_size) > MAX_IMAGE_SIDE:
            raise bad(
                "image_size",
                f"is {self.image_size}, outside 1..{MAX_IMAGE_SIDE} pixels",
                "store the (H, W) of the source frames",
            )
        shapes = {
            "landmarks2d": (t, NUM_LANDMARKS, 2),
            "blendshapes": (t, NUM_BLENDSHAPES),
            "face_found": (t,),
            "reference_mesh": (NUM_VERTICES, 3),
            "reference_pose": (6,),
        }
        for key, shape in shapes.items():
            value = getattr(self, key)
            if value is not None and value.shape != shape:
                raise bad(key, f"has shape {value.shape}, expected {shape}", "fix or remove the key")
        for key in ("mesh", "pose", "landmarks2d", "blendshapes", "reference_mesh", "reference_pose"):
            value = getattr(self, key)
            if value is not None and not np.isfinite(value).all():
                n = (
                    int((~np.isfinite(value)).reshape(value.shape[0], -1).any(axis=-1).sum())
                    if value.ndim > 1
                    else 1
                )
                raise bad(key, f"contains NaN or inf ({n} rows)", "re-extract, or repair those frames")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "version": np.array(SCHEMA_VERSION, dtype=np.int64),
            "mesh": self.mesh,
            "pose": self.pose,
            "fps": np.array(self.fps, dtype=np.float64),
            "image_size": np.array(self.image_size, dtype=np.int64),
        }
        for key in ("landmarks2d", "blendshapes", "face_found", "reference_mesh", "reference_pose"):
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        meta = dict(self.meta)
        meta.setdefault("tool", f"talking-portrait {__version__}")
        meta.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        arrays["meta"] = np.array(json.dumps(meta))
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Validate and write ``path`` atomically (temporary file + rename)."""
        path = check_landmark_name(path)
        self.validate(str(path))
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.to_arrays())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LandmarkSequence:
        """Read and validate a landmark file; every problem is a :class:`UserError` naming file and key."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such landmark file; check the path")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise UserError(
                f"{path}: not a readable landmark .npz file ({err}); re-create it with `common.lmk`"
            ) from None
        return cls.from_arrays(arrays, str(path))

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], source: str = "landmark sequence"
    ) -> LandmarkSequence:
        missing = [k for k in REQUIRED_KEYS if k not in arrays]
        if missing:
            raise UserError(
                f"{source}: missing required key(s) {', '.join(missing)}; a landmark file needs "
                f"{', '.join(REQUIRED_KEYS)} (create one with `python -m common.lmk extract`)"
            )
        raw = arrays.get("version")
        whole = raw is not None and raw.shape == () and np.issubdtype(raw.dtype, np.integer)
        if not whole or not 1 <= int(raw) <= SCHEMA_VERSION:
            shown = None if raw is None else int(raw) if whole else repr(raw.tolist())
            raise UserError(
                f"{source}: key 'version' is {shown}, this tool reads schema version(s) 1..{SCHEMA_VERSION}; "
                "upgrade talking-portrait or re-extract the file"
            )
        for key in ("mesh", "pose", "landmarks2d", "blendshapes", "reference_mesh", "reference_pose"):
            if key in arrays and not np.issubdtype(arrays[key].dtype, np.floating):
                raise UserError(f"{source}: key '{key}' has dtype {arrays[key].dtype}, expected float32")
        fps = arrays["fps"]
        size = arrays["image_size"]
        if fps.shape != () or not np.issubdtype(fps.dtype, np.number):
            raise UserError(f"{source}: key 'fps' must be a number, got shape {fps.shape} dtype {fps.dtype}")
        if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer):
            raise UserError(
                f"{source}: key 'image_size' must be two whole numbers (H, W), got {size.tolist()!r}; "
                "store the pixel size of the source frames"
            )
        meta: dict[str, Any] = {}
        if "meta" in arrays:
            text = arrays["meta"]
            try:
                if text.shape != () or text.dtype.kind != "U":
                    raise ValueError
                meta = json.loads(str(text))
                if not isinstance(meta, dict):
                    raise ValueError
            except ValueError:
                raise UserError(
                    f"{source}: key 'meta' must be JSON text of an object ({{...}}); remove or fix it"
                ) from None
        kwargs = {k: arrays[k] for k in OPTIONAL_KEYS if k in arrays and k != "meta"}
        seq = cls(
            mesh=arrays["mesh"],
            pose=arrays["pose"],
            fps=float(fps),
            image_size=tuple(size.tolist()),
            meta=meta,
            **kwargs,
        )
        return seq.validate(source)


def check_landmark_name(path: str | os.PathLike, given: str | None = None) -> Path:
    """An output landmark file's name must end in ``.npz`` (``given``: the option as the user wrote it)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(
            f"{given or path}: landmark files end in .npz; choose an output name like {path.stem}.npz"
        )
    return path


def load(path: str | os.PathLike) -> LandmarkSequence:
    """Shorthand for :meth:`LandmarkSequence.load`."""
    return LandmarkSequence.load(path)


def save(seq: LandmarkSequence, path: str | os.PathLike) -> Path:
    """Shorthand for :meth:`LandmarkSequence.save`."""
    return seq.save(path)
