"""Reference framing (face-aware crop/pad to W x H) and landmark projection into the framed reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from common.detect import detect_image, extract_image, read_image
from common.errors import UserError
from common.geometry import landmarks_to_geometry
from common.lmkfile import LandmarkSequence
from lmk2video.framing import (
    LandmarkDrawings,
    apply_framing,
    choose_framing,
    face_box,
    frame_landmarks,
    frame_reference,
    prepare_sequence,
)
from tests.conftest import detect_frames, shared_file


def box_points(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """468 points whose bounding box is the given box."""
    pts = np.zeros((468, 2))
    pts[:, 0] = np.linspace(x0, x1, 468)
    pts[:, 1] = np.linspace(y0, y1, 468)[::-1]
    return pts


# ------------------------------------------------------------------------------------------ the rule


def test_face_is_centred_at_half_the_height_when_the_image_has_room() -> None:
    framing = choose_framing(box_points(900, 800, 1100, 1060), (2000, 2000), (512, 512))
    x0, y0, x1, y1 = face_box(framing.apply(box_points(900, 800, 1100, 1060)))
    assert abs((x0 + x1) / 2 - 256) <= 1 and abs((y0 + y1) / 2 - 256) <= 1
    assert (y1 - y0) / 512 == pytest.approx(0.5, abs=0.005)
    assert framing.window[2:] == (520, 520)  # 260 px face / 0.5


def test_window_is_tightened_near_the_border_and_loosened_for_small_images() -> None:
    # Face close to the top: 0.5 would need padding; the window tightens, but not beyond 0.55.
    near = choose_framing(box_points(400, 40, 600, 240), (1000, 1000), (512, 512))
    fraction = 200 / near.window[3]
    assert 0.5 < fraction <= 0.55 + 1e-3
    # Small image: 0.5 would enlarge 200 -> 512 px; the window loosens to 0.45 (never padding).
    small = choose_framing(box_points(75, 90, 125, 140), (300, 200), (512, 512))
    assert 50 / small.window[3] == pytest.approx(0.45, abs=0.005)
    # A wide output fits a wide face; a narrow output is limited by the face's width.
    narrow = choose_framing(box_points(400, 400, 600, 500), (1000, 1000), (512, 256))
    assert 200 / narrow.window[2] == pytest.approx(0.5, abs=0.005)


def test_apply_framing_maps_pixels_through_the_affine() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:104, 250:254] = 255  # a bright 4x4 square centred on (252, 102)
    framing = choose_framing(box_points(200, 60, 300, 160), image.shape[:2], (128, 96))
    out = apply_framing(image, framing, "constant")
    assert out.shape == (128, 96, 3)
    ys, xs = np.nonzero(out[..., 0] > 64)
    centre = framing.apply(np.array([252.0, 102.0]))
    assert abs(xs.mean() + 0.5 - centre[0]) < 0.5 and abs(ys.mean() + 0.5 - centre[1]) < 0.5
    np.testing.assert_allclose(framing.invert(framing.apply(np.array([[3.0, 4.0]]))), [[3.0, 4.0]])
    np.testing.assert_allclose(framing.matrix @ np.array([252.0, 102.0, 1.0]), centre)


@pytest.mark.parametrize("mode", ["replicate", "reflect", "constant"])
def test_padding_where_the_window_leaves_the_image(mode: str) -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    framing = choose_framing(box_points(10, 10, 50, 50), image.shape[:2], (64, 64))
    assert framing.window[0] < 0 and framing.window[1] < 0
    out = apply_framing(image, framing, mode)
    assert out.shape == (64, 64, 3)
    corner = out[0, 0]
    assert (corner == 0).all() if mode == "constant" else (corner == 200).all()
    with pytest.raises(UserError, match="pad_mode"):
        apply_framing(image, framing, "wrap")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(UserError, match="face fractions"):
        choose_framing(box_points(0, 0, 10, 10), (100, 100), (64, 64), face_fraction=0.7)
    with pytest.raises(UserError, match="vertical_center"):
        choose_framing(box_points(0, 0, 10, 10), (100, 100), (64, 64), vertical_center=1.0)


# ----------------------------------------------------------------------------------- real portraits


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("photo_woman.jpg", (256, 256)),
        ("photo_man_large.jpg", (256, 256)),  # 3511 x 3511
        ("photo_bw_man_nonsquare.jpg", (256, 192)),  # 375 x 500 in, portrait out
        ("painting_nonsquare.jpg", (192, 256)),  # landscape out
    ],
)
def test_framed_portraits_show_the_face_where_the_landmarks_say(face_model, name, size) -> None:
    path = shared_file("portraits", name)
    image = read_image(path)
    reference = extract_image(path, model_path=face_model, image=image)
    framed, framing = frame_reference(image, reference.landmarks2d[0], size)
    assert framed.shape == (*size, 3) and framed.dtype == np.uint8
    _, reference_points = frame_landmarks(reference, reference, framing)
    detected = detect_image(framed, face_model).landmarks[:468, :2] * np.array([size[1], size[0]])
    error = np.linalg.norm(detected - reference_points, axis=-1)
    assert error.mean() < 1.5 and error.max() < 5, (error.mean(), error.max())
    x0, y0, x1, y1 = face_box(reference_points)
    h, w = size
    assert abs((x0 + x1) / 2 - w / 2) < 0.02 * w and abs((y0 + y1) / 2 - h / 2) < 0.02 * h
    assert 0.44 <= max(y1 - y0, (x1 - x0) * h / w) / h <= 0.56


# -------------------------------------------------------------------------------------- landmarks


@pytest.fixture(scope="module")
def clip_sequence(face_model) -> LandmarkSequence:
    """Eight frames of another person's talking clip (no reference face)."""
    landmarks, _, size = detect_frames(shared_file("talking", "feifeili_clip3.mp4"), face_model, max_frames=8)
    geometry = landmarks_to_geometry(landmarks, size)
    return LandmarkSequence(mesh=geometry.mesh, pose=geometry.pose, fps=30.0, image_size=size)


