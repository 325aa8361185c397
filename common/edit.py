"""Editing landmark sequences: pure functions from a :class:`LandmarkSequence` to a new one.

Every function leaves its input untouched, returns a new sequence, and records what it did in
``meta['history']`` (``LandmarkSequence.with_history``). All work is vectorised over frames.

==================  ==========================================================================
function            what it does (and what happens to the optional keys)
==================  ==========================================================================
``smooth``          centred moving average over K frames of mesh, pose (rotations in a
                    rotation-vector space), landmarks2d and blendshapes
``scale_mouth``     scales the mouth opening by S in the pose-free mesh; drops landmarks2d and
                    blendshapes (they describe the unedited face)
``set_pose``        a still pose, a relative pose template (AniPortrait's ``pose_temp.npy``)
                    or another file's absolute pose; drops landmarks2d
``resample_fps``    a new frame rate: linear interpolation, rotations by slerp
``trim``            a frame range (``parse_trim`` reads ``"A:B"`` in seconds or ``30f`` frames)
``retarget``        a source's expression and head motion on a reference face; drops
                    landmarks2d, keeps the source's blendshapes and face_found
==================  ==========================================================================

Conventions: the pose-free mesh (``common.geometry``) is in cm with x to the subject's left,
y up and z towards the camera; a 6-D pose is XYZ Euler degrees + translation in cm; ``M(pose)``
is its 4x4 canonical -> camera transform.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.ndimage import convolve1d
from scipy.spatial.transform import Rotation, Slerp

from common.errors import UserError
from common.geometry import (
    absolute_to_relative,
    canonical_face,
    matrix_to_pose6,
    pose6_to_matrix,
    relative_to_absolute,
)
from common.lmkfile import LandmarkSequence

__all__ = [
    "PoseSource",
    "inter_ocular_distance",
    "lip_gaps",
    "load_pose_source",
    "mouth_basis",
    "mouth_opening",
    "neutral_frame",
    "parse_trim",
    "ping_pong_indices",
    "resample_fps",
    "retarget",
    "scale_mouth",
    "set_pose",
    "smooth",
    "trim",
]

# Mesh vertex indices (MediaPipe's 468-vertex face mesh).
RIGHT_EYE_CORNERS = (33, 133)  # subject's right eye: outer, inner corner
LEFT_EYE_CORNERS = (362, 263)  # subject's left eye: inner, outer corner
SUBNASALE = 2  # below the nose tip, where the upper lip's skin begins
# The lip contours without the corners (61/291 outer, 78/308 inner), in 9 columns from the
# subject's right corner to the left one; column 4 is the midline (13/14 inner, 0/17 outer).
UPPER_OUTER_LIP = (185, 40, 39, 37, 0, 267, 269, 270, 409)
UPPER_INNER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415)
LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)
LOWER_OUTER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375)
MIDLINE_COLUMN = 4
# The face oval below the ears (ear to ear through the chin): the jaw line.
JAW_LINE = (
    234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
    377, 400, 378, 379, 365, 397, 288, 361, 323, 454,
)  # fmt: skip
# Blendshape 0 of MediaPipe's 52 is "_neutral" (high when the face is at rest): not an activity.
NEUTRAL_BLENDSHAPE = 0


_ARRAY_KEYS = ("mesh", "pose", "landmarks2d", "blendshapes", "face_found", "reference_mesh", "reference_pose")


def _history(seq: LandmarkSequence, step: str, **changes) -> LandmarkSequence:
    """A new sequence: ``seq`` with ``changes`` applied, the other arrays copied, ``step`` added to the history."""
    copies = {
        k: getattr(seq, k).copy() for k in _ARRAY_KEYS if k not in changes and getattr(seq, k) is not None
    }
    return replace(seq, **copies, **changes).with_history(step)


def _fmt(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------


def _rotations(pose: np.ndarray) -> Rotation:
    return Rotation.from_euler("xyz", np.asarray(pose, dtype=np.float64)[:, :3], degrees=True)


def _pose_from(rotations: Rotation, translation: np.ndarray) -> np.ndarray:
    return np.concatenate([rotations.as_euler("xyz", degrees=True), translation], axis=1)


def _interp_pose(pose: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Poses (len(positions), 6) at fractional frame ``positions`` in [0, T-1]: slerp + linear translation."""
    pose = np.asarray(pose, dtype=np.float64)
    positions = np.clip(np.asarray(positions, dtype=np.float64), 0.0, len(pose) - 1)
    if len(pose) == 1:
        return np.repeat(pose, len(positions), axis=0)
    rot = Slerp(np.arange(len(pose)), _rotations(pose))(positions)
    return _pose_from(rot, _interp_linear(pose[:, 3:], positions))


