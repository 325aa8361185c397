"""What every audio encoder provides, and the windowing that keeps long audio in bounded memory.

An audio encoder maps a batch of 16 kHz mono waveforms ``(B, N)`` to one feature vector per video
frame ``(B, T, D)``, for a frame count ``T`` the caller chooses (normally
:func:`common.audio.num_frames_for`). Encoders are plain ``nn.Module`` parts of the diffusers
models in :mod:`audio2lmk.models`; their configuration is a JSON-able dict with a ``type`` key
(:meth:`AudioEncoder.to_config`), stored as the model's ``encoder`` config entry.

Long audio. Frame-local work (convolutions, resampling to the frame rate) runs over the whole clip,
in sample chunks where it matters for memory. The context transformer, whose cost is quadratic in
length, runs on windows: a clip of at most ``window + 2 * context`` frames is encoded in one pass;
a longer clip is cut into ``ceil(T / window)`` near-equal core windows, each encoded together with
``context`` frames of audio on either side, and only the core frames are kept. Every frame
therefore sees at least ``context`` frames (seconds: ``context_seconds``) of audio either side
(less only at the clip's ends, as in a single pass), and memory is bounded by the window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from common.audio import SAMPLE_RATE


class AudioEncoder(nn.Module):
    """Base class: waveform ``(B, N)`` at 16 kHz -> per-frame features ``(B, T, output_dim)``."""

    sample_rate: int = SAMPLE_RATE
    output_dim: int
    # Encoders that read phone ids (:mod:`audio2lmk.encoders.phoneme`) take them as ``forward(..., phones=)``.
    uses_phones: bool = False

    def __init__(self, window_seconds: float = 30.0, context_seconds: float = 5.0) -> None:
        super().__init__()
        if window_seconds <= 0 or context_seconds < 0:
            raise ValueError(
                f"window_seconds must be > 0 and context_seconds >= 0, got {window_seconds}, {context_seconds}"
            )
        self.window_seconds = float(window_seconds)
        self.context_seconds = float(context_seconds)

    def to_config(self) -> dict:
        """JSON-able config that rebuilds this encoder's architecture (no weights, no downloads)."""
        raise NotImplementedError

    def forward(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Encode ``audio`` (B, N) float 16 kHz into ``(B, num_frames, output_dim)`` features."""
        raise NotImplementedError

    def encode(
        self, audio: torch.Tensor, num_frames: int, phones: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``forward``, with the clip's precomputed phone ids (B, N // 160 + 1) for encoders that use them."""
        if self.uses_phones:
            return self(audio, num_frames, phones=phones)
        return self(audio, num_frames)

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the frame-local front end (a no-op where there is nothing to freeze)."""

    def window_frames(self, num_samples: int, num_frames: int) -> tuple[int, int]:
        """(window, context) in frames for a clip of ``num_samples`` samples and ``num_frames`` frames."""
        frames_per_second = num_frames * self.sample_rate / max(num_samples, 1)
        window = max(1, round(self.window_seconds * frames_per_second))
        context = max(0, round(self.context_seconds * frames_per_second))
        return window, context


def run_windowed(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, window: int, context: int
) -> torch.Tensor:
    """Apply a sequence model ``fn`` (B, T, C) -> (B, T, D) to ``x`` in overlapping windows.

    ``T <= window + 2 * context`` is one call on the whole sequence. Otherwise the sequence is
    split into ``ceil(T / window)`` near-equal cores; each call sees its core plus up to
    ``context`` frames either side, and the core frames of the outputs are concatenated.
    """
    total = x.shape[1]
    if total <= window + 2 * context:
        return fn(x)
    pieces = math.ceil(total / window)
    bounds = [round(i * total / pieces) for i in range(pieces + 1)]
    outputs = []
    for start, end in itertools.pairwise(bounds):
        lo, hi = max(0, start - context), min(total, end + context)
        out = fn(x[:, lo:hi])
        outputs.append(out[:, start - lo : end - lo])
    return torch.cat(outputs, dim=1)


def resample_to_frames(features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linearly resample ``(B, L, C)`` features to ``(B, num_frames, C)``.

    AniPortrait's convention (``F.interpolate(..., mode="linear", align_corners=True)``): the first
    and last feature vectors land on the first and last frame.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if features.shape[1] == num_frames:
        return features
    out = nn.functional.interpolate(
        features.transpose(1, 2), size=num_frames, mode="linear", align_corners=True
    )
    return out.transpose(1, 2)
