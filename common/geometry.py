"""Face geometry: MediaPipe's face-geometry pipeline, head pose conversions and projection.

Conventions (all batched over frames, no per-frame Python loops):

* **Camera.** MediaPipe's perspective camera: vertical field of view 63 degrees, near plane 1,
  OpenGL-style camera space (x right, y up, the face at negative z). Pixel coordinates have
  their origin at the image's top-left corner, x to the right, y down; a landmark's pixel
  position is its normalised MediaPipe coordinate times the image width/height.
* **Pose.** The 4x4 canonical -> camera transform ``M`` (rotation ``R`` and translation ``t``
  in cm; MediaPipe's own matrix also carries a scale close to 1, which the 6-D form drops). The
  6-D form is ``(rx, ry, rz, tx, ty, tz)``: extrinsic XYZ Euler angles in degrees as in
  ``scipy.spatial.transform.Rotation.from_euler("xyz", angles, degrees=True)`` (the convention
  AniPortrait uses) followed by the translation in cm.
* **Mesh.** The pose-free metric mesh is ``R^T (p - t)`` for the camera-space metric landmarks
  ``p`` (468 x 3, cm): the subject's face in canonical orientation, keeping its own scale, so
  that ``R mesh + t`` gives back ``p`` exactly and projecting reproduces the detection.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy.spatial.transform import Rotation

NUM_VERTICES = 468
VERTICAL_FOV_DEGREES = 63.0
NEAR = 1.0


@dataclass(frozen=True)
class CanonicalFace:
    """MediaPipe's canonical face: vertices (468, 3) in cm, Procrustes weights (468,), triangles."""

    vertices: np.ndarray
    weights: np.ndarray
    triangles: np.ndarray


@functools.cache
def canonical_face() -> CanonicalFace:
    """Load the canonical face and its Procrustes landmark weights from the package data."""
    text = resources.files("common").joinpath("data/geometry_pipeline_metadata_landmarks.pbtxt").read_text()
    weights = np.zeros(NUM_VERTICES, dtype=np.float64)
    for idx, w in re.findall(r"landmark_id:\s*(\d+)\s+weight:\s*([-+0-9.eE]+)", text):
        weights[int(idx)] = float(w)
    vb = np.array([float(v) for v in re.findall(r"vertex_buffer:\s*([-+0-9.eE]+)", text)], dtype=np.float64)
    vertices = vb.reshape(-1, 5)[:, :3]  # VERTEX_PT: x, y, z, u, v
    ib = np.array([int(v) for v in re.findall(r"index_buffer:\s*(\d+)", text)], dtype=np.int64)
    if vertices.shape != (NUM_VERTICES, 3) or not weights.any():
        raise RuntimeError("package data geometry_pipeline_metadata_landmarks.pbtxt is damaged; reinstall")
    vertices.setflags(write=False)
    weights.setflags(write=False)
    return CanonicalFace(vertices=vertices, weights=weights, triangles=ib.reshape(-1, 3))


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------


def _frustum(image_size: tuple[int, int], fov_degrees: float = VERTICAL_FOV_DEGREES, near: float = NEAR):
    """(left, right, bottom, top) of the near plane for an image of size (H, W)."""
    h, w = float(image_size[0]), float(image_size[1])
    height_at_near = 2.0 * near * np.tan(0.5 * np.deg2rad(fov_degrees))
    width_at_near = w * height_at_near / h
    return -0.5 * width_at_near, 0.5 * width_at_near, -0.5 * height_at_near, 0.5 * height_at_near


def camera_to_pixels(
    points: np.ndarray,
    image_size: tuple[int, int],
    fov_degrees: float = VERTICAL_FOV_DEGREES,
    near: float = NEAR,
) -> np.ndarray:
    """Perspective-project camera-space points (..., 3) to pixel coordinates (..., 2)."""
    left, right, bottom, top = _frustum(image_size, fov_degrees, near)
    p = np.asarray(points, dtype=np.float64)
    depth = -p[..., 2]  # in front of the camera is negative z
    x = p[..., 0] * near / depth
    y = p[..., 1] * near / depth
    u = (x - left) / (right - left) * image_size[1]
    v = (1.0 - (y - bottom) / (top - bottom)) * image_size[0]
    return np.stack([u, v], axis=-1)


# --------------------------------------------------------------------------------------------
# Weighted orthogonal Procrustes (MediaPipe's solver), batched
# --------------------------------------------------------------------------------------------


