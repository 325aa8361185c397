"""Tests for common.draw: the style registry, AniPortrait's drawing reproduced pixel for pixel, the default style."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common import draw
from common.draw import FACE_PARTS, default_thickness, draw_landmarks, get_style, list_styles, register_style
from common.errors import UserError
from common.geometry import canonical_face, project
from tests.conftest import shared_file

# AniPortrait's FACEMESH_CUSTOM_FACE_OVAL (src/utils/draw_util.py), in its own order: a fact list
# kept independent of our chain representation.
ANIPORTRAIT_OVAL = [
    (176, 149), (150, 136), (356, 454), (58, 132), (152, 148), (361, 288), (251, 389), (132, 93),
    (389, 356), (400, 377), (136, 172), (377, 152), (323, 361), (172, 58), (454, 323), (365, 379),
    (379, 378), (148, 176), (93, 234), (397, 365), (149, 150), (288, 397), (234, 127), (378, 400),
    (127, 162), (162, 21),
]  # fmt: skip
ANIPORTRAIT_LIPS = [  # (edges, BGR colour), in the order AniPortrait inserts them
    ([(61, 146), (146, 91), (91, 181), (181, 84), (84, 17)], (10, 180, 20)),
    ([(17, 314), (314, 405), (405, 321), (321, 375), (375, 291)], (20, 10, 180)),
    ([(78, 95), (95, 88), (88, 178), (178, 87), (87, 14)], (100, 100, 30)),
    ([(14, 317), (317, 402), (402, 318), (318, 324), (324, 308)], (100, 150, 50)),
    ([(61, 185), (185, 40), (40, 39), (39, 37), (37, 0)], (20, 80, 100)),
    ([(0, 267), (267, 269), (269, 270), (270, 409), (409, 291)], (80, 100, 20)),
    ([(78, 191), (191, 80), (80, 81), (81, 82), (82, 13)], (120, 100, 200)),
    ([(13, 312), (312, 311), (311, 310), (310, 415), (415, 308)], (150, 120, 100)),
]


def _connections():
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections

    return FaceLandmarksConnections


def _pairs(connections) -> list[tuple[int, int]]:
    return [(c.start, c.end) for c in connections]


def aniportrait_reference(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Slow reference: AniPortrait's FaceMeshVisualizer.draw_landmarks rebuilt on MediaPipe's drawing_utils.

    One frame (N, 2) of pixel points for an (H, W) image; AniPortrait's ``image_size`` is (W, H).
    The connection -> spec dict is filled in AniPortrait's order (oval, left eye, left brow, right
    eye, right brow, 8 lip segments); landmarks go through float32 as in its protobuf messages.
    """
    from mediapipe.tasks.python.components.containers.landmark import NormalizedLandmark
    from mediapipe.tasks.python.vision import drawing_utils as du

    conns = _connections()

    def spec(color):
        return du.DrawingSpec(color=color, thickness=2, circle_radius=1)

    spec_of: dict[tuple[int, int], du.DrawingSpec] = {}
    for edges, color in [
        (ANIPORTRAIT_OVAL, (10, 200, 10)),
        (_pairs(conns.FACE_LANDMARKS_LEFT_EYE), (180, 200, 10)),
        (_pairs(conns.FACE_LANDMARKS_LEFT_EYEBROW), (180, 220, 10)),
        (_pairs(conns.FACE_LANDMARKS_RIGHT_EYE), (10, 200, 180)),
        (_pairs(conns.FACE_LANDMARKS_RIGHT_EYEBROW), (10, 220, 180)),
        *ANIPORTRAIT_LIPS,
    ]:
        for edge in edges:
            spec_of[edge] = spec(color)
    h, w = image_size
    canvas = np.zeros((512, 512, 3), dtype=np.uint8)
    landmarks = [
        NormalizedLandmark(x=float(np.float32(x / w)), y=float(np.float32(y / h)), z=1.0)
        for x, y in np.asarray(points, dtype=np.float64)
    ]
    du.draw_landmarks(
        image=canvas,
        landmark_list=landmarks,
        connections=[conns.Connection(a, b) for a, b in spec_of],
        landmark_drawing_spec=None,
        connection_drawing_spec=spec_of,
    )
    return cv2.resize(canvas, (w, h))


def synthetic_points(num_frames: int, image_size: tuple[int, int], seed: int = 0, spread: float = 1.0):
    """Projected (T, 468, 2) pixel landmarks of a perturbed canonical face under random head poses."""
    rng = np.random.default_rng(seed)
    mesh = canonical_face().vertices[None] + rng.normal(0.0, 0.05, (num_frames, 468, 3))
    pose = np.column_stack(
        [
            rng.normal(0.0, 12.0 * spread, (num_frames, 3)),
            rng.normal(0.0, 3.0 * spread, (num_frames, 2)),
            -30.0 + rng.normal(0.0, 4.0 * spread, num_frames),
        ]
    )
    return project(mesh, pose, image_size)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_builtin_styles_are_listed():
    assert list_styles()[:2] == ["aniportrait", "default"]
    assert get_style("aniportrait").channel_order == "bgr"
    assert get_style("default").channel_order == "rgb"


