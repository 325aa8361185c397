"""Audio/mouth lag of the prepared shared clips: at which shift does the mouth opening best follow loudness?

For every clip of a prepared index (default ``data/cache/talking``, what audio2lmk training prepares), the
Pearson correlation of the mouth opening (:func:`common.edit.mouth_opening`) with the log RMS loudness of the
clip's audio per video frame (:func:`common.evaluation.sync.audio_envelope`), at shifts of -8..+8 frames
(:func:`common.evaluation.sync.shifted_correlations`). A negative best shift means the mouth moves before
the sound (anticipation, or an A/V offset in the recording). docs/audio2lmk-ablations.md.

    python bench/av_lag.py [INDEX_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.audio import SAMPLE_RATE, load_audio
from common.edit import mouth_opening
from common.evaluation.sync import audio_envelope, shifted_correlations
from common.index import load_index
from common.lmkfile import LandmarkSequence


def main(argv: list[str]) -> None:
    index = Path(argv[0]) if argv else Path("data/cache/talking")
    print("| clip | speaker | r at 0 | best r | at shift (frames) |\n| --- | --- | --- | --- | --- |")
    for clip in load_index(index / "index.json" if index.is_dir() else index):
        sequence = LandmarkSequence.load(clip.landmarks)
        audio = load_audio(clip.audio, SAMPLE_RATE, silence_dbfs=None)
        # The evaluation's own loudness and shifts (common.evaluation.sync), over the frames the audio covers.
        frames = min(sequence.num_frames, int(len(audio) * sequence.fps / SAMPLE_RATE))
        loudness = audio_envelope(audio, sequence.fps, frames)
        lags = shifted_correlations(mouth_opening(sequence.mesh)[:frames], loudness, max_offset=8)
        best = max(lags, key=lags.get)
        print(f"| {clip.id} | {clip.speaker} | {lags[0]:.2f} | {lags[best]:.2f} | {best:+d} |")


if __name__ == "__main__":
    main(sys.argv[1:])
