"""A tiny prepared corpus for the lmk2video training tests: two speakers, one short clip each.

The first ``CLIP_FRAMES`` frames of two shared talking clips (Obama, feifeili), written as videos with the
matching speech beside them and prepared with ``common.corpus.ensure_preprocessed`` (MediaPipe) once per test
session under pytest's base temp folder. Split with ``val_speakers=[feifeili]``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus import build_excerpt_corpus

CLIPS = {"Obama_clip1": "Obama", "feifeili_clip3": "feifeili"}
CLIP_FRAMES = 40
VAL_SPEAKER = "feifeili"


def build_corpus(root: Path, face_model: Path) -> Path:
    """Prepare the corpus under ``root`` (nothing to do when its index exists); returns the index path."""
    return build_excerpt_corpus(root, face_model, CLIPS, CLIP_FRAMES)


def corpus_index(tmp_path_factory: pytest.TempPathFactory, face_model: Path) -> Path:
    """The corpus's index, built once per session (test modules wrap this in a fixture)."""
    return build_corpus(tmp_path_factory.getbasetemp() / "l2v_corpus", face_model)
