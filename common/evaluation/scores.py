"""Scores of one clip: numbers by metric name, and the reason for each metric that could not be computed."""

from __future__ import annotations

import dataclasses
import math

# Why the comparisons with a real video are missing when there is none (tools that score generated videos
# alone, such as the demo, leave these out of their notes).
NO_REAL_VIDEO = "no real video to compare with"


@dataclasses.dataclass
class Scores:
    values: dict[str, float | None] = dataclasses.field(default_factory=dict)
    not_computed: dict[str, str] = dataclasses.field(default_factory=dict)

    def set(self, name: str, value: float | None, reason: str | None = None, null: bool = False) -> None:
        """Record ``value``; a None or non-finite one is listed under ``not_computed`` with ``reason``, and
        kept as None (JSON null) in ``values`` when ``null`` (an undefined correlation), else left out."""
        if value is not None and math.isfinite(value):
            self.values[name] = float(value)
            return
        self.not_computed[name] = reason or "undefined"
        if null:
            self.values[name] = None

    def skip(self, names: tuple[str, ...] | list[str], reason: str) -> None:
        for name in names:
            self.not_computed[name] = reason

    def update(self, other: Scores) -> None:
        self.values.update(other.values)
        self.not_computed.update(other.not_computed)


def pearson(a, b, still: float = 0.0) -> tuple[float | None, str | None]:
    """Correlation of two series over their common finite entries; (None, reason) when it is undefined:
    fewer than 3 entries, or a series constant (``a`` counts as constant when its standard deviation is at
    most ``still``: a held mouth whose landmarks only carry the detector's noise)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None, f"fewer than 3 frames to correlate ({int(ok.sum())})"
    if still and a[ok].std() <= still:
        return None, f"the mouth does not move (its opening varies by at most {still:g} of the eye distance)"
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    if norm < 1e-12:
        return None, "a series is constant (e.g. a frozen mouth), so its correlation is undefined"
    return float((a * b).sum() / norm), None
