"""Write outputs atomically: into a temporary file beside the target, then rename.

- Temporary names are hidden and carry the writing process's id and machine: ``.NAME.PID@HOST.RANDOM[.suffix]``.
  A later write of the same target removes the temporaries of writers that are provably gone (written on this
  machine by a process id that no longer exists) and never those of a live process, such as a concurrent job,
  nor those of another machine writing into the same shared folder (a cluster's workers), whose processes
  cannot be seen from here.
- Outputs get the permissions of a normally created file or folder: 0666 / 0777 minus the umask (the
  temporary files Python creates are 0600 / 0700).
- The write path's operating-system errors (no space left, a read-only or unwritable folder, a folder where
  a file should be) become one :class:`~common.errors.UserError` naming the output; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError

# errno values that mean "this output cannot be written here", whatever the writer was doing.
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; choose another output path",
    errno.EFBIG: "the file is too large for this file system; write elsewhere",
}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, folder: bool) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode a plain ``open``/``mkdir`` would have."""
    mask = _umask()
    if not folder:
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_error(err: OSError, target: str | os.PathLike) -> UserError:
    """``err``, raised while writing ``target``, as the user's error: what went wrong and what to do."""
    reason = _WRITE_ERRNOS.get(err.errno)
    if reason is None:
        if isinstance(err, IsADirectoryError):
            reason = "a folder is in the way; give a file name for the output"
        elif isinstance(err, NotADirectoryError):
            reason = "a file is in the way of its folder; choose another output path"
        elif isinstance(err, PermissionError):
            reason = "permission denied; choose a folder you can write to"
        else:
            reason = f"{err.strerror or err}; choose another output path"
    return UserError(f"cannot write {target}: {reason}")


def _is_write_error(err: OSError, tmp: Path) -> bool:
    """Whether ``err`` came from writing ``tmp`` (or from a full disk), not from reading an input."""
    if err.errno in _WRITE_ERRNOS:
        return True
    return err.filename is not None and Path(str(err.filename)).resolve().is_relative_to(tmp.resolve())


def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits and '-' only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}@{host_tag()}."


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# The hidden entries of each output folder, listed once per process: a folder of a large corpus holds
# many thousands of files, and listing it for every file written would make writing them quadratic.
_HIDDEN_ENTRIES: dict[Path, list[str]] = {}


def remove_stale_temporaries(parent: Path, name: str) -> list[Path]:
    """Remove the temporaries of ``parent / name`` left by writers that no longer exist; returns them.

    The folder is listed on its first write in this process; temporaries left later by other processes
    are removed by a later run."""
    hidden = _HIDDEN_ENTRIES.get(parent)
    if hidden is None:
        try:
            hidden = [entry.name for entry in os.scandir(parent) if entry.name.startswith(".")]
        except OSError:
            hidden = []
        _HIDDEN_ENTRIES[parent] = hidden
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:old\.)?(\d+)(?:@([A-Za-z0-9-]+))?\.")
    removed = []
    for entry_name in list(hidden):
        match = pattern.match(entry_name)
        if match is None or match.group(2) not in (None, host_tag()):  # another machine's: not provably dead
            continue
        if int(match.group(1)) == os.getpid() or process_exists(int(match.group(1))):
            continue
        entry = parent / entry_name
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        hidden.remove(entry_name)
    return removed


def _make_parent(path: str | os.PathLike) -> Path:
    """Create ``path``'s parent folder if needed; returns it."""
    parent = Path(path).expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create output folder {parent}: {err.strerror}; choose another output path"
        ) from None
    return parent


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path``'s parent folder if needed and check it is writable."""
    parent = _make_parent(path)
    _probe(parent, Path(path))
    return parent


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in ``folder``: the only reliable test (root passes ``os.access`` everywhere)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=_temp_prefix(target.name)):
            pass
    except OSError as err:
        raise write_error(err, target) from None


def check_output(path: str | os.PathLike, overwrite: bool, how: str = "overwrite=true") -> Path:
    """Check before any work that ``path`` can be written (nothing is left behind).

    An existing file is kept unless ``overwrite`` (``how`` says how the user asks for that: ``overwrite=true``
    for Hydra commands, ``--overwrite`` for the others); an existing folder, a folder under a regular file
    and a folder that cannot be written to are errors naming the path.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"{target} is a folder; give a file name for the output")
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; choose another output name or pass {how} to replace it")
    return _check_parent(target)


def _check_parent(target: Path) -> Path:
    """The nearest existing folder above ``target`` must be a folder we can create files in."""
    folder = target.resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(
            f"cannot write {target}: {folder} is a file, not a folder; choose another output path"
        )
    _probe(folder, target)
    return target


def check_output_folder(path: str | os.PathLike, overwrite: bool, how: str = "overwrite=true") -> Path:
    """:func:`check_output` for an output folder: an existing one is kept unless ``overwrite``."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; give a folder name for the output")
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; choose another output folder or pass {how} to replace it")
    return _check_parent(target)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` defaults to the target's own suffix so that libraries choosing a format by file
    extension (``np.savez``, PyAV) behave as for the final name.
    """
    target = Path(path).expanduser()
    parent = _make_parent(target)  # creating the temporary file below is the writability test
    remove_stale_temporaries(parent, target.name)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=_temp_prefix(target.name),
            suffix=suffix if suffix is not None else target.suffix,
            dir=parent,
        )
    except OSError as err:
        raise write_error(err, target) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as err:
            if _is_write_error(err, tmp):
                raise write_error(err, target) from None
            raise
        try:
            _apply_umask(tmp, folder=False)
            os.replace(tmp, target)
        except OSError as err:
            raise write_error(err, target) from None
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
    parent = _make_parent(dst)  # creating the temporary folder below is the writability test
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; choose another output folder or allow overwriting")
    remove_stale_temporaries(parent, dst.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dst.name), dir=parent))
    except OSError as err:
        raise write_error(err, dst) from None
    try:
        try:
            yield tmp
        except OSError as err:
            if _is_write_error(err, tmp):
                raise write_error(err, dst) from None
            raise
        try:
            _apply_umask(tmp, folder=True)
            if dst.exists():
                if not overwrite:
                    raise UserError(f"{dst} appeared while it was being written; nothing was written")
                old = Path(
                    tempfile.mkdtemp(prefix=f".{dst.name}.old.{os.getpid()}@{host_tag()}.", dir=parent)
                )
                os.replace(dst, old / dst.name)
                os.replace(tmp, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dst)
        except OSError as err:
            raise write_error(err, dst) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
