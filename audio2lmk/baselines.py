"""Two baselines for Audio2Mesh, measured by the same metric code as the models.

* **still**: the reference mesh held still (zero offsets in every frame). Its mouth opening is
  constant, so its mouth-opening correlation is 0 by definition (:func:`audio2lmk.metrics.pearson`).
* **loudness**: the mouth driven by audio loudness alone. Each frame's loudness is the RMS level in
  dB of its audio span (:func:`frame_loudness_db`), referenced to the clip's loud frames (its 95th
  percentile, so the recording level does not matter) and floored at ``floor_db``. The offsets of
  every vertex coordinate are a linear function of the loudness of the frame and of
  ``context_frames`` frames either side (a linear filter, which can learn that the mouth moves
  slightly before the sound), fitted by least squares on the *training* speakers' frames
  (``numpy.linalg.lstsq``) and applied unchanged to held-out speakers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.audio import SAMPLE_RATE


def frame_loudness_db(
    audio: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE, floor_db: float = -100.0
) -> np.ndarray:
    """RMS level (num_frames,) in dBFS of each frame's samples ``[round(t sr / fps), round((t+1) sr / fps))``.

    Audio shorter than the frames is zero-padded (those frames get ``floor_db``).
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    bounds = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(np.int64)
    padded = np.zeros(max(int(bounds[-1]), len(audio)))
    padded[: len(audio)] = audio
    power = np.add.reduceat(padded**2, bounds[:-1])[:num_frames] / np.maximum(np.diff(bounds), 1)
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), floor_db)


class LoudnessBaseline:
    """Mesh offsets as a linear function of the loudness around each frame (see the module doc).

    Args:
        context_frames: frames of loudness on either side used as features (0: the frame alone).
        floor_db: lowest loudness relative to the clip's 95th-percentile frame level.
    """

    def __init__(self, context_frames: int = 0, floor_db: float = -40.0) -> None:
        if context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {context_frames}")
        self.context_frames = int(context_frames)
        self.floor_db = float(floor_db)
        self.weights: np.ndarray | None = None  # (features, 468 * 3)

    def features(self, audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        """``(num_frames, 2 * context_frames + 2)``: the loudness at frames ``t - k .. t + k`` and 1."""
        level = frame_loudness_db(audio, num_frames, fps)
        level = np.maximum(level - np.percentile(level, 95), self.floor_db)
        k = self.context_frames
        padded = np.pad(level, k, mode="edge")
        columns = [padded[i : i + num_frames] for i in range(2 * k + 1)]
        return np.stack([*columns, np.ones(num_frames)], axis=1)

    def fit(
        self, audios: Sequence[np.ndarray], offsets: Sequence[np.ndarray], fps: float
    ) -> LoudnessBaseline:
        """Least-squares fit on clips: ``audios[i]`` (N_i,) 16 kHz, ``offsets[i]`` (T_i, 468, 3) cm."""
        x = np.concatenate([self.features(a, len(o), fps) for a, o in zip(audios, offsets, strict=True)])
        y = np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in offsets])
        self.weights, *_ = np.linalg.lstsq(x, y, rcond=None)
        return self

    def predict(self, audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        """Offsets ``(num_frames, 468, 3)`` cm for a clip's audio."""
        if self.weights is None:
            raise RuntimeError("fit the loudness baseline before predicting")
        return (self.features(audio, num_frames, fps) @ self.weights).reshape(num_frames, -1, 3)


def still_offsets(num_frames: int, num_vertices: int = 468) -> np.ndarray:
    """The still baseline: zero offsets ``(num_frames, num_vertices, 3)`` (the reference mesh held still)."""
    return np.zeros((num_frames, num_vertices, 3))