def test_unknown_style_lists_available():
    with pytest.raises(UserError, match=r"unknown drawing style 'nope'.*aniportrait, default"):
        get_style("nope")
    with pytest.raises(UserError, match="aniportrait"):
        draw_landmarks(np.zeros((468, 2)), (64, 64), style="nope")


def test_register_style_as_decorator_and_function():
    def white(points, image_size):
        return np.full((len(points), *image_size, 3), 255, np.uint8)

    try:
        decorated = register_style("test_white", description="all white")(white)
        assert decorated is white
        assert "test_white" in list_styles()
        assert get_style("test_white").description == "all white"
        out = draw_landmarks(np.zeros((468, 2)), (4, 6), style="test_white")
        assert out.shape == (4, 6, 3) and (out == 255).all()
        with pytest.raises(ValueError, match="already registered"):
            register_style("test_white", white)
        register_style("test_white", white, channel_order="bgr", replace=True)
        assert get_style("test_white").channel_order == "bgr"
    finally:
        draw._STYLES.pop("test_white", None)
    with pytest.raises(ValueError, match="channel_order"):
        register_style("test_bad", white, channel_order="rgba")


# --------------------------------------------------------------------------------------------
# face parts are MediaPipe's / AniPortrait's
# --------------------------------------------------------------------------------------------


def _edge_set(edges) -> set[frozenset[int]]:
    return {frozenset(map(int, e)) for e in edges}


def test_face_parts_match_mediapipe_and_aniportrait():
    conns = _connections()
    parts = {p.name: p for p in FACE_PARTS}
    assert _edge_set(parts["face_oval"].edges) == _edge_set(ANIPORTRAIT_OVAL)
    assert _edge_set(ANIPORTRAIT_OVAL) < _edge_set(_pairs(conns.FACE_LANDMARKS_FACE_OVAL))
    for name, mp_edges in [
        ("left_eye", conns.FACE_LANDMARKS_LEFT_EYE),
        ("left_eyebrow", conns.FACE_LANDMARKS_LEFT_EYEBROW),
        ("right_eye", conns.FACE_LANDMARKS_RIGHT_EYE),
        ("right_eyebrow", conns.FACE_LANDMARKS_RIGHT_EYEBROW),
    ]:
        assert _edge_set(parts[name].edges) == _edge_set(_pairs(mp_edges)), name
    lip_parts = [p for p in FACE_PARTS if p.name.startswith("lips_")]
    assert len(lip_parts) == 8
    for part, (edges, color) in zip(lip_parts, ANIPORTRAIT_LIPS):
        assert _edge_set(part.edges) == _edge_set(edges) and part.color == color, part.name
    lips = set().union(*(_edge_set(p.edges) for p in lip_parts))
    assert lips == _edge_set(_pairs(conns.FACE_LANDMARKS_LIPS))
    assert max(int(p.edges.max()) for p in FACE_PARTS) < 468  # no iris


# --------------------------------------------------------------------------------------------
# aniportrait style == AniPortrait's FaceMeshVisualizer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [(512, 512), (256, 256), (300, 500), (640, 360)])
def test_aniportrait_matches_mediapipe_reference(image_size):
    points = synthetic_points(6, image_size, seed=image_size[1])
    # Frame 4: part of the face outside the image (AniPortrait drops those connections);
    # frame 5: one NaN landmark and one exactly on the right border.
    points[4] += np.array([0.35 * image_size[1], -0.2 * image_size[0]])
    points[5, 33] = np.nan
    points[5, 263, 0] = image_size[1]
    ours = draw_landmarks(points, image_size)
    assert ours.shape == (6, *image_size, 3) and ours.dtype == np.uint8
    for t in range(len(points)):
        reference = aniportrait_reference(points[t], image_size)
        assert (reference > 0).any()
        np.testing.assert_array_equal(ours[t], reference, err_msg=f"frame {t}")
    assert (ours[4] > 0).sum() < (ours[0] > 0).sum()  # the cut-off frame lost connections


