"""Shared fixtures. Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"


def shared_file(*parts: str) -> Path:
    """Path under ../shared/data, skipping the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"needs ../shared/data/{'/'.join(parts)} (the project's shared test data) beside the checkout"
        )
    return path


@pytest.fixture(scope="session")
def face_model() -> Path:
    """MediaPipe's FaceLandmarker model bundle from ../shared."""
    return shared_file("mediapipe", "face_landmarker_v2_with_blendshapes.task")


@pytest.fixture
def rng() -> object:
    import numpy as np

    return np.random.default_rng(0)
