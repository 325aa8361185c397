"""Lip sync without ground truth: the mouth's opening against the loudness of the speech.

Per video frame ``t`` the audio envelope is the RMS of the 16 kHz samples the frame spans (log-compressed),
and the mouth opening the inner-lip gap over the inter-ocular distance (:meth:`.faces.FaceTrack.mouth_opening`).
Their correlation ``c(k)`` with the video shifted ``k`` frames later than the audio is taken for ``k`` in
``[-15, 15]`` (each series normalised over the frames both cover):

- ``av_offset_frames``: the ``k`` of the largest correlation (0 for a video in sync; ``k > 0``: the mouth
  moves ``k`` frames after the sound);
- ``av_confidence``: that largest correlation minus the median over all offsets (SyncNet's definition of
  confidence, applied to this correlation);
- ``sync_corr``: ``c(0)``.

SyncNet's LSE-C / LSE-D (Prajwal et al. 2020, as Wav2Lip reports them) are in :mod:`.syncnet` and need the
user's copy of SyncNet's released weights.
"""

from __future__ import annotations

import numpy as np

from common.evaluation.faces import MOUTH_STILL
from common.evaluation.scores import Scores, pearson

SAMPLE_RATE = 16000
MAX_OFFSET = 15
SYNC_METRICS = ("av_offset_frames", "av_confidence", "sync_corr")


def audio_envelope(
    audio: np.ndarray, fps: float, num_frames: int, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """(num_frames,) log RMS of the samples each video frame spans (frames past the audio's end: NaN)."""
    edges = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(int)
    out = np.full(num_frames, np.nan)
    for t in range(num_frames):
        chunk = audio[edges[t] : edges[t + 1]]
        if len(chunk):
            out[t] = np.log(np.sqrt(np.mean(np.square(chunk, dtype=np.float64))) + 1e-4)
    return out


def shifted_correlations(
    mouth: np.ndarray, envelope: np.ndarray, max_offset: int = MAX_OFFSET
) -> dict[int, float]:
    """``{k: corr(mouth[t + k], envelope[t])}`` for every ``k`` with a defined correlation."""
    out = {}
    n = min(len(mouth), len(envelope))
    for k in range(-max_offset, max_offset + 1):
        if abs(k) > n - 3:  # fewer than 3 frames overlap
            continue
        if k >= 0:
            a, b = mouth[k:n], envelope[: n - k]
        else:
            a, b = mouth[: n + k], envelope[-k:n]
        value, _ = pearson(a, b, MOUTH_STILL)
        if value is not None:
            out[k] = value
    return out


def sync_scores(mouth: np.ndarray, audio: np.ndarray | None, fps: float) -> Scores:
    """The three scores above from a mouth-opening series (NaN where no face) and the clip's audio."""
    scores = Scores()
    if audio is None:
        scores.skip(SYNC_METRICS, "the video has no audio track and no audio file beside it")
        return scores
    envelope = audio_envelope(audio, fps, len(mouth))
    at_zero, reason = pearson(mouth, envelope, MOUTH_STILL)
    scores.set("sync_corr", at_zero, reason, null=True)
    correlations = shifted_correlations(np.asarray(mouth, dtype=np.float64), envelope)
    if not correlations:
        scores.skip(("av_offset_frames", "av_confidence"), reason or "no offset gives a defined correlation")
        return scores
    best = max(correlations, key=lambda k: (correlations[k], -abs(k)))
    scores.set("av_offset_frames", float(best))
    scores.set("av_confidence", correlations[best] - float(np.median(list(correlations.values()))))
    return scores
