"""Paths that may be local or on shared storage named by an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

Local paths (and ``file://`` URLs) go through :mod:`common.atomic`: written to a temporary file beside the
target, then renamed, so a reader never sees a partial file.

Other URLs go through fsspec (the store's package must be installed: ``s3fs`` for ``s3://``, ``gcsfs`` for
``gs://``). Most of them cannot rename atomically (an object store's "move" is a copy and a delete), so each
file is written in one call (``pipe_file`` / ``put_file``). What remains guaranteed:

* object stores (S3, GCS, Azure) make an object visible only once its upload has completed, so a crashed
  writer leaves no partial object, and readers see the old object or the new one;
* on stores without that property (FTP, SFTP, ...), a crash can leave a partial file. Every command that
  writes there writes an item's *record* last (``common.preprocess``: ``clips/ID.json``), and counts an item as
  finished only when its record is there, so a rerun redoes an item whose outputs may be partial.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import UserError


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a store other than the local file system (``scheme://...``, not ``file://``)."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def local(path: str | os.PathLike) -> Path:
    """A local path (``file://`` stripped)."""
    return Path(os.fspath(path).removeprefix("file://")).expanduser()


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path within it."""
    try:
        import fsspec
    except ImportError:
        raise UserError(f"{url}: URLs need fsspec (pip install fsspec) and the store's package") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise UserError(
            f"{url}: cannot open this store ({err}); install its fsspec package (s3fs for s3://, gcsfs for gs://)"
        ) from None


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a local path or a URL."""
    if is_url(base):
        scheme, rest = os.fspath(base).split("://", 1)
        joined = posixpath.normpath("/".join([rest.rstrip("/"), *(p.strip("/") for p in parts)]))
        return f"{scheme}://{joined.lstrip('/') if not rest.startswith('/') else joined}"
    return str(local(base).joinpath(*parts))


def _ask(path: str | os.PathLike, store_method: str, local_method: str) -> Any:
    """``fs.<store_method>(inner)`` for a URL, ``Path.<local_method>()`` for a local path."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        return getattr(fs, store_method)(inner)
    return getattr(local(path), local_method)()


def exists(path: str | os.PathLike) -> bool:
    return _ask(path, "exists", "exists")


def is_file(path: str | os.PathLike) -> bool:
    return _ask(path, "isfile", "is_file")


def is_dir(path: str | os.PathLike) -> bool:
    return _ask(path, "isdir", "is_dir")


def read_bytes(path: str | os.PathLike) -> bytes:
    return _ask(path, "cat_file", "read_bytes")


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` as a whole (atomically for local paths; see the module docstring)."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        try:
            fs.makedirs(fs._parent(inner), exist_ok=True)
            fs.pipe_file(inner, data)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err}") from None
        return os.fspath(path)
    from common.atomic import atomic_output

    with atomic_output(local(path)) as tmp:
        tmp.write_bytes(data)
    return str(local(path))


def write_text(path: str | os.PathLike, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def upload(source: Path, path: str | os.PathLike) -> str:
    """Copy the local file ``source`` to ``path`` as a whole (atomically for local paths)."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        try:
            fs.makedirs(fs._parent(inner), exist_ok=True)
            fs.put_file(str(source), inner)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err}") from None
        return os.fspath(path)
    from common.atomic import atomic_output

    with atomic_output(local(path)) as tmp:
        shutil.copyfile(source, tmp)
    return str(local(path))


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[Path]:
    """A local file with the content of ``path``: the file itself when local, else a temporary download."""
    if not is_url(path):
        yield local(path)
        return
    fs, inner = filesystem(os.fspath(path))
    with tempfile.TemporaryDirectory(prefix="talking-portrait-") as folder:
        copy = Path(folder) / Path(inner).name
        fs.get_file(inner, str(copy))
        yield copy


def list_files(folder: str | os.PathLike, suffixes: tuple[str, ...]) -> list[str]:
    """Every file below ``folder`` (recursively) whose suffix (lower case) is in ``suffixes``, sorted."""
    if is_url(folder):
        fs, inner = filesystem(os.fspath(folder))
        base = inner.rstrip("/") + "/"
        found = [p for p in fs.find(inner) if Path(p).suffix.lower() in suffixes and p.startswith(base)]
        return sorted(join(folder, p[len(base) :]) for p in found)
    root = local(folder)
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def relative(path: str, root: str) -> str:
    """``path`` below ``root`` (both local or both URLs of one store), with '/' separators."""
    if is_url(path) or is_url(root):
        base = os.fspath(root).rstrip("/") + "/"
        if not path.startswith(base):
            raise ValueError(f"{path} is not below {root}")
        return path[len(base) :]
    return local(path).resolve().relative_to(local(root).resolve()).as_posix()