def solve_weighted_orthogonal(source: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Similarity transforms ``M`` (T, 4, 4) minimising sum_i w_i |M source_i - target_i|^2.

    ``source`` is (N, 3), ``targets`` (T, N, 3), ``weights`` (N,) non-negative. Rotation from the
    SVD of the weighted cross-covariance with a reflection fix, then scale, then translation, as
    in MediaPipe's ``procrustes_solver``.
    """
    src = np.asarray(source, dtype=np.float64)
    tgt = np.asarray(targets, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    sqrt_w = np.sqrt(w)[:, None]
    ws = src * sqrt_w  # (N, 3) weighted sources
    wt = tgt * sqrt_w  # (T, N, 3) weighted targets
    center = (ws * sqrt_w).sum(0) / total  # weighted source centre of mass
    cws = ws - center[None, :] * sqrt_w  # centred weighted sources
    design = np.einsum("tni,nj->tij", wt, cws)  # (T, 3, 3) = targets^T sources
    u, _, vt = np.linalg.svd(design)
    flip = np.linalg.det(u) * np.linalg.det(vt) < 0
    u[flip, :, 2] *= -1.0
    rot = u @ vt  # (T, 3, 3)
    rotated = np.einsum("tij,nj->tni", rot, cws)
    numerator = (rotated * wt).sum(axis=(1, 2))
    denominator = (cws * ws).sum()
    scale = numerator / denominator
    rs = rot * scale[:, None, None]
    diffs = wt - np.einsum("tij,nj->tni", rs, ws)
    translation = (diffs * sqrt_w).sum(1) / total
    out = np.zeros((tgt.shape[0], 4, 4))
    out[:, :3, :3] = rs
    out[:, :3, 3] = translation
    out[:, 3, 3] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# Screen -> metric (MediaPipe's ScreenToMetricSpaceConverter), batched
# --------------------------------------------------------------------------------------------


@dataclass
class FaceGeometry:
    """Per-frame geometry from landmarks: MediaPipe's matrices, metric landmarks, pose-free mesh, 6-D pose."""

    matrices: np.ndarray  # (T, 4, 4) canonical -> camera, with MediaPipe's scale
    metric_landmarks: np.ndarray  # (T, 468, 3) camera space, cm
    mesh: np.ndarray  # (T, 468, 3) pose-free metric mesh, cm
    pose: np.ndarray  # (T, 6) XYZ Euler degrees + translation cm


def _project_xy(lm: np.ndarray, image_size, fov_degrees, near) -> np.ndarray:
    left, right, bottom, top = _frustum(image_size, fov_degrees, near)
    out = np.empty_like(lm)
    out[..., 0] = lm[..., 0] * (right - left) + left
    out[..., 1] = (1.0 - lm[..., 1]) * (top - bottom) + bottom  # top-left origin
    out[..., 2] = lm[..., 2] * (right - left)
    return out


def _move_rescale_unproject(screen: np.ndarray, depth_offset: np.ndarray, scale: np.ndarray, near: float):
    out = screen.copy()
    out[..., 2] = (screen[..., 2] - depth_offset[:, None] + near) / scale[:, None]
    out[..., 0] = screen[..., 0] * out[..., 2] / near
    out[..., 1] = screen[..., 1] * out[..., 2] / near
    out[..., 2] *= -1.0  # change handedness
    return out


def landmarks_to_geometry(
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    fov_degrees: float = VERTICAL_FOV_DEGREES,
    near: float = NEAR,
) -> FaceGeometry:
    """Run MediaPipe's face-geometry pipeline on normalised landmarks (T, >=468, 3) of (H, W) images."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1] < NUM_VERTICES or lm.shape[2] != 3:
        raise ValueError(f"landmarks must be (T, >=468, 3) normalised coordinates, got {lm.shape}")
    lm = lm[:, :NUM_VERTICES]
    face = canonical_face()
    screen = _project_xy(lm, image_size, fov_degrees, near)
    depth_offset = screen[..., 2].mean(axis=1)

    flipped = screen.copy()
    flipped[..., 2] *= -1.0
    scale1 = np.linalg.norm(solve_weighted_orthogonal(face.vertices, flipped, face.weights)[:, :3, 0], axis=1)
    inter = _move_rescale_unproject(screen, depth_offset, scale1, near)
    scale2 = np.linalg.norm(solve_weighted_orthogonal(face.vertices, inter, face.weights)[:, :3, 0], axis=1)
    metric = _move_rescale_unproject(screen, depth_offset, scale1 * scale2, near)
    matrices = solve_weighted_orthogonal(face.vertices, metric, face.weights)

    rot = rotation_part(matrices)
    t = matrices[:, :3, 3]
    mesh = np.einsum("tji,tnj->tni", rot, metric - t[:, None, :])
    pose = np.concatenate([Rotation.from_matrix(rot).as_euler("xyz", degrees=True), t], axis=1)
    return FaceGeometry(matrices=matrices, metric_landmarks=metric, mesh=mesh, pose=pose)


# --------------------------------------------------------------------------------------------
# Pose conversions and projection
# --------------------------------------------------------------------------------------------


def rotation_part(matrices: np.ndarray) -> np.ndarray:
    """The nearest rotation (…, 3, 3) to each 4x4 transform's linear part (drops scale)."""
    m = np.asarray(matrices, dtype=np.float64)[..., :3, :3]
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt


def matrix_to_pose6(matrices: np.ndarray) -> np.ndarray:
    """4x4 transforms (..., 4, 4) -> 6-D poses (..., 6): XYZ Euler degrees + translation."""
    m = np.asarray(matrices, dtype=np.float64)
    lead = m.shape[:-2]
    rot = rotation_part(m.reshape(-1, 4, 4))
    euler = Rotation.from_matrix(rot).as_euler("xyz", degrees=True)
    return np.concatenate([euler, m.reshape(-1, 4, 4)[:, :3, 3]], axis=1).reshape(*lead, 6)


def pose6_to_matrix(pose: np.ndarray) -> np.ndarray:
    """6-D poses (..., 6) -> rigid 4x4 transforms (..., 4, 4)."""
    p = np.asarray(pose, dtype=np.float64)
    lead = p.shape[:-1]
    flat = p.reshape(-1, 6)
    out = np.zeros((flat.shape[0], 4, 4))
    out[:, :3, :3] = Rotation.from_euler("xyz", flat[:, :3], degrees=True).as_matrix()
    out[:, :3, 3] = flat[:, 3:]
    out[:, 3, 3] = 1.0
    return out.reshape(*lead, 4, 4)


def apply_pose(mesh: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Camera-space points (T, N, 3) = R mesh + t for meshes (T, N, 3) and 6-D poses (T, 6)."""
    m = pose6_to_matrix(pose)
    return np.einsum("tij,tnj->tni", m[:, :3, :3], np.asarray(mesh, dtype=np.float64)) + m[:, None, :3, 3]


def project(
    mesh: np.ndarray,
    pose: np.ndarray,
    image_size: tuple[int, int],
    fov_degrees: float = VERTICAL_FOV_DEGREES,
    near: float = NEAR,
) -> np.ndarray:
    """Pixel landmarks (T, N, 2) of pose-free meshes (T, N, 3) under 6-D poses (T, 6) in an (H, W) image.

    Any image size works: the camera keeps its vertical field of view, so a non-square image
    shows the same face unstretched with more or less room at the sides.
    """
    mesh = np.asarray(mesh)
    pose = np.asarray(pose)
    if mesh.ndim != 3 or mesh.shape[-1] != 3:
        raise ValueError(f"mesh must be (T, N, 3), got {mesh.shape}")
    if pose.shape != (mesh.shape[0], 6):
        raise ValueError(f"pose must be ({mesh.shape[0]}, 6) for {mesh.shape[0]} frames, got {pose.shape}")
    return camera_to_pixels(apply_pose(mesh, pose), image_size, fov_degrees, near)


def relative_to_absolute(relative_pose: np.ndarray, anchor_pose: np.ndarray) -> np.ndarray:
    """Compose relative poses (T, 6) onto an anchor pose (6,): ``M_anchor @ M_rel`` per frame.

    This is how AniPortrait applies a pose template (relative to its first frame) to a reference face.
    """
    anchor = pose6_to_matrix(np.asarray(anchor_pose)[None])[0]
    return matrix_to_pose6(anchor[None] @ pose6_to_matrix(relative_pose))


def absolute_to_relative(pose: np.ndarray, anchor_pose: np.ndarray | None = None) -> np.ndarray:
    """Express poses (T, 6) relative to ``anchor_pose`` (default: the first frame): ``M_anchor^-1 @ M``."""
    mats = pose6_to_matrix(pose)
    anchor = mats[0] if anchor_pose is None else pose6_to_matrix(np.asarray(anchor_pose)[None])[0]
    return matrix_to_pose6(np.linalg.inv(anchor)[None] @ mats)
