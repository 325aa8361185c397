"""Summaries over clips: the mean and a 95 % bootstrap interval (percentiles of resampled means)."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def summarize(values: list[float], seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """``{"mean", "ci95": [lo, hi], "n"}`` over the clips' values (None entries are left out; one clip: the
    interval is that value)."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(data):
        return {"mean": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(data.mean()), "ci95": [float(lo), float(hi)], "n": len(data)}
