"""Shared fixtures. Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """One torch thread: tiny models gain nothing from more, and a busy 2-core machine makes them crawl."""
    import torch

    torch.set_num_threads(1)
    # A stray SIGPROF (a profiling timer some native library arms late in a long run) would kill the whole
    # test process with exit 155 and no report; nothing in the suite profiles, so ignore the signal.
    if hasattr(signal, "SIGPROF"):
        signal.signal(signal.SIGPROF, signal.SIG_IGN)


# What a test may skip for: things a user's machine (or CI's) may lack. Anything else the suite needs is
# installed by `make test` (the Makefile's EXTRAS), so on CI any other skip is a failure.
ALLOWED_SKIPS = ("../shared", "GPU", "CUDA")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if not any(allowed in reason for allowed in ALLOWED_SKIPS):
            report.outcome = "failed"
            report.longrepr = (
                f"skipped on CI for a reason CI must not have: {reason} (install it in the Makefile)"
            )


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


def detect_frames(video: Path, model: Path, max_frames: int | None = None):
    """MediaPipe's raw results on a clip: normalised landmarks (T, 478, 3), matrices (T, 4, 4), image size."""
    import numpy as np

    from common.detect import FaceDetector
    from common.video import iter_frames

    landmarks, matrices = [], []
    size = None
    with FaceDetector(model, mode="video") as detector:
        for i, (t, rgb) in enumerate(iter_frames(video)):
            if max_frames is not None and i >= max_frames:
                break
            size = rgb.shape[:2]
            faces = detector.detect(rgb, round(t * 1000))
            assert len(faces) == 1, f"{video.name} frame {i}: expected one face"
            landmarks.append(faces[0].landmarks)
            matrices.append(faces[0].matrix)
    return np.stack(landmarks), np.stack(matrices), size


@pytest.fixture(scope="session")
def detected_clip(face_model):
    """The first 90 frames of a shared talking clip, detected once per session."""
    return detect_frames(shared_file("talking", "feifeili_clip3.mp4"), face_model, max_frames=90)


@pytest.fixture(autouse=True)
def _loggers_enabled():
    """In-process Hydra runs may configure logging with ``disable_existing_loggers`` and another root level
    (``hydra/job_logging=disabled``: ERROR); later tests read our loggers through caplog, so switch them back
    on and restore the root level after every test."""
    import logging

    root_level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(root_level)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.disabled:
            logger.disabled = False


def run_main(main, args: list[str], capsys) -> tuple[int, str]:
    """A Hydra entry point's ``main()`` run in this process with ``args`` (fast: no interpreter start, nothing
    imported again), logging left as it is; returns (exit status, stderr). Relative paths are taken from the
    current folder (``monkeypatch.chdir``)."""
    import sys
    from unittest import mock

    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["main", *args, "hydra/job_logging=disabled"]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, capsys.readouterr().err
