"""Audio input: any container and codec PyAV/FFmpeg reads -> 16 kHz mono float32.

``load_audio`` is the single entry point every stage uses for driving audio. It decodes with PyAV,
resamples with FFmpeg's ``libswresample`` (``av.AudioResampler``, a windowed-sinc resampler) and
downmixes by averaging the channels (what librosa's ``to_mono`` does, so the level matches the
loader AniPortrait's models were trained with; FFmpeg's own stereo->mono matrix adds the channels
at -3 dB instead, which can exceed full scale).

Bad input raises :class:`common.errors.UserError` with the file name and the fix: a missing or
unreadable file, a file without an audio stream, no samples, a silent signal, NaN/inf samples, or
audio shorter than ``min_duration`` (callers pass one video frame, ``1 / fps``).

Frame-count convention (AniPortrait's): ``num_frames = ceil(num_samples * fps / sample_rate)``,
computed in integers by :func:`num_frames_for`.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from common.errors import UserError

SAMPLE_RATE = 16000
"""The sample rate every audio model here consumes, Hz."""

SILENCE_DBFS = -60.0
"""Default silence threshold: audio whose peak is below this level (dB full scale) is rejected."""

_CONVERT_HINT = "convert it with e.g. `ffmpeg -i INPUT -ac 1 -ar 16000 speech.wav`"


def num_frames_for(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames covered by ``num_samples`` audio samples: ``ceil(num_samples * fps / sample_rate)``.

    Exact for integer and fractional frame rates (29.97 is taken as the nearest simple fraction).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    return math.ceil(Fraction(num_samples) * rate / sample_rate)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    min_duration: float = 0.0,
    silence_dbfs: float | None = SILENCE_DBFS,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 signal at ``sample_rate`` Hz.

    Args:
        path: any file FFmpeg can demux with an audio stream (wav, flac, mp3, m4a/aac, ogg, video
            containers...); the first audio stream is used.
        sample_rate: output rate in Hz.
        min_duration: shortest accepted duration in seconds (pass ``1 / fps`` for one video frame).
        silence_dbfs: reject audio whose peak magnitude is below this level in dB full scale;
            ``None`` accepts silence.

    Returns:
        ``(num_samples,)`` float32 array, nominally in [-1, 1].

    Raises:
        UserError: missing, unreadable, empty, silent, non-finite or too-short audio.
    """
    import av

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"audio file {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"audio path {path} is a folder; pass an audio file (wav, mp3, m4a, flac)")
    if path.stat().st_size == 0:
        raise UserError(f"audio file {path} is empty (0 bytes); pass a file that contains speech")

    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise UserError(
                    f"{path} has no audio stream; pass an audio file or a video with sound ({_CONVERT_HINT})"
                )
            stream = container.streams.audio[0]
            # Planar float at the target rate, channels kept: we average them ourselves.
            resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
    except UserError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise UserError(f"cannot read audio from {path}: {err}; {_CONVERT_HINT}") from None

    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise UserError(f"{path} contains no audio samples; pass a file that contains speech")
    if not np.isfinite(audio).all():
        raise UserError(f"{path} contains NaN or infinite samples; re-export the audio ({_CONVERT_HINT})")
    duration = audio.size / sample_rate
    if duration < min_duration:
        raise UserError(
            f"{path} is too short: {duration:.3f} s, at least {min_duration:.3f} s (one video frame) is "
            "needed; pass longer audio"
        )
    if silence_dbfs is not None:
        peak = float(np.abs(audio).max())
        level = 20.0 * math.log10(peak) if peak > 0 else -math.inf
        if level < silence_dbfs:
            raise UserError(
                f"{path} is silent (peak {level:.1f} dBFS, below {silence_dbfs:.0f} dBFS); pass audio "
                "that contains speech"
            )
    return audio