def test_aniportrait_matches_reference_on_detected_landmarks(face_model):
    """478 real detected landmarks (with iris) of a portrait, as AniPortrait draws its reference pose."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    image = cv2.cvtColor(cv2.imread(str(shared_file("portraits", "photo_man_large.jpg"))), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA)
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(face_model)), num_faces=1
    )
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    assert result.face_landmarks, "no face found in the test portrait"
    points = np.array([(p.x * 512, p.y * 512) for p in result.face_landmarks[0]])
    assert points.shape == (478, 2)
    for size in [(512, 512), (384, 256)]:
        scaled = points * np.array([size[1] / 512, size[0] / 512])
        np.testing.assert_array_equal(draw_landmarks(scaled, size), aniportrait_reference(scaled, size))


@pytest.mark.parametrize("style", ["aniportrait", "default"])
def test_iris_points_are_ignored(style):
    points = synthetic_points(2, (256, 256))
    iris = np.random.default_rng(1).uniform(0, 256, (2, 10, 2))
    with_iris = np.concatenate([points, iris], axis=1)
    np.testing.assert_array_equal(
        draw_landmarks(with_iris, (256, 256), style), draw_landmarks(points, (256, 256), style)
    )


# --------------------------------------------------------------------------------------------
# default style
# --------------------------------------------------------------------------------------------


def _frontal(image_size: tuple[int, int]) -> np.ndarray:
    return project(canonical_face().vertices[None], np.array([[0.0, 0.0, 0.0, 0.0, 0.0, -25.0]]), image_size)[
        0
    ]


@pytest.mark.parametrize("style", ["aniportrait", "default"])
def test_part_colours_at_segment_midpoints(style):
    """Pixel colours at segment midpoints are the part colours, in the style's channel order."""
    size = (512, 512)
    points = _frontal(size)
    image = draw_landmarks(points, size, style)
    for part in FACE_PARTS:
        color = part.color if style == "aniportrait" else part.color[::-1]
        mid = points[part.edges].mean(axis=1)  # (S, 2) x, y
        px = np.floor(mid).astype(int)
        hits = (image[px[:, 1], px[:, 0]] == color).all(axis=-1)
        assert hits.mean() >= 0.75, f"{part.name}: {hits.sum()}/{len(hits)} midpoints have {color}"


def test_default_thickness_scales_with_size():
    assert [
        default_thickness(s) for s in [(128, 128), (256, 256), (512, 512), (1024, 768), (2048, 2048)]
    ] == [
        1,
        1,
        2,
        3,
        8,
    ]
    small = draw_landmarks(_frontal((512, 512)), (512, 512), "default")
    large = draw_landmarks(_frontal((1024, 1024)), (1024, 1024), "default")
    ratio = (large > 0).any(-1).sum() / (small > 0).any(-1).sum()
    assert 3.0 < ratio < 5.0  # twice the length and twice the thickness


def test_default_non_square_is_not_stretched():
    """A wider image shows the same face (same vertical field of view) with more room at the sides."""
    square = draw_landmarks(_frontal((512, 512)), (512, 512), "default")
    wide = draw_landmarks(_frontal((512, 1024)), (512, 1024), "default")
    np.testing.assert_array_equal(wide[:, 256:768], square)
    assert not wide[:, :256].any() and not wide[:, 768:].any()


def test_default_clips_instead_of_dropping():
    size = (512, 512)
    points = _frontal(size) + np.array([200.0, 0.0])  # the right half of the face leaves the image
    default = draw_landmarks(points, size, "default")
    ani = draw_landmarks(points, size, "aniportrait")
    assert default[:, -1].any()  # lines run up to the border
    assert (default > 0).any(-1).sum() > (ani > 0).any(-1).sum()
    points[100] = np.nan
    points[200] = [1e12, -1e12]  # far outside: its segments are skipped, nothing overflows
    assert draw_landmarks(points, size, "default").any()


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["aniportrait", "default"])
def test_shapes(style):
    points = synthetic_points(3, (200, 320))
    assert draw_landmarks(points[0], (200, 320), style).shape == (200, 320, 3)
    frames = draw_landmarks(points, (200, 320), style)
    assert frames.shape == (3, 200, 320, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], draw_landmarks(points[1], (200, 320), style))
    assert draw_landmarks(points[:0], (200, 320), style).shape == (0, 200, 320, 3)


@pytest.mark.parametrize(
    ("points", "size", "match"),
    [
        (np.zeros((68, 2)), (64, 64), "N >= 468"),
        (np.zeros((468, 3)), (64, 64), r"\(N, 2\)"),
        (np.zeros((2, 2, 468, 2)), (64, 64), "expected"),
        (np.zeros((468, 2)), (0, 64), "positive"),
        (np.zeros((468, 2)), (64.5, 64), "whole numbers"),
        (np.zeros((468, 2)), "64x64", "height, width"),
    ],
)
def test_bad_input(points, size, match):
    with pytest.raises(UserError, match=match):
        draw_landmarks(points, size)
