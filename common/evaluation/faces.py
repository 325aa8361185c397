"""MediaPipe's face landmarks on every frame of a video (IMAGE mode: each frame on its own).

Frames whose short side is under ``min_size`` pixels (256) are enlarged (bicubic) first: MediaPipe's
detector works on 128-pixel inputs and its landmark model on 256. Landmarks are returned in the frame's
own pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

NUM_MESH = 468
# Eye outer corners (inter-ocular distance) and the inner-lip midpoints (mouth opening) of MediaPipe's mesh.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
# A mouth whose opening (in inter-ocular units) varies by no more than this is held still: what is left is
# the detector's noise on a frozen face (about 1e-5 on re-encoded identical frames; speech moves it by ~0.05).
MOUTH_STILL = 1e-3
# The lips' points (outer and inner contours) of MediaPipe's face mesh.
MOUTH = sorted(
    {61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
     78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415}
)  # fmt: skip


@dataclasses.dataclass
class FaceTrack:
    """Per frame: ``points`` (T, 468, 2) pixels (NaN where no face), ``rotations`` (T, 3, 3) head rotations
    from MediaPipe's facial transformation matrix (NaN where no face), ``found`` (T,) bool; frame ``size``
    (H, W)."""

    points: np.ndarray
    rotations: np.ndarray
    found: np.ndarray
    size: tuple[int, int]

    @property
    def detection_rate(self) -> float:
        return float(self.found.mean()) if len(self.found) else 0.0

    def inter_ocular(self) -> np.ndarray:
        """(T,) distance between the eyes' outer corners, pixels."""
        return np.linalg.norm(self.points[:, RIGHT_EYE_OUTER] - self.points[:, LEFT_EYE_OUTER], axis=-1)

    def mouth_opening(self) -> np.ndarray:
        """(T,) inner-lip gap over the inter-ocular distance (NaN where no face)."""
        gap = np.linalg.norm(self.points[:, UPPER_INNER_LIP] - self.points[:, LOWER_INNER_LIP], axis=-1)
        return gap / self.inter_ocular()

    def boxes(self, margin: float = 0.0) -> np.ndarray:
        """(T, 4) x0, y0, x1, y1 of the landmarks' extent, grown by ``margin`` of its size each side."""
        low, high = np.nanmin(self.points, axis=1), np.nanmax(self.points, axis=1)
        pad = (high - low) * margin
        return np.concatenate([low - pad, high + pad], axis=1)

    def select(self, index: Any) -> FaceTrack:
        return FaceTrack(self.points[index], self.rotations[index], self.found[index], self.size)


def track_faces(frames: np.ndarray, detector: Any, min_size: int = 256) -> FaceTrack:
    """Landmarks of the largest face in each of ``frames`` (T, H, W, 3) RGB uint8, with an open
    :class:`common.detect.FaceDetector` in image mode."""
    frames = np.asarray(frames)
    h, w = frames.shape[1:3]
    scale = max(1.0, min_size / min(h, w))
    size = (round(w * scale), round(h * scale))
    points = np.full((len(frames), NUM_MESH, 2), np.nan)
    rotations = np.full((len(frames), 3, 3), np.nan)
    for i, frame in enumerate(frames):
        image = frame if scale == 1.0 else cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC)
        faces = detector.detect(np.ascontiguousarray(image))
        if faces:
            face = max(faces, key=lambda f: f.area)
            points[i] = face.landmarks[:NUM_MESH, :2].astype(np.float64) * np.array([w, h])
            rotation = np.asarray(face.matrix, dtype=np.float64)[:3, :3]
            rotations[i] = rotation / np.cbrt(np.linalg.det(rotation))
    return FaceTrack(points=points, rotations=rotations, found=~np.isnan(points[:, 0, 0]), size=(h, w))
