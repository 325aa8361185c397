"""Face geometry: agreement with MediaPipe, projection, pose conversions."""

from __future__ import annotations

import numpy as np
import pytest

from common import geometry as g
from tests.conftest import detect_frames, shared_file


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ra, rb = g.rotation_part(a), g.rotation_part(b)
    cos = (np.trace(np.swapaxes(ra, -1, -2) @ rb, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_canonical_face_loads():
    face = g.canonical_face()
    assert face.vertices.shape == (468, 3)
    assert (face.weights > 0).sum() == 33  # the procrustes landmark basis
    assert face.triangles.shape[1] == 3 and face.triangles.max() == 467
    obj = shared_file("mediapipe", "canonical_face_model.obj")
    v = np.array(
        [
            [float(x) for x in line.split()[1:4]]
            for line in obj.read_text().splitlines()
            if line.startswith("v ")
        ]
    )
    np.testing.assert_allclose(face.vertices, v, atol=1e-6)


def test_geometry_matches_mediapipe_matrices(detected_clip):
    landmarks, matrices, size = detected_clip
    geo = g.landmarks_to_geometry(landmarks, size)
    rot_err = rotation_error_deg(geo.matrices, matrices)
    trans_err = np.linalg.norm(geo.matrices[:, :3, 3] - matrices[:, :3, 3], axis=1) / np.linalg.norm(
        matrices[:, :3, 3], axis=1
    )
    assert rot_err.mean() <= 0.1, rot_err.mean()
    assert trans_err.mean() <= 0.005, trans_err.mean()


@pytest.mark.parametrize("clip", ["KristiNoem.mp4", "andrew_clip_1.mp4", "Obama_clip2.mp4"])
def test_geometry_matches_mediapipe_on_other_speakers(face_model, clip):
    landmarks, matrices, size = detect_frames(shared_file("talking", clip), face_model, max_frames=20)
    geo = g.landmarks_to_geometry(landmarks, size)
    assert rotation_error_deg(geo.matrices, matrices).mean() <= 0.1
    rel = np.linalg.norm(geo.matrices[:, :3, 3] - matrices[:, :3, 3], axis=1) / np.linalg.norm(
        matrices[:, :3, 3], axis=1
    )
    assert rel.mean() <= 0.005


def test_projection_reproduces_detection(detected_clip):
    landmarks, _, (h, w) = detected_clip
    geo = g.landmarks_to_geometry(landmarks, (h, w))
    px = g.project(geo.mesh, geo.pose, (h, w))
    detected = landmarks[:, :468, :2] * np.array([w, h])
    err = np.linalg.norm(px - detected, axis=-1).mean()
    assert err <= 0.5, err
    # float32 storage (the landmark file's dtype) keeps it well under the bound
    px32 = g.project(geo.mesh.astype(np.float32), geo.pose.astype(np.float32), (h, w))
    assert np.linalg.norm(px32 - detected, axis=-1).mean() <= 0.5


def test_non_square_projection_keeps_face_unstretched(detected_clip):
    landmarks, _, size = detected_clip
    geo = g.landmarks_to_geometry(landmarks[:5], size)
    square = g.project(geo.mesh, geo.pose, (512, 512))
    wide = g.project(geo.mesh, geo.pose, (512, 1024))
    tall = g.project(geo.mesh, geo.pose, (1024, 512))
    # same vertical FOV: the wide image shows the same face shifted right by 256 px
    np.testing.assert_allclose(wide - [256, 0], square, atol=1e-6)
    # a taller image scales the face by 2 about the image centre
    np.testing.assert_allclose((tall - [256, 512]) / 2, square - [256, 256], atol=1e-6)


def test_mesh_is_pose_free(detected_clip):
    landmarks, _, size = detected_clip
    geo = g.landmarks_to_geometry(landmarks, size)
    # the pose-free mesh fits the canonical face with (nearly) identity rotation and zero translation
    fit = g.solve_weighted_orthogonal(g.canonical_face().vertices, geo.mesh, g.canonical_face().weights)
    assert rotation_error_deg(fit, np.broadcast_to(np.eye(4), fit.shape)).max() < 1e-4
    assert np.abs(fit[:, :3, 3]).max() < 1e-6


def test_pose6_matrix_round_trip():
    rng = np.random.default_rng(0)
    pose = np.concatenate([rng.uniform(-60, 60, (50, 3)), rng.normal(0, 10, (50, 3))], axis=1)
    back = g.matrix_to_pose6(g.pose6_to_matrix(pose))
    np.testing.assert_allclose(back, pose, atol=1e-9)
    mats = g.pose6_to_matrix(pose)
    np.testing.assert_allclose(g.pose6_to_matrix(g.matrix_to_pose6(mats)), mats, atol=1e-12)
    # scipy's extrinsic 'xyz' convention
    from scipy.spatial.transform import Rotation

    np.testing.assert_allclose(
        mats[:, :3, :3], Rotation.from_euler("xyz", pose[:, :3], degrees=True).as_matrix()
    )


def test_relative_absolute_round_trip():
    rng = np.random.default_rng(1)
    pose = np.concatenate([rng.uniform(-20, 20, (30, 3)), rng.normal(0, 5, (30, 3))], axis=1)
    rel = g.absolute_to_relative(pose)
    np.testing.assert_allclose(rel[0], 0, atol=1e-9)
    np.testing.assert_allclose(g.relative_to_absolute(rel, pose[0]), pose, atol=1e-9)


def test_procrustes_recovers_similarity_transform():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(40, 3))
    w = rng.uniform(0.1, 1, 40)
    true = g.pose6_to_matrix(np.array([[10, -20, 30, 1, 2, 3]]))[0]
    true[:3, :3] *= 1.7
    tgt = (src @ true[:3, :3].T + true[:3, 3])[None]
    np.testing.assert_allclose(g.solve_weighted_orthogonal(src, tgt, w)[0], true, atol=1e-10)


def test_project_rejects_bad_shapes():
    with pytest.raises(ValueError, match="pose must be"):
        g.project(np.zeros((3, 468, 3)), np.zeros((2, 6)), (10, 10))
    with pytest.raises(ValueError, match="landmarks must be"):
        g.landmarks_to_geometry(np.zeros((3, 100, 3)), (10, 10))
