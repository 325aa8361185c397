"""One exception type for bad user input, and the CLI wrapper that turns it into exit code 2."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input that the user can fix. The message names the file and says what to do."""


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI entry so a :class:`UserError` prints one line and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = _exit_on_signals()
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_on_signals() -> dict[int, object]:
    """SIGTERM and SIGHUP end the command through Python's exit path, so ``finally`` blocks remove temporary
    files (SIGINT already does, as KeyboardInterrupt). Only in the main thread; returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
            previous[signum] = signal.signal(signum, _terminate)
    return previous
