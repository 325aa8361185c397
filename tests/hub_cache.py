"""A Hugging Face hub cache filled by the tests, for the converters' ``--from-hub`` code path offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from common.hub import revision_of

# The commit a branch or tag of a test cache points to (a real cache records it in refs/<name>).
BRANCH_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache: Path, repo_id: str, filename: str, source: Path) -> Path:
    """Copy ``source`` into ``cache`` as ``filename`` of ``repo_id`` at its pinned revision (huggingface_hub's
    layout: ``models--ORG--NAME/snapshots/COMMIT/FILENAME``, ``refs/BRANCH`` naming the commit)."""
    revision = revision_of(repo_id)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = revision if len(revision) == 40 else BRANCH_COMMIT
    if commit != revision:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def put_folder_in_hub_cache(cache: Path, repo_id: str, folder: Path, prefix: str = "") -> None:
    """Every file of ``folder`` into the cache of ``repo_id``, under ``prefix`` (e.g. ``image_encoder/``)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            put_in_hub_cache(cache, repo_id, prefix + path.relative_to(folder).as_posix(), path)
