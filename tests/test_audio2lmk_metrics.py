"""audio2lmk metrics and baselines on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lmk.baselines import LoudnessBaseline, frame_loudness_db, still_offsets
from audio2lmk.metrics import (
    LIP_VERTICES,
    Audio2LmkMetrics,
    lip_vertex_error,
    mean_vertex_error,
    mouth_opening_t,
    pearson,
)
from common.edit import mouth_opening


def test_lip_vertices_are_mediapipes_lip_connections():
    vision = pytest.importorskip("mediapipe.tasks.python.vision")
    connections = vision.FaceLandmarksConnections.FACE_LANDMARKS_LIPS
    assert set(LIP_VERTICES) == {i for c in connections for i in (c.start, c.end)}
    assert len(LIP_VERTICES) == 40


def test_lve_and_mve_known_values():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.normal(size=(2, 5, 468, 3)))
    assert torch.all(lip_vertex_error(target, target) == 0)
    assert torch.all(mean_vertex_error(target, target) == 0)
    pred = target.clone()
    pred[..., 13, 1] += 0.1  # one lip vertex 1 mm up
    pred[..., 0, :] += torch.tensor([0.03, 0.0, 0.04])  # another 0.5 mm
    np.testing.assert_allclose(lip_vertex_error(pred, target), 1.0, rtol=1e-7)
    np.testing.assert_allclose(mean_vertex_error(pred, target), 1.5 / 468, rtol=1e-7)
    far = target.clone()
    far[..., 10, :] += 5.0  # a non-lip vertex: no lip error, but vertex error
    assert torch.all(lip_vertex_error(far, target) == 0)
    assert torch.all(mean_vertex_error(far, target) > 0)


def test_mouth_opening_matches_common_edit():
    mesh = np.random.default_rng(1).normal(size=(4, 468, 3))
    np.testing.assert_allclose(mouth_opening_t(torch.from_numpy(mesh)).numpy(), mouth_opening(mesh))


def test_pearson():
    x = np.linspace(0, 1, 50)
    assert pearson(x, 3 * x + 2) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, np.full(50, 0.7)) == 0.0  # constant: no correlation
    y = np.random.default_rng(0).normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_metric_accumulator_per_clip_and_masks():
    rng = np.random.default_rng(2)
    frames = 30
    target = torch.from_numpy(rng.normal(scale=0.2, size=(2, frames, 468, 3)))
    pred = target.clone()
    # clip 0: prediction's opening is a scaled copy (r = 1); clip 1: opening reversed (r = -1)
    for b, sign in ((0, 1.0), (1, -1.0)):
        opening = mouth_opening_t(target[b])
        pred[b, :, 13, 1] = pred[b, :, 14, 1] + sign * 2 * opening
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, 20:] = False
    garbage = pred.clone()
    garbage[1, 20:] += 100.0  # padded frames must not count
    metric = Audio2LmkMetrics(num_clips=2)
    half = frames // 2
    # clip 0 in two windows, as validation windows arrive
    metric.update(
        torch.tensor([0]), mask[:1, :half], mesh_pred=garbage[:1, :half], mesh_target=target[:1, :half]
    )
    metric.update(
        torch.tensor([0]), mask[:1, half:], mesh_pred=garbage[:1, half:], mesh_target=target[:1, half:]
    )
    metric.update(torch.tensor([1]), mask[1:], mesh_pred=garbage[1:], mesh_target=target[1:])
    out = metric.compute()
    assert out["mouth_corr"] == pytest.approx(0.0, abs=1e-6)  # mean of +1 and -1
    expected = torch.cat(
        [lip_vertex_error(pred[0], target[0]), lip_vertex_error(pred[1, :20], target[1, :20])]
    )
    assert out["lve_mm"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert "pose_l1" not in out
    metric.update(
        torch.tensor([0]), mask[:1], pose_pred=torch.ones(1, frames, 6), pose_target=torch.zeros(1, frames, 6)
    )
    assert metric.compute()["pose_l1"] == pytest.approx(1.0)


def test_frame_loudness_of_a_sine():
    fps, sr = 30.0, 16000
    t = np.arange(sr) / sr
    audio = 0.5 * np.sin(2 * np.pi * 300 * t)
    level = frame_loudness_db(audio, 30, fps)
    np.testing.assert_allclose(level, 20 * np.log10(0.5 / np.sqrt(2)), atol=0.05)
    quiet = frame_loudness_db(np.zeros(sr // 2), 30, fps)  # second half padded
    assert np.all(quiet == -100.0)


def test_loudness_baseline_recovers_a_linear_mouth():
    """Offsets generated as an exact linear function of the loudness features are fitted exactly."""
    rng = np.random.default_rng(3)
    fps, frames = 30.0, 90
    base = LoudnessBaseline(context_frames=1)
    audios, offsets = [], []
    weights = rng.normal(size=(4, 468 * 3)) * 0.01
    for i in range(3):
        envelope = np.repeat(rng.uniform(0.01, 1.0, frames), 16000 // 30 + 1)[: frames * 16000 // 30]
        audio = envelope * rng.standard_normal(len(envelope)) * (i + 1)  # different recording levels
        audios.append(audio)
        offsets.append((base.features(audio, frames, fps) @ weights).reshape(frames, 468, 3))
    base.fit(audios, offsets, fps)
    np.testing.assert_allclose(base.predict(audios[0], frames, fps), offsets[0], atol=1e-9)
    assert still_offsets(5).shape == (5, 468, 3) and not still_offsets(5).any()
    with pytest.raises(RuntimeError):
        LoudnessBaseline().predict(audios[0], frames, fps)