@pytest.fixture(scope="module")
def portrait(face_model) -> tuple[np.ndarray, LandmarkSequence]:
    path = shared_file("portraits", "photo_bw_man_nonsquare.jpg")
    image = read_image(path)
    return image, extract_image(path, model_path=face_model, image=image)


def test_foreign_landmarks_are_retargeted_and_land_on_the_reference_face(
    clip_sequence, portrait, caplog
) -> None:
    image, reference = portrait
    with caplog.at_level(logging.INFO, logger="lmk2video.framing"):
        prepared = prepare_sequence(clip_sequence, reference, "clip.npz")
    assert "retargeting" in caplog.text
    assert prepared.reference_mesh is not None and prepared.image_size == reference.image_size
    assert any("retarget" in step for step in prepared.meta["history"])
    _, framing = frame_reference(image, reference.landmarks2d[0], (256, 192))
    points, reference_points = frame_landmarks(prepared, reference, framing)
    assert points.shape == (8, 468, 2)
    # The retargeted neutral frame is the reference face itself; every frame stays near it.
    distance = np.linalg.norm(points - reference_points[None], axis=-1).mean(axis=1)
    assert distance.min() < 1.0 and distance.max() < 10.0
    # Used as it is the second time (it now carries the reference face), with no warning.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lmk2video.framing"):
        assert prepare_sequence(prepared, reference, "prepared.npz") is prepared
    assert not caplog.text


def test_landmarks_made_for_another_face_are_used_with_a_warning(clip_sequence, portrait, caplog) -> None:
    _, reference = portrait
    other = LandmarkSequence(
        mesh=clip_sequence.mesh[:1],
        pose=clip_sequence.pose[:1],
        fps=30.0,
        image_size=clip_sequence.image_size,
    )
    made_for_other = prepare_sequence(clip_sequence, other, "clip.npz")
    with caplog.at_level(logging.WARNING, logger="lmk2video.framing"):
        assert prepare_sequence(made_for_other, reference, "other.npz") is made_for_other
    assert "made for a different face" in caplog.text


def test_landmark_drawings_are_lazy_slices_in_the_style_channel_order(clip_sequence) -> None:
    points = clip_sequence.project((64, 64))
    default = LandmarkDrawings(points, (64, 64), "default")
    aniportrait = LandmarkDrawings(points, (64, 64), "aniportrait")
    assert len(default) == 8
    chunk = default[2:5]
    assert chunk.shape == (3, 64, 64, 3) and chunk.any()
    assert np.array_equal(default.rgb(chunk), chunk)
    drawn = aniportrait[0:1]
    assert np.array_equal(aniportrait.rgb(drawn), drawn[..., ::-1])
    with pytest.raises(TypeError):
        default[0]
    with pytest.raises(UserError, match="unknown drawing style"):
        LandmarkDrawings(points, (64, 64), "sketch")
