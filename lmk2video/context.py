"""Context windows: how a video of any length is denoised by a motion model trained on short clips.

At every denoising step the video's frames are covered by windows of ``context_frames`` frames;
the denoising UNet runs on each window and each frame's prediction is the weighted average of
the predictions of the windows that contain it (AnimateDiff's "uniform" context schedule, as
AniPortrait uses it, with three differences of ours):

* no wrap-around: AnimateDiff's schedule closes the loop, so its last windows continue with the
  video's first frames (the start and the end of a talking-head video are then denoised as if
  they were neighbours). Here windows start every ``context_frames - context_overlap`` frames and
  the last window is moved back to end on the last frame, so every window is a run of real
  neighbours of full length and consecutive windows overlap by at least ``context_overlap``;
* by default the same windows at every step (AniPortrait too passes step 0 to the schedule every step), so
  any seam between windows lands on the same frames at every step. ``context_shift`` moves the window grid
  from step to step by a fraction of the window step taken from AnimateDiff's ordered-halving sequence
  (0, 1/2, 1/4, 3/4, 1/8, ...: :func:`step_offset`); the first window still starts on frame 0, so shifted
  steps may use one window more;
* ``pyramid`` weighting by default (:func:`window_weights`): frames near a window's edge count less. On the
  ``sample_motion`` model it beat AniPortrait's uniform average at the same cost on landmark distance,
  identity, jitter and jitter at window borders, and beat shifted windows too (``bench/bench_windows.py``,
  README "Fast generation").

``context_stride`` > 1 adds dilated windows, as AnimateDiff's: level ``k`` (``k = 0 ..
context_stride - 1``) takes every ``2**k``-th frame, ``context_frames`` of them per window, for
each of the ``2**k`` phases, so long-range windows see a longer stretch of the video. Levels
whose dilated window would be longer than the video are left out.

A video no longer than ``context_frames`` is one window: windowed generation then equals
single-window generation.
"""

from __future__ import annotations

import numpy as np

from common.errors import UserError

WEIGHTINGS = ("uniform", "pyramid")
SHIFT_WITH_CACHE = (
    "context_shift=true and cache_interval>1 cannot be combined (DeepCache keeps each window's deep features "
    "for the next steps, shifted windows hold other frames); choose one"
)


def check_context(context_frames: int, context_overlap: int, context_stride: int) -> None:
    """Raise :class:`UserError` for window settings that cannot tile a video."""
    if int(context_frames) < 1:
        raise UserError(f"context_frames={context_frames} must be at least 1 (16 is usual)")
    if not 0 <= int(context_overlap) < int(context_frames):
        raise UserError(
            f"context_overlap={context_overlap} must be at least 0 and less than context_frames={context_frames}"
        )
    if int(context_stride) < 1:
        raise UserError(f"context_stride={context_stride} must be at least 1 (1 = no dilated windows)")


def fit_context(
    context_frames: int, context_overlap: int, limit: int | None, *, strict: bool, source: str = "the model"
) -> tuple[int, int]:
    """Window length and overlap that the motion modules accept (``limit``: their ``max_position``; None: any).

    ``strict``: a longer window is a :class:`UserError` (the user asked for it); else it is shortened to
    ``limit`` and the overlap kept below it (validation and evaluation, which use what the model allows).
    """
    if limit is None or context_frames <= limit:
        return int(context_frames), int(context_overlap)
    if strict:
        raise UserError(
            f"context_frames={context_frames} is longer than the motion modules' max_position={limit} "
            f"({source}); set context_frames={limit} or less"
        )
    return int(limit), min(int(context_overlap), int(limit) - 1)


def ordered_halving(index: int) -> float:
    """The ``index``-th term of 0, 1/2, 1/4, 3/4, 1/8, 5/8, ... (the bits of ``index`` reversed, as a fraction):
    AnimateDiff's sequence, which spreads successive offsets evenly."""
    value, scale = 0.0, 0.5
    while index:
        value += scale * (index & 1)
        index >>= 1
        scale /= 2
    return value


def step_offset(step_index: int, context_frames: int, context_overlap: int) -> int:
    """Where the window grid starts at denoising step ``step_index`` with ``context_shift``: a whole number of
    frames in ``[0, context_frames - context_overlap)``."""
    return int(ordered_halving(step_index) * (context_frames - context_overlap))


def _tile(frames: list[int], size: int, overlap: int, offset: int = 0) -> list[list[int]]:
    """Windows of ``size`` consecutive entries of ``frames``: one at the start, then every ``size - overlap``
    from ``offset``, the last end-aligned."""
    if len(frames) <= size:
        return [frames]
    last = len(frames) - size
    starts = sorted({0, last, *range(offset, last + 1, size - overlap)})
    return [frames[s : s + size] for s in starts]


def context_windows(
    num_frames: int,
    context_frames: int = 16,
    context_overlap: int = 4,
    context_stride: int = 1,
    offset: int = 0,
) -> list[list[int]]:
    """Frame indices of every window (see the module docstring). Every frame is in at least one window.

    Args:
        num_frames: frames of the video.
        context_frames: frames per window (at most the motion modules' ``max_position``).
        context_overlap: frames shared by consecutive windows (at least; the last window may share more).
        context_stride: number of dilation levels (1: contiguous windows only).
        offset: start of the window grid after the first window (:func:`step_offset`; 0: unshifted).
    """
    check_context(context_frames, context_overlap, context_stride)
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if num_frames <= context_frames:
        return [list(range(num_frames))]
    windows: list[list[int]] = []
    for level in range(int(context_stride)):
        dilation = 2**level
        if (context_frames - 1) * dilation + 1 > num_frames:
            break
        for phase in range(dilation):
            frames = list(range(phase, num_frames, dilation))
            windows += _tile(frames, context_frames, context_overlap, offset)
    return windows


def window_weights(length: int, weighting: str = "uniform") -> np.ndarray:
    """Per-frame weights (length,) of one window's prediction in the average.

    ``uniform``: all 1 (AniPortrait). ``pyramid``: ``min(i + 1, length - i)``, so frames near a
    window's edge, which see less temporal context, count less and seams between windows fade.
    """
    if weighting not in WEIGHTINGS:
        raise UserError(f"context_weighting={weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if weighting == "uniform":
        return np.ones(length, dtype=np.float64)
    i = np.arange(length, dtype=np.float64)
    return np.minimum(i + 1, length - i)
