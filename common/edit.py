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
from common.geometry import canonical_face, matrix_to_pose6, pose6_to_matrix, relative_to_absolute
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
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise UserError(f"mouth scale {s!r} must be a number >= 0 (1 = unchanged, 0 = closed)") from None
    if not math.isfinite(s) or s < 0:
        raise UserError(f"mouth scale {s} must be a finite number >= 0 (1 = unchanged, 0 = closed)")
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
