"""Landmark metrics of a generated clip against its real clip (MediaPipe on both, :mod:`.faces`).

All distances are normalised by the real frame's inter-ocular distance (outer eye corners) so that videos
of different sizes compare; ``*_px512`` give them in pixels of the real frame scaled to 512 on its long side.

- ``lmd_face`` / ``lmd_mouth``: mean distance of the 468 mesh points / the 40 lip points, over the frames
  where both videos show a face (the generated points mapped into the real frame through normalised
  coordinates).
- ``mouth_corr``: correlation of the inner-lip opening over time with the real one.
- ``pose_error_deg``: mean angle between the generated and real head rotations.
- ``jitter``: mean second difference of the landmarks (``|p[t+1] - 2 p[t] + p[t-1]|``, normalised), a
  property of the generated clip alone; compare it with the real video's.
"""

from __future__ import annotations

import numpy as np

from common.evaluation.faces import MOUTH, MOUTH_STILL, FaceTrack
from common.evaluation.scores import NO_REAL_VIDEO, Scores, pearson

REFERENCE_METRICS = (
    "lmd_face",
    "lmd_mouth",
    "lmd_face_px512",
    "lmd_mouth_px512",
    "mouth_corr",
    "pose_error_deg",
)


def jitter_per_frame(track: FaceTrack) -> np.ndarray:
    """(T,) mean second difference of the landmarks centred on each frame, normalised by the inter-ocular
    distance; NaN at the first and last frame and where one of the three frames shows no face."""
    p = track.points
    out = np.full(len(p), np.nan)
    if len(p) >= 3:
        second = p[2:] - 2 * p[1:-1] + p[:-2]
        out[1:-1] = np.linalg.norm(second, axis=-1).mean(axis=-1) / track.inter_ocular()[1:-1]
    return out


def jitter(track: FaceTrack) -> tuple[float | None, str | None]:
    """Mean second difference of the landmarks over consecutive triples of frames with a face."""
    if len(track.points) < 3:
        return None, "fewer than 3 frames"
    per_frame = jitter_per_frame(track)
    per_frame = per_frame[np.isfinite(per_frame)]
    if not len(per_frame):
        return None, "no three consecutive frames with a face"
    return float(per_frame.mean()), None


def rotation_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,) angle in degrees between rotation matrices ``a`` and ``b`` (T, 3, 3)."""
    relative = np.einsum("tji,tjk->tik", a, b)
    cos = (np.trace(relative, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def landmark_scores(generated: FaceTrack, real: FaceTrack | None) -> Scores:
    """Detection rate and jitter of ``generated``; with ``real`` (same frame count) the comparisons too."""
    scores = Scores()
    scores.set("detection_rate", generated.detection_rate)
    scores.set("jitter", *jitter(generated))
    if real is None:
        scores.skip(REFERENCE_METRICS, NO_REAL_VIDEO)
        return scores
    both = generated.found & real.found
    if not both.any():
        scores.skip(REFERENCE_METRICS, "no frame shows a face in both the generated and the real video")
        return scores
    (gh, gw), (rh, rw) = generated.size, real.size
    mapped = generated.points[both] * np.array([rw / gw, rh / gh])
    target = real.points[both]
    iod = real.inter_ocular()[both][:, None]
    distance = np.linalg.norm(mapped - target, axis=-1)
    px512 = 512.0 / max(rh, rw)
    for name, columns in (("face", slice(None)), ("mouth", MOUTH)):
        scores.set(f"lmd_{name}", float((distance[:, columns] / iod).mean()))
        scores.set(f"lmd_{name}_px512", float(distance[:, columns].mean() * px512))
    scores.set(
        "mouth_corr", *pearson(generated.mouth_opening(), real.mouth_opening(), MOUTH_STILL), null=True
    )
    scores.set(
        "pose_error_deg", float(rotation_angles(generated.rotations[both], real.rotations[both]).mean())
    )
    return scores
