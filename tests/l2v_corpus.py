"""A tiny prepared corpus for the lmk2video training tests: two speakers, one short clip each.

The first ``CLIP_FRAMES`` frames of two shared talking clips (Obama, feifeili), written as videos with the
matching speech beside them and prepared with ``common.corpus.ensure_preprocessed`` (MediaPipe) once per test
session under pytest's base temp folder. Split with ``val_speakers=[feifeili]``.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_file

CLIPS = {"Obama_clip1": "Obama", "feifeili_clip3": "feifeili"}
CLIP_FRAMES = 40
VAL_SPEAKER = "feifeili"


def build_corpus(root: Path, face_model: Path) -> Path:
    """Prepare the corpus under ``root`` (nothing to do when its index exists); returns the index path."""
    from common.corpus import ensure_preprocessed, write_wav
    from common.video import iter_frames, write_video

    index = root / "data" / "index.json"
    if index.is_file():
        return index
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for name in CLIPS:
        frames = []
        for i, (_, rgb) in enumerate(iter_frames(shared_file("talking", f"{name}.mp4"))):
            if i >= CLIP_FRAMES:
                break
            frames.append(rgb)
        write_video(videos / f"{name}.mp4", [np.stack(frames)], fps=30)
        with wave.open(str(shared_file("talking", f"{name}.wav"))) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        write_wav(videos / f"{name}.wav", pcm[: CLIP_FRAMES * 16000 // 30])
    return ensure_preprocessed(
        str(videos), str(root / "data"), face_model=str(face_model), num_workers=1, progress=False
    )


def corpus_index(tmp_path_factory: pytest.TempPathFactory, face_model: Path) -> Path:
    """The corpus's index, built once per session (test modules wrap this in a fixture)."""
    return build_corpus(tmp_path_factory.getbasetemp() / "l2v_corpus", face_model)
