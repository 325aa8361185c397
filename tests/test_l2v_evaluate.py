"""lmk2video.evaluate: the landmark-following metric (MediaPipe on frames vs conditioning landmarks) and the
model comparison with its two references (real frames, reference copy)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from common.detect import FaceDetector
from common.index import load_index
from lmk2video.data import load_excerpt
from lmk2video.following import evaluate, excerpt_targets, landmark_following
from tests.conftest import PROJECT_ROOT
from tests.l2v_corpus import VAL_SPEAKER, corpus_index
from tests.l2v_models import single_thread, tiny_pipeline

FRAMES = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory, face_model):
    index = corpus_index(tmp_path_factory, face_model)
    clip = next(c for c in load_index(index) if c.speaker == VAL_SPEAKER)
    return load_excerpt(clip, 0, FRAMES)


def test_real_frames_follow_their_landmarks_and_blank_frames_have_no_face(excerpt, face_model) -> None:
    targets = excerpt_targets(excerpt, (64, 64))
    assert targets["points"].shape == (FRAMES, 468, 2) and targets["real"].shape == (FRAMES, 64, 64, 3)
    with FaceDetector(face_model, mode="image") as detector:
        real = landmark_following(targets["real"], targets["points"], detector=detector)
        # The same frames against landmarks moved 5 px to the right: the error grows by about 5 px.
        shifted = landmark_following(targets["real"], targets["points"] + [5.0, 0.0], detector=detector)
        blank = landmark_following(np.zeros_like(targets["real"]), targets["points"], detector=detector)
    assert real.detection_rate == 1.0 and real.mean_error_px < 1.0
    assert shifted.detection_rate == 1.0 and 4.0 < shifted.mean_error_px - real.mean_error_px <= 5.0
    assert blank.detected == 0 and blank.mean_error_px is None and blank.errors_px == [None] * FRAMES
    assert blank.to_dict() == {"frames": FRAMES, "detected": 0, "detection_rate": 0.0, "mean_error_px": None}
    with pytest.raises(ValueError, match="must be"):
        landmark_following(targets["real"], targets["points"][:2], detector=object())


def test_evaluate_scores_each_model_and_both_references(excerpt, face_model, tmp_path) -> None:
    tiny_pipeline(motion=False).save_pretrained(tmp_path / "tiny")
    results = evaluate([str(tmp_path / "tiny")], excerpt, str(face_model), steps=2, video_dir=tmp_path)
    assert set(results) == {"real", "reference_copy", str(tmp_path / "tiny")}
    for scores in results.values():
        assert scores["frames"] == FRAMES and 0.0 <= scores["detection_rate"] <= 1.0
    assert results["real"]["detection_rate"] == 1.0
    assert results["real"]["mean_error_px"] < results["reference_copy"]["mean_error_px"]
    assert (tmp_path / "tiny.mp4").is_file()


def test_cli_needs_models_and_exits_2(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lmk2video.evaluate", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "models=[DIR,...]" in errors[0]
    assert "Traceback" not in result.stderr