def _interp_linear(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of per-frame ``values`` (T, ...) at fractional frame ``positions``."""
    values = np.asarray(values, dtype=np.float64)
    last = len(values) - 1
    positions = np.clip(positions, 0.0, last)
    i0 = np.minimum(np.floor(positions).astype(np.int64), last)
    i1 = np.minimum(i0 + 1, last)
    a = (positions - i0).reshape(-1, *([1] * (values.ndim - 1)))
    return values[i0] * (1.0 - a) + values[i1] * a


# --------------------------------------------------------------------------------------------
# smooth
# --------------------------------------------------------------------------------------------


def smoothing_kernel(k: int) -> np.ndarray:
    """Weights of the centred K-frame moving average.

    Odd K: K equal taps. Even K: K + 1 taps with half weight on the two end taps (the classic
    centred "2xK" moving average), so that the window stays centred and no time shift appears.
    """
    if k % 2:
        return np.full(k, 1.0 / k)
    w = np.ones(k + 1)
    w[[0, -1]] = 0.5
    return w / k


def _smooth_array(values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Normalised convolution along axis 0: windows are cut at the ends and renormalised."""
    x = np.asarray(values, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    num = convolve1d(flat, kernel, axis=0, mode="constant", cval=0.0)
    den = convolve1d(np.ones(len(x)), kernel, mode="constant", cval=0.0)
    return (num / den[:, None]).reshape(x.shape)


def _smooth_pose(pose: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Smooth rotations as rotation vectors relative to their mean rotation; translation linearly.

    Working relative to the mean rotation makes the result independent of Euler angle wrap-around
    (e.g. 179 deg and -179 deg average to 180 deg, not 0); valid while the head stays within
    180 deg of its mean orientation.
    """
    rot = _rotations(pose)
    mean = rot.mean()
    rel = (mean.inv() * rot).as_rotvec()
    smoothed = mean * Rotation.from_rotvec(_smooth_array(rel, kernel))
    return _pose_from(smoothed, _smooth_array(np.asarray(pose, dtype=np.float64)[:, 3:], kernel))


def smooth(seq: LandmarkSequence, k: int) -> LandmarkSequence:
    """Centred temporal smoothing with a K-frame window (see :func:`smoothing_kernel`); K=1 is the identity.

    Smooths mesh, pose (rotations in rotation-vector space around the mean rotation, so Euler
    wrap-around is harmless), landmarks2d and blendshapes. At the ends the window is cut to the
    frames that exist and renormalised, so the length is unchanged and a constant stays constant.
    face_found is unchanged.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"smoothing window {k!r} must be a whole number of frames >= 1 (1 = unchanged)")
    k = int(k)
    if k == 1:
        return _history(seq, "smooth k=1")
    kernel = smoothing_kernel(k)
    changes = {"mesh": _smooth_array(seq.mesh, kernel), "pose": _smooth_pose(seq.pose, kernel)}
    for key in ("landmarks2d", "blendshapes"):
        if getattr(seq, key) is not None:
            changes[key] = _smooth_array(getattr(seq, key), kernel)
    return _history(seq, f"smooth k={k}", **changes)


# --------------------------------------------------------------------------------------------
# scale_mouth
# --------------------------------------------------------------------------------------------


def mouth_opening(mesh: np.ndarray) -> np.ndarray:
    """Mouth opening (T,) in cm: inner-lip midpoints 13 (upper) minus 14 (lower) along the mesh's y (up) axis.

    ``mesh`` is the pose-free mesh (T, 468, 3) (or one frame (468, 3) -> a scalar array).
    Negative values mean the inner lips overlap (pressed lips).
    """
    m = np.asarray(mesh, dtype=np.float64)
    return m[..., UPPER_INNER_LIP[MIDLINE_COLUMN], 1] - m[..., LOWER_INNER_LIP[MIDLINE_COLUMN], 1]


def inter_ocular_distance(mesh: np.ndarray) -> np.ndarray:
    """Distance (T,) in cm between the two eye centres (midpoints of each eye's corners)."""
    m = np.asarray(mesh, dtype=np.float64)
    right = m[..., RIGHT_EYE_CORNERS, :].mean(axis=-2)
    left = m[..., LEFT_EYE_CORNERS, :].mean(axis=-2)
    return np.linalg.norm(left - right, axis=-1)


def _cotangent_laplacian(vertices: np.ndarray, triangles: np.ndarray) -> sp.csr_matrix:
    """Graph Laplacian (N, N) with cotangent edge weights, clamped positive (keeps a maximum principle)."""
    rows, cols, weights = [], [], []
    for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        ea = vertices[triangles[:, a]] - vertices[triangles[:, c]]
        eb = vertices[triangles[:, b]] - vertices[triangles[:, c]]
        cot = (ea * eb).sum(1) / np.maximum(np.linalg.norm(np.cross(ea, eb), axis=1), 1e-12)
        rows += [triangles[:, a], triangles[:, b]]
        cols += [triangles[:, b], triangles[:, a]]
        weights += [0.5 * cot, 0.5 * cot]
    n = len(vertices)
    w = sp.coo_matrix(
        (np.maximum(np.concatenate(weights), 1e-6), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
    ).tocsr()
    return (sp.diags(np.asarray(w.sum(axis=1)).ravel()) - w).tocsr()


def lip_gaps(mesh: np.ndarray) -> np.ndarray:
    """Inner-lip gaps (T, 9) in cm along the mesh's y axis, one per lip column (column 4 = :func:`mouth_opening`)."""
    m = np.asarray(mesh, dtype=np.float64)
    return m[..., UPPER_INNER_LIP, 1] - m[..., LOWER_INNER_LIP, 1]


@functools.cache
def _mouth_fields() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Harmonic fields on the canonical mesh: upper-lip columns (9, 468), lower-lip columns (9, 468), jaw (468,).

    Dirichlet constraints: every vertex at or above the subnasale (vertex 2: nose, eyes, brows,
    forehead, upper cheeks) is 0; each lip column's outer and inner contour vertex is 1 in its own
    field and 0 in the others; the jaw line is 0 except in the jaw field, where it follows a jaw
    rotation about an axis at ear depth: ``clip((z - z_ear) / (z_14 - z_ear), 0, 1)`` (about 0.85
    at the chin tip, 0.23 at the jaw angles, 0 at the ears). Everything else (lip corners, the
    skin between the lip contours, cheeks, chin) is solved for with the cotangent Laplacian.
    """
    face = canonical_face()
    v = face.vertices
    lap = _cotangent_laplacian(v, face.triangles)
    n = len(v)
    upper = np.array([UPPER_OUTER_LIP, UPPER_INNER_LIP]).T  # (9, 2)
    lower = np.array([LOWER_OUTER_LIP, LOWER_INNER_LIP]).T
    jaw = np.array([i for i in JAW_LINE if v[i, 1] < v[SUBNASALE, 1]])
    above = np.flatnonzero(v[:, 1] >= v[SUBNASALE, 1])
    fixed = np.zeros(n, dtype=bool)
    fixed[np.concatenate([upper.ravel(), lower.ravel(), jaw, above])] = True
    free = ~fixed
    z_ear = v[JAW_LINE[0], 2]
    values = np.zeros((19, n))  # boundary values of the 19 fields
    for j in range(9):
        values[j, upper[j]] = 1.0
        values[9 + j, lower[j]] = 1.0
    values[18, jaw] = np.clip((v[jaw, 2] - z_ear) / (v[LOWER_INNER_LIP[MIDLINE_COLUMN], 2] - z_ear), 0.0, 1.0)
    rhs = -(lap[free][:, fixed] @ values[:, fixed].T)
    solved = spla.splu(lap[free][:, free].tocsc()).solve(np.ascontiguousarray(rhs))
    values[:, free] = solved.T
    values = np.clip(values, 0.0, 1.0)
    values.setflags(write=False)
    return values[:9], values[9:18], values[18]


def mouth_basis(upper_share: float = 0.3) -> np.ndarray:
    """Vertical displacement (9, 468) of every vertex per cm of extra inner-lip gap in each lip column.

    For column j: the upper lip moves up by ``upper_share`` and the lower lip down by
    ``1 - upper_share`` of the change; the midline column also drops the jaw by its lower-lip
    share (see :func:`_mouth_fields` for the spatial weights).
    """
    upper, lower, jaw = _mouth_fields()
    basis = upper_share * upper - (1.0 - upper_share) * lower
    basis[MIDLINE_COLUMN] -= (1.0 - upper_share) * jaw
    return basis


def _scale(s: object, what: str, hint: str) -> float:
    """``s`` as a finite float >= 0, else a :class:`UserError` naming ``what``."""
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise UserError(f"{what} {s!r} must be a number >= 0 ({hint})") from None
    if not math.isfinite(s) or s < 0:
        raise UserError(f"{what} {s} must be a finite number >= 0 ({hint})")
    return s


def scale_mouth(seq: LandmarkSequence, s: float, *, upper_share: float = 0.3) -> LandmarkSequence:
    """Scale each frame's mouth opening by ``s`` (1 = unchanged, 0 = closed, 2 = twice as open).

    Method, in the pose-free mesh (y is the face's vertical axis), per frame and vectorised:

    1. The inner-lip gap ``g_j`` of each of the 9 lip columns (:func:`lip_gaps`; column 4 is the
       midline 13/14, :func:`mouth_opening`); negative gaps (pressed lips) count as 0.
    2. Each column's gap changes by ``(s - 1) * g_j``: its upper-lip vertices (outer and inner
       contour) move up by ``upper_share`` of that and its lower-lip vertices down by the rest, so
       each lip moves as a whole along y and keeps its thickness; a jaw opening does most of the
       work, hence ``upper_share=0.3``. The jaw line follows the midline's lower-lip motion as a
       rotation about the ears would (about 0.85 at the chin, fading to 0 at the ears).
    3. Every other vertex below the nose moves smoothly with these (harmonic interpolation on the
       mesh, :func:`mouth_basis`); the nose and everything above it stay put.

    The measured opening becomes exactly ``s * o`` for ``o >= 0`` and every column's gap scales
    the same way, so lips never cross; a closed mouth stays closed. Only y changes. landmarks2d
    and blendshapes are dropped (they describe the unedited face).
    """
    s = _scale(s, "mouth scale", "1 = unchanged, 0 = closed")
    if not 0.0 <= upper_share <= 1.0:
        raise ValueError(f"upper_share must be in [0, 1], got {upper_share}")
    if s == 1.0:
        return _history(seq, "scale_mouth s=1")
    gaps = np.maximum(lip_gaps(seq.mesh), 0.0)  # (T, 9)
    mesh = seq.mesh.astype(np.float64)
    mesh[:, :, 1] += (s - 1.0) * (gaps @ mouth_basis(upper_share))
    return _history(
        seq,
        f"scale_mouth s={_fmt(s)} upper_share={_fmt(upper_share)}",
        mesh=mesh,
        landmarks2d=None,
        blendshapes=None,
    )


# --------------------------------------------------------------------------------------------
# set_pose
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseSource:
    """Head poses to put on a sequence.

    ``poses`` (T', 6): XYZ Euler degrees + translation cm. ``relative``: True for a template
    relative to its first frame (AniPortrait's ``pose_temp.npy``), composed onto the sequence's
    first-frame pose; False for absolute poses (another landmark file's ``pose``). ``fps``: the
    source's frame rate when known (absolute poses from a landmark file), used to play it at the
    right speed; None means frame by frame (AniPortrait's template is 30 fps). ``origin``: a
    description (e.g. the file name) for the history.
    """

    poses: np.ndarray
    relative: bool
    fps: float | None = None
    origin: str = "array"


def load_pose_source(path: str | os.PathLike) -> PoseSource:
    """Read a pose source: a ``.npy`` relative template (T', 6) or a landmark ``.npz`` (its absolute pose)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pose file; give a .npy pose template or a .npz landmark file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        seq = LandmarkSequence.load(path)
        return PoseSource(poses=seq.pose.astype(np.float64), relative=False, fps=seq.fps, origin=str(path))
    if suffix != ".npy":
        raise UserError(
            f"{path}: a pose file is a .npy template (frames x 6, relative to its first frame) "
            "or a .npz landmark file"
        )
    try:
        poses = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(
            f"{path}: not a readable .npy array ({err}); save the template with numpy.save"
        ) from None
    if poses.ndim != 2 or poses.shape[1] != 6 or len(poses) == 0 or not np.issubdtype(poses.dtype, np.number):
        raise UserError(
            f"{path}: pose template has shape {poses.shape} and dtype {poses.dtype}; expected a numeric "
            "(frames, 6) array of XYZ Euler degrees + translation relative to the first frame "
            "(AniPortrait's pose_temp.npy format)"
        )
    if not np.isfinite(poses).all():
        raise UserError(f"{path}: pose template contains NaN or inf; repair or re-create it")
    return PoseSource(poses=poses.astype(np.float64), relative=True, fps=None, origin=str(path))


def ping_pong_indices(num_source: int, num_frames: int) -> np.ndarray:
    """Frame indices (num_frames,) that play ``num_source`` frames forward, backward, forward, ...

    As AniPortrait loops its pose template: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (the turning
    frames are not repeated); a longer source is simply cut.
    """
    if num_source < 1:
        raise ValueError("a pose source needs at least one frame")
    period = max(2 * num_source - 2, 1)
    i = np.arange(num_frames) % period
    return np.where(i < num_source, i, period - i)


def set_pose(
    seq: LandmarkSequence,
    mode: str | PoseSource = "still",
    *,
    pose: np.ndarray | None = None,
) -> LandmarkSequence:
    """Replace the head pose.

    * ``mode="still"``: every frame gets ``pose`` (6,), default the first frame's pose.
    * ``mode="template"`` with ``pose`` (T', 6): a template relative to its first frame, composed
      onto the first-frame pose: ``M(seq.pose[0]) @ M(template[t])``
      (:func:`common.geometry.relative_to_absolute`, as AniPortrait applies ``pose_temp.npy``).
    * ``mode="absolute"`` with ``pose`` (T', 6): absolute poses used as they are.
    * ``mode=PoseSource(...)`` (see :func:`load_pose_source`): a template or absolute poses.

    A source of another length is looped ping-pong when shorter and cut when longer
    (:func:`ping_pong_indices`); a source with a known, different fps is first resampled to the
    sequence's fps. landmarks2d is dropped (it no longer matches).
    """
    if isinstance(mode, PoseSource):
        source = mode
    elif mode == "still":
        still = seq.pose[0] if pose is None else np.asarray(pose, dtype=np.float64)
        if still.shape != (6,) or not np.isfinite(still).all():
            raise UserError(
                f"still pose has shape {still.shape}; give 6 finite numbers (XYZ Euler degrees, translation cm)"
            )
        poses = np.repeat(still[None].astype(np.float64), seq.num_frames, axis=0)
        label = "first frame" if pose is None else " ".join(_fmt(float(v)) for v in still)
        return _history(seq, f"set_pose still ({label})", pose=poses, landmarks2d=None)
    elif mode in ("template", "absolute"):
        if pose is None:
            raise UserError(f"set_pose mode {mode!r} needs the poses (frames, 6)")
        source = PoseSource(poses=np.asarray(pose, dtype=np.float64), relative=mode == "template")
    else:
        raise UserError(f"pose mode {mode!r}: use 'still', 'template', 'absolute' or a pose file")
    poses = np.asarray(source.poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 6 or len(poses) == 0 or not np.isfinite(poses).all():
        raise UserError(
            f"{source.origin}: poses have shape {poses.shape}; expected finite (frames, 6) values"
        )
    if source.fps is not None and source.fps != seq.fps:
        count = max(1, math.floor(len(poses) * seq.fps / source.fps + 0.5))
        poses = _interp_pose(poses, np.arange(count) * source.fps / seq.fps)
    poses = poses[ping_pong_indices(len(poses), seq.num_frames)]
    if source.relative:
        poses = relative_to_absolute(poses, seq.pose[0].astype(np.float64))
    kind = "template" if source.relative else "absolute"
    return _history(seq, f"set_pose {kind} {source.origin}", pose=poses, landmarks2d=None)


# --------------------------------------------------------------------------------------------
# resample_fps
# --------------------------------------------------------------------------------------------


def resample_fps(seq: LandmarkSequence, fps: float) -> LandmarkSequence:
    """Resample to ``fps``: ``round(duration * fps)`` frames (at least 1), frame j at time j / fps.

    mesh, landmarks2d and blendshapes are interpolated linearly, rotations by slerp, translation
    linearly, face_found from the nearest frame; times past the last frame hold it. The same fps
    is the identity.
    """
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise UserError(f"frame rate {fps!r} must be a positive number of frames per second") from None
    if not math.isfinite(fps) or fps <= 0:
        raise UserError(f"frame rate {fps} must be a positive number of frames per second")
    if fps == seq.fps:
        return _history(seq, f"resample_fps {_fmt(fps)}")
    count = max(1, math.floor(seq.num_frames * fps / seq.fps + 0.5))
    positions = np.arange(count) * (seq.fps / fps)
    changes = {"mesh": _interp_linear(seq.mesh, positions), "pose": _interp_pose(seq.pose, positions)}
    for key in ("landmarks2d", "blendshapes"):
        if getattr(seq, key) is not None:
            changes[key] = _interp_linear(getattr(seq, key), positions)
    if seq.face_found is not None:
        nearest = np.minimum(np.floor(positions + 0.5).astype(np.int64), seq.num_frames - 1)
        changes["face_found"] = seq.face_found[nearest]
    return _history(seq, f"resample_fps {_fmt(seq.fps)} -> {_fmt(fps)}", fps=fps, **changes)


# --------------------------------------------------------------------------------------------
# trim
# --------------------------------------------------------------------------------------------

_SECONDS = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_FRAMES = re.compile(r"^[+-]?\d+[fF]$")


def _parse_position(text: str, fps: float, spec: str, side: str) -> int | None:
    """One side of ``A:B``: '' -> None, '30f' -> 30 frames, '2.5' -> round(2.5 * fps) frames."""
    text = text.strip()
    if not text:
        return None
    if _FRAMES.match(text):
        frame = int(text[:-1])
    elif _SECONDS.match(text):
        frame = math.floor(float(text) * fps + 0.5) if float(text) >= 0 else -1
    else:
        raise UserError(
            f"trim {spec!r}: the {side} {text!r} is neither seconds (e.g. 2.5) nor frames (e.g. 30f)"
        )
    if text.startswith("-") or frame < 0:
        raise UserError(
            f"trim {spec!r}: the {side} {text!r} is negative; give times from the start, e.g. 2.5 or 30f"
        )
    return frame


def parse_trim(text: str, seq: LandmarkSequence) -> tuple[int, int]:
    """``"A:B"`` -> (start, end) frames, end exclusive, for :func:`trim`.

    Each side is empty (the start / end of the sequence), seconds (``2.5``, rounded to the
    nearest frame at the sequence's fps) or frames with an ``f`` suffix (``30f``). Negative,
    out-of-range or empty ranges are a :class:`UserError` saying what would fit.
    """
    if not isinstance(text, str) or text.count(":") != 1:
        raise UserError(f"trim {text!r}: write START:END, e.g. 2.5:10 (seconds), 30f:300f (frames) or :5")
    a, b = text.split(":")
    start = _parse_position(a, seq.fps, text, "start")
    end = _parse_position(b, seq.fps, text, "end")
    return _check_range(seq, 0 if start is None else start, seq.num_frames if end is None else end, text)


def _check_range(seq: LandmarkSequence, start: int, end: int, spec: str) -> tuple[int, int]:
    n, fps = seq.num_frames, seq.fps
    where = f"the sequence has {n} frames ({n / fps:.3f} s at {fps:g} fps)"
    if start < 0 or end < 0:
        raise UserError(f"trim {spec}: negative frame numbers are not allowed; {where}")
    if start >= n:
        raise UserError(f"trim {spec}: start frame {start} is past the end; {where}: start before {n}f")
    if end > n:
        raise UserError(
            f"trim {spec}: end frame {end} is past the end; {where}: end at {n}f at most, or leave the end empty"
        )
    if end <= start:
        raise UserError(f"trim {spec}: frames {start}:{end} are empty; the end must come after the start")
    return start, end


def trim(seq: LandmarkSequence, start: int | None = None, end: int | None = None) -> LandmarkSequence:
    """Frames ``start`` (inclusive) to ``end`` (exclusive); None means the sequence's start / end."""
    start = 0 if start is None else int(start)
    end = seq.num_frames if end is None else int(end)
    start, end = _check_range(seq, start, end, f"{start}:{end}")
    return _history(seq.select(slice(start, end)), f"trim frames {start}:{end}")


# --------------------------------------------------------------------------------------------
# retarget
# --------------------------------------------------------------------------------------------


def neutral_frame(seq: LandmarkSequence) -> int:
    """Index of the sequence's most neutral frame (the one whose expression counts as "rest").

    The score to minimise is ``max(opening, 0) / IOD`` (mouth opening relative to the
    inter-ocular distance, about 0 for a closed mouth and 0.3 for a wide-open one) plus an
    expression-activity term: with blendshapes, their mean over the 51 expression channels
    (MediaPipe's ``_neutral`` channel excluded; AniPortrait picks its neutral frame by the
    smallest blendshape sum); without, the mean distance of the vertices from the sequence's
    per-vertex median mesh, divided by the IOD. Ties go to the earliest frame.
    """
    mesh = seq.mesh.astype(np.float64)
    iod = inter_ocular_distance(mesh)
    score = np.maximum(mouth_opening(mesh), 0.0) / iod
    if seq.blendshapes is not None:
        activity = np.delete(seq.blendshapes.astype(np.float64), NEUTRAL_BLENDSHAPE, axis=1).mean(axis=1)
    else:
        median = np.median(mesh, axis=0)
        activity = np.linalg.norm(mesh - median[None], axis=-1).mean(axis=1) / iod
    return int(np.argmin(score + activity))


def retarget(
    source: LandmarkSequence, reference: LandmarkSequence, *, neutral: int | None = None
) -> LandmarkSequence:
    """The source's expression and head motion on the reference face (the reference's first frame).

    * Expression: ``mesh_t = ref_mesh + k * (src_mesh_t - src_mesh_n)`` with ``n`` the source's
      most neutral frame (:func:`neutral_frame`, or ``neutral``) and
      ``k = IOD(ref_mesh) / IOD(src_mesh_n)`` (:func:`inter_ocular_distance`), so a small
      source face drives a large reference face with proportionally larger motions.
    * Head pose: the source's motion relative to its neutral frame applied to the reference pose:
      ``M_t = M(ref_pose) @ M(src_pose_n)^-1 @ M(src_pose_t)`` (translations unscaled, in cm).

    The result keeps the source's fps, blendshapes and face_found, takes the reference's
    image_size, stores the reference's mesh and pose as reference_mesh / reference_pose, and has
    no landmarks2d (the source's detections no longer apply).
    """
    if reference.num_frames < 1:
        raise UserError(
            "retarget: the reference has no frames; extract it from an image or a video with a face"
        )
    n = neutral_frame(source) if neutral is None else int(neutral)
    if not 0 <= n < source.num_frames:
        raise UserError(f"retarget: neutral frame {n} is outside the source's {source.num_frames} frames")
    ref_mesh = reference.mesh[0].astype(np.float64)
    ref_pose = reference.pose[0].astype(np.float64)
    src_mesh = source.mesh.astype(np.float64)
    scale = float(inter_ocular_distance(ref_mesh) / inter_ocular_distance(src_mesh[n]))
    mesh = ref_mesh[None] + scale * (src_mesh - src_mesh[n][None])
    src_mats = pose6_to_matrix(source.pose.astype(np.float64))
    anchor = pose6_to_matrix(ref_pose) @ np.linalg.inv(src_mats[n])
    pose = matrix_to_pose6(anchor[None] @ src_mats)
    ref_name = reference.meta.get("source", "reference")
    return _history(
        source,
        f"retarget onto {ref_name} (neutral frame {n}, scale {scale:.4f})",
        mesh=mesh,
        pose=pose,
        image_size=reference.image_size,
        landmarks2d=None,
        reference_mesh=ref_mesh,
        reference_pose=ref_pose,
    )


# --------------------------------------------------------------------------------------------
# rotate / pose curves
# --------------------------------------------------------------------------------------------

# Where each named angle sits in a 6-D pose (XYZ Euler degrees): yaw is the rotation about y, pitch about x.
ANGLES = {"pitch": 0, "yaw": 1, "roll": 2}
MAX_ANGLE = 90.0  # degrees: the largest offset a rotation or a pose curve may add


def _angle(name: str, text: str, where: str) -> float:
    if name not in ANGLES:
        raise UserError(f"{where}: unknown angle {name!r}; use yaw, pitch or roll, e.g. yaw=15,pitch=-5")
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {name}={text!r} is not a number of degrees, e.g. {name}=15") from None
    if not math.isfinite(value) or abs(value) > MAX_ANGLE:
        raise UserError(
            f"{where}: {name}={text} must be a finite angle from -{MAX_ANGLE:g} to {MAX_ANGLE:g} degrees"
        )
    return value


def parse_angles(text: str, where: str = "--rotate") -> dict[str, float]:
    """``"yaw=15,pitch=-5"`` -> ``{"yaw": 15.0, "pitch": -5.0}`` (degrees; each angle at most once)."""
    angles: dict[str, float] = {}
    for item in str(text).split(","):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or not name or not value.strip():
            raise UserError(
                f"{where} {text!r}: write NAME=DEGREES pairs separated by commas, e.g. yaw=15,pitch=-5"
            )
        if name in angles:
            raise UserError(f"{where} {text!r}: {name} is given twice")
        angles[name] = _angle(name, value.strip(), where)
    return angles


def rotate(
    seq: LandmarkSequence, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0
) -> LandmarkSequence:
    """Add constant offsets (degrees) to the pose's Euler angles: ``yaw`` to entry 1, ``pitch`` to 0, ``roll`` to 2.

    As SadTalker's yaw/pitch/roll inputs. Positive yaw turns the face towards the image's right (the subject's
    left), positive pitch tilts it down, positive roll tilts it towards the image's left, for a face looking at
    the camera. landmarks2d is dropped.
    """
    offsets = {"yaw": yaw, "pitch": pitch, "roll": roll}
    for name, value in offsets.items():
        _angle(name, str(value), "rotate")
    pose = seq.pose.astype(np.float64)
    for name, value in offsets.items():
        pose[:, ANGLES[name]] += float(value)
    label = ",".join(f"{n}={_fmt(float(v))}" for n, v in offsets.items() if v)
    return _history(seq, f"rotate {label or 'none'}", pose=pose, landmarks2d=None)


@dataclass(frozen=True)
class PoseCurve:
    """Angle offsets over time: per angle name, keyframe times (s, increasing) and offsets (degrees)."""

    keys: dict[str, tuple[np.ndarray, np.ndarray]]
    origin: str

    def offsets(self, times: np.ndarray) -> np.ndarray:
        """Offsets (len(times), 3) in pose order (pitch, yaw, roll) at ``times`` (s).

        Between keyframes a monotone cubic (PCHIP: smooth, through every keyframe, no overshoot); before the
        first and after the last keyframe the end value holds; an angle with no keyframe stays 0.
        """
        from scipy.interpolate import PchipInterpolator

        times = np.asarray(times, dtype=np.float64)
        out = np.zeros((len(times), 3))
        for name, (t, v) in self.keys.items():
            if len(t) == 1:
                out[:, ANGLES[name]] = v[0]
            else:
                out[:, ANGLES[name]] = PchipInterpolator(t, v)(np.clip(times, t[0], t[-1]))
        return out


def _curve(rows: list[tuple[float, dict[str, float]]], origin: str) -> PoseCurve:
    keys: dict[str, tuple[list[float], list[float]]] = {}
    for time, angles in rows:
        if not math.isfinite(time) or time < 0:
            raise UserError(f"{origin}: keyframe time {time:g} must be a finite number of seconds >= 0")
        for name, value in angles.items():
            times, values = keys.setdefault(name, ([], []))
            if times and time <= times[-1]:
                raise UserError(
                    f"{origin}: {name} keyframes at {times[-1]:g} s and {time:g} s are out of order; "
                    "list keyframes by increasing time, each time once"
                )
            times.append(time)
            values.append(value)
    if not keys:
        raise UserError(f"{origin}: no keyframes; give at least one, e.g. 0:yaw=0;2.5:yaw=20")
    return PoseCurve({n: (np.array(t), np.array(v)) for n, (t, v) in keys.items()}, origin)


def _time(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: keyframe time {text!r} is not a number of seconds") from None


def parse_pose_curve(spec: str | os.PathLike) -> PoseCurve:
    """A pose curve from a CSV file or inline keyframes.

    * CSV (a path ending in ``.csv``): a header naming ``time`` and any of ``yaw``, ``pitch``, ``roll``, then
      one keyframe per row in seconds and degrees; an empty cell leaves that angle unkeyed in that row.
    * Inline: ``TIME:NAME=DEG[,NAME=DEG];...``, e.g. ``0:yaw=0;2.5:yaw=20;5:yaw=0``.

    Times are of the edited output (after trim and resampling).
    """
    import csv

    text = os.fspath(spec)
    if text.lower().endswith(".csv"):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"{path}: no such pose curve file; give a CSV with columns time,yaw,pitch,roll")
        try:
            with open(path, newline="", encoding="utf-8") as f:
                table = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise UserError(
                f"{path}: not a readable CSV file ({err}); write columns time,yaw,pitch,roll"
            ) from None
        table = [row for row in table if any(cell.strip() for cell in row)]
        header = [cell.strip().lower() for cell in table[0]] if table else []
        if "time" not in header or not set(header) - {"time"} or not set(header) <= {"time", *ANGLES}:
            raise UserError(
                f"{path}: the first row must name the columns: time and any of yaw, pitch, roll "
                f"(found {','.join(header) or 'nothing'})"
            )
        rows = []
        for number, row in enumerate(table[1:], start=2):
            where = f"{path} row {number}"
            if len(row) != len(header):
                raise UserError(f"{where}: {len(row)} cells where the header has {len(header)}")
            cells = dict(zip(header, (c.strip() for c in row), strict=True))
            angles = {n: _angle(n, v, where) for n, v in cells.items() if n != "time" and v}
            rows.append((_time(cells["time"], where), angles))
        return _curve(rows, str(path))
    where = f"pose curve {text!r}"
    rows = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        time, sep, angles = item.partition(":")
        if not sep or not angles.strip():
            raise UserError(
                f"{where}: write keyframes as TIME:NAME=DEG separated by ';', e.g. 0:yaw=0;2.5:yaw=20;5:yaw=0, "
                "or give a .csv file"
            )
        rows.append((_time(time.strip(), where), parse_angles(angles, where)))
    return _curve(rows, where)


def apply_pose_curve(seq: LandmarkSequence, curve: PoseCurve) -> LandmarkSequence:
    """Add the curve's offsets at each frame's time (``frame / fps``) to the pose's Euler angles (see :func:`rotate`)."""
    pose = seq.pose.astype(np.float64)
    pose[:, :3] += curve.offsets(np.arange(seq.num_frames) / seq.fps)
    return _history(seq, f"pose_curve {curve.origin}", pose=pose, landmarks2d=None)


# --------------------------------------------------------------------------------------------
# scale_expression
# --------------------------------------------------------------------------------------------


def scale_expression(seq: LandmarkSequence, s: float) -> LandmarkSequence:
    """Scale every expression offset outside the mouth by ``s`` (1 = unchanged, 0 = as in the neutral frame).

    Offsets are from the sequence's most neutral frame (:func:`neutral_frame`); a vertex's change is weighted by
    ``1 - mouth`` (:mod:`common.regions`), so the lower face keeps its motion exactly and the eyes, brows,
    cheeks and forehead move ``s`` times as much. landmarks2d and blendshapes are dropped.
    """
    from common.regions import expression_offsets, region_weights

    s = _scale(s, "expression scale", "1 = unchanged")
    if s == 1.0:
        return _history(seq, "scale_expression s=1")
    n = neutral_frame(seq)
    weight = (1.0 - region_weights("mouth"))[None, :, None]
    mesh = seq.mesh.astype(np.float64) + (s - 1.0) * weight * expression_offsets(seq.mesh, n)
    return _history(
        seq,
        f"scale_expression s={_fmt(s)} (neutral frame {n})",
        mesh=mesh,
        landmarks2d=None,
        blendshapes=None,
    )


# --------------------------------------------------------------------------------------------
# blink
# --------------------------------------------------------------------------------------------

BLINK_MODES = ("keep", "auto", "none")


def _open_eyes_frame(seq: LandmarkSequence, closed_ratio: float) -> int:
    """The neutral frame, or the frame nearest to it with open eyes when the neutral one is mid-blink."""
    from common.blinks import EDGE, closure

    n = neutral_frame(seq)
    c = closure(seq.mesh, seq.fps, closed_ratio)
    if c[n] <= EDGE:
        return n
    open_frames = np.flatnonzero(c <= EDGE)
    if len(open_frames) == 0:
        return int(np.argmin(c))
    return int(open_frames[np.argmin(np.abs(open_frames - n))])


def _closing(open_mesh: np.ndarray, model) -> np.ndarray:
    """The displacement (468, 3) that closes the eyes of ``open_mesh`` to the model's apex openness.

    The model's mean displacement (in inter-ocular distances) scaled to this face, then by the factor (found by
    bisection) that brings the openness to ``closed_ratio`` times the open one.
    """
    from common.blinks import eye_openness

    delta = model.closed_delta * inter_ocular_distance(open_mesh)
    target = model.closed_ratio * float(eye_openness(open_mesh))
    # The first scale on a fine grid that closes the eyes that far (further on, the lids would cross), refined.
    grid = np.linspace(0.0, 4.0, 401)
    openness = eye_openness(open_mesh[None] + grid[:, None, None] * delta[None])
    below = np.flatnonzero(openness <= target)
    first = int(below[0]) if len(below) else int(np.argmin(openness))
    low, high = grid[max(first - 1, 0)], grid[first]
    for _ in range(30):
        mid = (low + high) / 2
        if float(eye_openness(open_mesh + mid * delta)) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2 * delta


def blink(
    seq: LandmarkSequence,
    mode: str | LandmarkSequence = "keep",
    *,
    seed: int = 0,
    model=None,
) -> LandmarkSequence:
    """Eye blinks (:mod:`common.blinks`).

    * ``"keep"``: unchanged.
    * ``"none"``: the eye region (:mod:`common.regions`) held as in the neutral frame (or the nearest frame with
      open eyes): no blinks, no other lid motion.
    * ``"auto"``: ``"none"``, then natural blinks: times and durations drawn from the blink model measured on
      real talking-head clips (shipped with the package), repeatable by ``seed``.
    * a :class:`LandmarkSequence`: ``"none"``, then that sequence's blinks (its closure per frame at the same
      times; none past its end).

    Blinks close the held eyes by the model's open-to-closed displacement scaled to this face, times the closure.
    The schedule of ``"auto"`` is recorded in the history. landmarks2d and blendshapes are dropped (except for
    ``"keep"``).
    """
    from common.blinks import closure, closure_curve, load_blink_model, schedule_blinks
    from common.regions import region_weights

    if isinstance(mode, str) and mode not in BLINK_MODES:
        raise UserError(
            f"blink mode {mode!r}: use keep, auto, none or a landmark file (.npz) to copy blinks from"
        )
    if mode == "keep":
        return _history(seq, "blink keep")
    model = load_blink_model() if model is None else model
    n = _open_eyes_frame(seq, model.closed_ratio)
    mesh = seq.mesh.astype(np.float64)
    eyes = region_weights("eyes")[None, :, None]
    mesh = mesh + eyes * (mesh[n][None] - mesh)  # eyes as in frame n
    if isinstance(mode, LandmarkSequence):
        source_c = closure(mode.mesh, mode.fps, model.closed_ratio)
        positions = np.arange(seq.num_frames) * (mode.fps / seq.fps)
        c = np.where(positions <= mode.num_frames - 1, _interp_linear(source_c, positions), 0.0)
        label = f"blink from {mode.meta.get('source', 'a landmark file')}"
    elif mode == "auto":
        schedule = schedule_blinks(model, seq.num_frames / seq.fps, np.random.default_rng(seed))
        c = closure_curve(schedule, seq.num_frames, seq.fps, model)
        times = " ".join(f"{b.start_s:.3f}+{b.duration_s:.3f}" for b in schedule)
        label = f"blink auto seed={seed}: {len(schedule)} blinks (start+duration s) {times}".rstrip()
    else:
        c = np.zeros(seq.num_frames)
        label = "blink none"
    mesh = mesh + c[:, None, None] * _closing(mesh[n], model)[None]
    return _history(seq, f"{label} (open eyes of frame {n})", mesh=mesh, landmarks2d=None, blendshapes=None)


# --------------------------------------------------------------------------------------------
# mix
# --------------------------------------------------------------------------------------------

MIX_LENGTHS = ("base", "shortest", "loop")
MIX_SOURCES = ("mouth", "eyes", "brows", "pose")


def check_mix(length: str, sources: list[str]) -> None:
    """Refuse a mix with nothing to mix in (``sources``: the names of :data:`MIX_SOURCES` given) or an unknown
    ``length``."""
    if not sources:
        raise UserError("mix: nothing to mix in; give at least one of --mouth, --eyes, --brows or --pose")
    if length not in MIX_LENGTHS:
        raise UserError(f"mix: --length {length!r}: use base, shortest or loop")


def mix(
    base: LandmarkSequence,
    *,
    mouth: LandmarkSequence | None = None,
    eyes: LandmarkSequence | None = None,
    brows: LandmarkSequence | None = None,
    pose: LandmarkSequence | None = None,
    length: str = "base",
) -> LandmarkSequence:
    """One sequence from several: face regions and head motion of other sequences on the base face.

    * Regions (:mod:`common.regions`: smooth per-vertex weights, no seam): each source's expression offsets from
      its own most neutral frame (:func:`neutral_frame`), scaled by the ratio of inter-ocular distances as in
      :func:`retarget`, replace the base's offsets in that region:
      ``mesh_t = base_n + (1 - sum_r w_r) * base_offset_t + sum_r w_r * source_r_offset_t``. Vertices in no
      given region keep the base's mesh exactly.
    * ``pose``: that sequence's head motion relative to its first frame, composed onto the base's first pose
      (as a pose template, :func:`set_pose`).
    * Lengths: every source is first resampled to the base's fps. ``length="base"``: the base's frames;
      ``"shortest"``: the shortest input's; ``"loop"``: the longest input's. A shorter input is looped
      ping-pong (:func:`ping_pong_indices`), a longer one cut.

    The result has the base's fps, image size, reference keys and face_found; landmarks2d and blendshapes are
    dropped.
    """
    from common.regions import expression_offsets, region_weights

    regions = {"mouth": mouth, "eyes": eyes, "brows": brows}
    given = {name: s for name, s in regions.items() if s is not None}
    check_mix(length, [*given, *(["pose"] if pose is not None else [])])
    inputs = {name: resample_fps(s, base.fps) for name, s in {**given, "pose": pose}.items() if s is not None}
    counts = [base.num_frames, *(s.num_frames for s in inputs.values())]
    frames = {"base": base.num_frames, "shortest": min(counts), "loop": max(counts)}[length]
    idx = ping_pong_indices(base.num_frames, frames)
    out = base.select(idx)
    base_mesh = base.mesh.astype(np.float64)
    nb = neutral_frame(base)
    iod = float(inter_ocular_distance(base_mesh[nb]))
    base_offsets = expression_offsets(base_mesh, nb)[idx]
    mesh = base_mesh[nb][None] + base_offsets
    labels = []
    for name, source in inputs.items():
        if name == "pose":
            continue
        ns = neutral_frame(source)
        src = source.mesh.astype(np.float64)
        scale = iod / float(inter_ocular_distance(src[ns]))
        offsets = scale * expression_offsets(src, ns)[ping_pong_indices(source.num_frames, frames)]
        w = region_weights(name)[None, :, None]
        mesh += w * (offsets - base_offsets)
        labels.append(f"{name} from {source.meta.get('source', 'a landmark file')} (neutral frame {ns})")
    changes = {"mesh": mesh, "landmarks2d": None, "blendshapes": None}
    if "pose" in inputs:
        motion = inputs["pose"].pose.astype(np.float64)[ping_pong_indices(inputs["pose"].num_frames, frames)]
        changes["pose"] = relative_to_absolute(absolute_to_relative(motion), base.pose[0].astype(np.float64))
        labels.append(f"pose from {inputs['pose'].meta.get('source', 'a landmark file')}")
    return _history(out, f"mix {'; '.join(labels)}; length={length} ({frames} frames)", **changes)
