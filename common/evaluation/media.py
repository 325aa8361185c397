"""A clip to score: its frames, frame rate and audio (16 kHz mono), read once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from common.errors import UserError


@dataclasses.dataclass
class Clip:
    """Frames (T, H, W, 3) RGB uint8 at ``fps``, and the audio (16 kHz mono float32, or None)."""

    path: Path
    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return tuple(self.frames.shape[1:3])

    def resample_index(self, fps: float) -> np.ndarray:
        """For each frame at ``fps``, the index of this clip's frame showing then (nearest earlier frame), as a
        player would; per-frame data of the clip (e.g. face boxes) resample with it."""
        count = int(np.floor(self.num_frames / self.fps * fps + 1e-6))
        return np.minimum(np.floor(np.arange(count) * self.fps / fps + 1e-6).astype(int), self.num_frames - 1)

    def resampled(self, fps: float) -> Clip:
        """The clip at another frame rate (:meth:`resample_index`); the audio is unchanged."""
        if abs(fps - self.fps) < 1e-6:
            return self
        return dataclasses.replace(self, frames=self.frames[self.resample_index(fps)], fps=float(fps))

    def truncated(self, frames: int) -> Clip:
        return dataclasses.replace(self, frames=self.frames[:frames])


def read_clip(path: str | Path, audio: bool = True, audio_path: str | Path | None = None) -> Clip:
    """Decode every frame of ``path``; the audio is ``audio_path``, else the video's own track, else a
    same-stem audio file beside it (None when there is none, or when ``audio`` is false)."""
    from common.audio import load_audio
    from common.corpus import find_audio
    from common.video import iter_frames, probe_video

    path = Path(path)
    info = probe_video(path)
    frames = [rgb for _, rgb in iter_frames(path)]
    if not frames:
        raise UserError(
            f"{path}: no frames could be decoded; re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"
        )
    samples = None
    if audio:
        source = (
            Path(audio_path) if audio_path is not None else (path if info.has_audio else find_audio(path))
        )
        if source is not None:
            samples = load_audio(source, silence_dbfs=None)
    return Clip(path=path, frames=np.stack(frames), fps=info.fps, audio=samples)
