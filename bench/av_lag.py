"""Audio/mouth lag of the prepared shared clips: at which shift does the mouth opening best follow loudness?

For every clip of a prepared index (default ``data/cache/talking``, what audio2lmk training prepares), the
Pearson correlation of the mouth opening (:func:`common.edit.mouth_opening`) with the log RMS loudness of the
clip's audio per video frame, at shifts of -8..+8 frames. A negative best shift means the mouth moves before
the sound (anticipation, or an A/V offset in the recording). docs/audio2lmk-ablations.md.

    python bench/av_lag.py [INDEX_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common.audio import SAMPLE_RATE, load_audio
from common.edit import mouth_opening
from common.index import load_index
from common.lmkfile import LandmarkSequence


def lag_correlations(mouth: np.ndarray, loudness: np.ndarray, max_lag: int = 8) -> dict[int, float]:
    """``{lag: r}``: r of mouth[t + lag] with loudness[t] (negative lag: the mouth leads)."""
    n = min(len(mouth), len(loudness))
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        x = mouth[max(0, lag) : n + min(0, lag)]
        y = loudness[max(0, -lag) : n + min(0, -lag)]
        out[lag] = float(np.corrcoef(x, y)[0, 1])
    return out


def main(argv: list[str]) -> None:
    index = Path(argv[0]) if argv else Path("data/cache/talking")
    print("| clip | speaker | r at 0 | best r | at shift (frames) |\n| --- | --- | --- | --- | --- |")
    for clip in load_index(index / "index.json" if index.is_dir() else index):
        sequence = LandmarkSequence.load(clip.landmarks)
        audio = load_audio(clip.audio, SAMPLE_RATE, silence_dbfs=None)
        hop = SAMPLE_RATE / sequence.fps
        frames = min(sequence.num_frames, int(len(audio) / hop))
        rms = [np.sqrt(np.mean(audio[int(i * hop) : int((i + 1) * hop)] ** 2)) for i in range(frames)]
        lags = lag_correlations(mouth_opening(sequence.mesh)[:frames], np.log(np.asarray(rms) + 1e-6))
        best = max(lags, key=lags.get)
        print(f"| {clip.id} | {clip.speaker} | {lags[0]:.2f} | {lags[best]:.2f} | {best:+d} |")


if __name__ == "__main__":
    main(sys.argv[1:])
