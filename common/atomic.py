"""Write outputs atomically: into a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path``'s parent folder if needed and check it is writable."""
    parent = Path(path).expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create output folder {parent}: {err.strerror}; choose another output path"
        ) from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {parent} is not writable; choose another output path")
    return parent


def check_output(path: str | os.PathLike, overwrite: bool, how: str = "overwrite=true") -> Path:
    """Check before any work that ``path`` can be written (nothing is created).

    An existing file is kept unless ``overwrite`` (``how`` says how the user asks for that: ``overwrite=true``
    for Hydra commands, ``--overwrite`` for the others); an existing folder, a folder under a regular file
    and a folder that cannot be written to are errors naming the path.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"{target} is a folder; give a file name for the output")
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; choose another output name or pass {how} to replace it")
    folder = target.resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(
            f"cannot write {target}: {folder} is a file, not a folder; choose another output path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {target}: {folder} is not writable; choose another output path")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` defaults to the target's own suffix so that libraries choosing a format by file
    extension (``np.savez``, PyAV) behave as for the final name.
    """
    target = Path(path).expanduser()
    parent = ensure_writable_dir(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that becomes ``path`` on success and vanishes on error.

    An existing ``path`` is an error unless ``overwrite``; then it is replaced only once the new
    folder is complete.
    """
    dst = Path(path).expanduser()
    parent = ensure_writable_dir(dst)
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; choose another output folder or allow overwriting")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=parent))
    try:
        yield tmp
        if dst.exists():
            if not overwrite:
                raise UserError(f"{dst} appeared while it was being written; nothing was written")
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
