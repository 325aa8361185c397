"""The bounds every command checks its options and file fields against, before any work (README: "Limits").

A value outside them is one :class:`~common.errors.UserError` naming the option as the user wrote it
(``--fps``, ``width=``) and the range, instead of a memory error minutes later.
"""

from __future__ import annotations

import math
from typing import Any

from common.errors import UserError

MAX_IMAGE_SIDE = 8192  # pixels: images, videos, landmark files' image_size, render sizes
MAX_GENERATE_SIDE = 2048  # pixels: generate's width / height (multiples of 8)
MAX_FPS = 240.0  # frames per second: landmark files, resampling, extraction of images
MAX_STEPS = 1000  # denoising steps (the schedules have 1000 timesteps)
MAX_SMOOTH = 1001  # frames: temporal smoothing windows
MAX_MOUTH_SCALE = 10.0
MAX_EXPRESSION_SCALE = 10.0
MAX_SEED = 2**63 - 1


def number(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    integer: bool = False,
    low_open: bool = False,
    hint: str = "",
) -> Any:
    """``value`` if it is a (whole, with ``integer``) finite number in ``[low, high]`` (``(low, high]`` with
    ``low_open``), else a :class:`UserError` naming ``name``. ``hint`` is appended to the message."""
    kind = "a whole number" if integer else "a number"
    bounds = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer and isinstance(value, float):
        ok = value.is_integer()
    if ok:
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        given = f"{name}{value!r}" if name.endswith("=") else f"{name} {value!r}"
        raise UserError(f"{given} must be {kind} {bounds}{'; ' + hint if hint else ''}")
    return int(value) if integer else value


def fraction(value: Any, name: str) -> float:
    """A share between 0 and 1."""
    return number(value, name, 0.0, 1.0, hint="a fraction, e.g. 0.5 for half")


def seed(value: Any, name: str = "seed=") -> int | None:
    """A seed: null or a whole number from 0 to 2**63 - 1."""
    if value is None:
        return None
    return number(value, name, 0, MAX_SEED, integer=True, hint="e.g. seed=42")
