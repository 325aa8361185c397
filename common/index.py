"""The data-set index written by ``common.preprocess`` and read by both training stages.

``index.json`` (version 1) in the output folder::

    {"version": 1, "sample_rate": 16000,
     "clips": [{"id": "Obama_clip1", "speaker": "Obama",
                "video": "../talking/Obama_clip1.mp4",      # relative to the index's folder
                "landmarks": "clips/Obama_clip1.npz", "audio": "clips/Obama_clip1.wav",
                "frames": 602, "fps": 30.0, "duration": 20.07, "height": 256, "width": 256}, ...]}

Paths are relative to the folder holding ``index.json`` (absolute when on another drive), so the
folder can move together with its sources.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import UserError

INDEX_VERSION = 1
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class ClipRecord:
    """One accepted clip. ``video``, ``landmarks`` and ``audio`` are absolute paths once loaded."""

    id: str
    speaker: str
    video: str
    landmarks: str
    audio: str
    frames: int
    fps: float
    duration: float
    height: int
    width: int


def _rel(path: str | os.PathLike, root: str | Path) -> str:
    from common import storage

    if storage.is_url(path) or storage.is_url(root):
        try:
            return storage.relative(str(path), str(root))
        except ValueError:  # elsewhere: kept as it is
            return str(path)
    try:
        return os.path.relpath(Path(path).resolve(), Path(root).resolve())
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def write_index(root: str | os.PathLike, clips: list[ClipRecord], sample_rate: int = 16000) -> Path:
    """Write ``root/index.json`` atomically (``root`` may be a URL); clip paths are stored relative to ``root``."""
    from common import storage

    entries = []
    for clip in sorted(clips, key=lambda c: c.id):
        entry = asdict(clip)
        for key in ("video", "landmarks", "audio"):
            entry[key] = _rel(entry[key], root)
        entries.append(entry)
    text = json.dumps({"version": INDEX_VERSION, "sample_rate": sample_rate, "clips": entries}, indent=1)
    written = storage.write_text(storage.join(root, INDEX_NAME), text)
    return written if storage.is_url(written) else Path(written)


def load_index(path: str | os.PathLike) -> list[ClipRecord]:
    """Read an index (the file or the folder holding it); paths come back absolute."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        raise UserError(
            f"{path}: no data-set index; create it with `python -m common.preprocess input_dir=... output_dir=...`"
        )
    try:
        data = json.loads(path.read_text())
        version = data["version"]
        entries = data["clips"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a valid data-set index ({err}); re-run common.preprocess") from None
    if version != INDEX_VERSION:
        raise UserError(
            f"{path}: index version {version}, expected {INDEX_VERSION}; re-run common.preprocess"
        )
    root = path.parent
    clips = []
    for entry in entries:
        for key in ("video", "landmarks", "audio"):
            entry[key] = str((root / entry[key]).resolve())
        clips.append(ClipRecord(**entry))
    if not clips:
        raise UserError(f"{path}: the index lists no clips; check the preprocessing report beside it")
    return clips


def split_by_speaker(
    clips: list[ClipRecord],
    val_speakers: list[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Split clips so that no speaker is in both parts.

    ``val_speakers`` names the held-out speakers; otherwise ``round(val_fraction * n_speakers)``
    speakers (at least one when there are two or more) are drawn with ``seed``.
    """
    speakers = sorted({c.speaker for c in clips})
    if val_speakers is None:
        if len(speakers) < 2:
            raise UserError(
                f"only one speaker ({speakers[0]}) in the data set; a split by speaker needs at least two"
            )
        n_val = min(max(1, round(val_fraction * len(speakers))), len(speakers) - 1)
        val_speakers = sorted(random.Random(seed).sample(speakers, n_val))
    unknown = sorted(set(val_speakers) - set(speakers))
    if unknown:
        raise UserError(
            f"validation speaker(s) {', '.join(unknown)} not in the data set (speakers: {', '.join(speakers)})"
        )
    val = [c for c in clips if c.speaker in val_speakers]
    train = [c for c in clips if c.speaker not in val_speakers]
    if not train:
        raise UserError("every speaker is held out for validation; leave at least one for training")
    return train, val
