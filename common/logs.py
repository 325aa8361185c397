"""Logging set-up shared by the command-line tools."""

from __future__ import annotations

import os
import sys


def quiet_libraries() -> None:
    """Errors only from diffusers' and transformers' loggers, so that a CLI's own messages and ``error:`` lines
    are not drowned in load reports.

    Cheap: libraries not imported yet are configured through the environment variables they read when they
    are imported, so a command that refuses its input never imports them.
    """
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        library = sys.modules.get(name)
        if library is not None:
            library.set_verbosity_error()
