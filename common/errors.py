"""One exception type for bad user input, and the CLI wrapper that turns it into exit code 2."""

from __future__ import annotations

import functools
import sys
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
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper
