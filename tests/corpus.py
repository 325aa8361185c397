"""Tiny prepared corpora for the training tests: the first frames of some shared clips, prepared once."""

from __future__ import annotations

import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tests.conftest import shared_file


def build_excerpt_corpus(root: Path, face_model: Path, clips: Iterable[str], frames: int) -> Path:
    """The first ``frames`` frames of each shared talking clip in ``clips`` (with their speech), written as
    videos with a same-named wav under ``root/videos`` and prepared with ``common.corpus.ensure_preprocessed``
    into ``root/data`` (nothing to do when its index exists); returns the index path."""
    from common.corpus import ensure_preprocessed, write_wav
    from common.video import iter_frames, write_video

    index = root / "data" / "index.json"
    if index.is_file():
        return index
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for name in clips:
        rgb = []
        for i, (_, frame) in enumerate(iter_frames(shared_file("talking", f"{name}.mp4"))):
            if i >= frames:
                break
            rgb.append(frame)
        write_video(videos / f"{name}.mp4", [np.stack(rgb)], fps=30)
        with wave.open(str(shared_file("talking", f"{name}.wav"))) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        write_wav(videos / f"{name}.wav", pcm[: frames * 16000 // 30])
    return ensure_preprocessed(
        str(videos), str(root / "data"), face_model=str(face_model), num_workers=1, progress=False
    )
