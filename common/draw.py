"""Landmark images for the pose guider: a registry of drawing styles.

``draw_landmarks(points, image_size, style)`` turns pixel landmarks into colour line drawings.
``points`` are (N, 2) for one frame or (T, N, 2) for T frames, in the pixel convention of
:func:`common.geometry.project` (origin at the top-left corner of the image, x right, y down).
Any N >= 468 works: the 468 projected mesh vertices (``LandmarkSequence.project()``) or the 478
detected landmarks (with the iris points 468..477, which no style draws, see below).

Every style draws the same face parts, in this order (later parts cover earlier ones where
they overlap): the face oval without the forehead (chin and jaw, from temple to temple), left
eye, left eyebrow, right eye, right eyebrow, then the lips as eight separately coloured
segments (outer/inner x bottom/top x left/right half). "Left" is the subject's left
(MediaPipe's naming), which is the right side of the image. The part colours are AniPortrait's,
which are BGR triples in MediaPipe's drawing convention (:data:`FACE_PARTS`).

Styles
------
``aniportrait``
    Reproduces AniPortrait's ``FaceMeshVisualizer(forehead_edge=False).draw_landmarks`` as its
    released inference scripts use it, pixel for pixel: each landmark is normalised by the
    target width/height and stored as float32 (a protobuf ``float``), a connection is drawn
    only when both of its ends lie inside [0, 1] x [0, 1], the line end points are
    ``min(floor(512 * u), 511)`` on a black 512 x 512 canvas, lines are 2 px thick
    (``cv2.LINE_8``), and the canvas is then resized to (W, H) with ``cv2.INTER_LINEAR``. A
    non-square target is therefore drawn squashed into the square canvas and stretched back
    (lines across the longer side come out wider than 2 px). The returned array holds the
    colour triples in MediaPipe's BGR order, exactly as AniPortrait hands them to its pose
    guider (channel 0 = the triple's first value). Iris and pupils are not drawn: AniPortrait's
    iris connections and its pupil drawing are commented out.

``default``
    Our own style, with the same parts and colours, for new models: channels in RGB order (the
    colours look as MediaPipe meant them in any RGB viewer or video writer); drawn directly at
    the target resolution with sub-pixel end points (no square canvas, no resize blur, no
    stretching on non-square images); line thickness ``max(1, round(2 * min(H, W) / 512))``
    pixels, i.e. 2 px at 512 like AniPortrait, 1 px at 256, 4 px at 1024; crisp ``cv2.LINE_8``
    lines so every pixel is either black or exactly one part colour. Lines that leave the image
    are clipped instead of dropped; only segments with a non-finite end point, or an end point
    more than one image size outside the frame, are skipped. The iris is not drawn either, so
    the 468 projected vertices and the 478 detected landmarks give the same image.

New styles: ``@register_style("name", channel_order="rgb")`` on a function
``render(points (T, N, 2) float64, image_size (H, W)) -> (T, H, W, 3) uint8``.

Speed: per frame, one ``cv2.polylines`` call per part draws all its segments (as 2-point
polylines gathered with precomputed index arrays; the same pixels as one ``cv2.line`` per
segment); everything else is vectorised over frames. ``python bench/bench_draw.py`` measures
frames/s on one core.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from common.errors import UserError
from common.geometry import NUM_VERTICES

__all__ = [
    "FACE_PARTS",
    "FacePart",
    "Style",
    "draw_landmarks",
    "get_style",
    "list_styles",
    "register_style",
]

RenderFn = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


# --------------------------------------------------------------------------------------------
# Face parts: MediaPipe mesh indices as polylines, AniPortrait's colours
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FacePart:
    """A coloured set of line segments: ``edges`` (S, 2) vertex indices, ``color`` a BGR triple."""

    name: str
    color: tuple[int, int, int]
    edges: np.ndarray


def _chains_to_edges(*chains: tuple[int, ...]) -> np.ndarray:
    """Consecutive index pairs of each chain, stacked to (S, 2) int64."""
    pairs = [(a, b) for chain in chains for a, b in itertools.pairwise(chain)]
    edges = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    edges.setflags(write=False)
    return edges


# Drawing order and colours (B, G, R) of AniPortrait's FaceMeshVisualizer(forehead_edge=False).
FACE_PARTS: tuple[FacePart, ...] = (
    FacePart(
        "face_oval",
        (10, 200, 10),
        _chains_to_edges(
            (21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378),
            (378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251),
        ),
    ),
    FacePart(
        "left_eye",
        (180, 200, 10),
        _chains_to_edges(
            (263, 249, 390, 373, 374, 380, 381, 382, 362), (263, 466, 388, 387, 386, 385, 384, 398, 362)
        ),
    ),
    FacePart(
        "left_eyebrow", (180, 220, 10), _chains_to_edges((276, 283, 282, 295, 285), (300, 293, 334, 296, 336))
    ),
    FacePart(
        "right_eye",
        (10, 200, 180),
        _chains_to_edges(
            (33, 7, 163, 144, 145, 153, 154, 155, 133), (33, 246, 161, 160, 159, 158, 157, 173, 133)
        ),
    ),
    FacePart("right_eyebrow", (10, 220, 180), _chains_to_edges((46, 53, 52, 65, 55), (70, 63, 105, 66, 107))),
    FacePart("lips_outer_bottom_left", (10, 180, 20), _chains_to_edges((61, 146, 91, 181, 84, 17))),
    FacePart("lips_outer_bottom_right", (20, 10, 180), _chains_to_edges((17, 314, 405, 321, 375, 291))),
    FacePart("lips_inner_bottom_left", (100, 100, 30), _chains_to_edges((78, 95, 88, 178, 87, 14))),
    FacePart("lips_inner_bottom_right", (100, 150, 50), _chains_to_edges((14, 317, 402, 318, 324, 308))),
    FacePart("lips_outer_top_left", (20, 80, 100), _chains_to_edges((61, 185, 40, 39, 37, 0))),
    FacePart("lips_outer_top_right", (80, 100, 20), _chains_to_edges((0, 267, 269, 270, 409, 291))),
    FacePart("lips_inner_top_left", (120, 100, 200), _chains_to_edges((78, 191, 80, 81, 82, 13))),
    FacePart("lips_inner_top_right", (150, 120, 100), _chains_to_edges((13, 312, 311, 310, 415, 308))),
)

# All parts' edges concatenated, and each part's slice of them.
_ALL_EDGES = np.concatenate([p.edges for p in FACE_PARTS])
_OFFSETS = np.cumsum([0] + [len(p.edges) for p in FACE_PARTS])
_PART_SLICES = tuple(slice(int(a), int(b)) for a, b in itertools.pairwise(_OFFSETS))


def _draw_parts(
    image: np.ndarray,
    segments: np.ndarray,
    valid: np.ndarray | None,
    colors: tuple[tuple[int, int, int], ...],
    thickness: int,
    shift: int = 0,
) -> None:
    """Draw the (S, 2, 2) int32 segments of all parts onto ``image`` in part order.

    ``valid`` (S,) bool selects the segments to draw (None: all).
    """
    for sl, color in zip(_PART_SLICES, colors):
        seg = segments[sl]
        if valid is not None:
            seg = seg[valid[sl]]
            if not len(seg):
                continue
        cv2.polylines(image, seg, False, color, thickness, cv2.LINE_8, shift)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """A drawing style: ``render(points (T, N, 2) float64 pixels, (H, W)) -> (T, H, W, 3) uint8``.

    ``channel_order`` says how to read the returned channels ("rgb" or "bgr"); a video writer
    expecting RGB flips "bgr" frames.
    """

    name: str
    render: RenderFn
    channel_order: str = "rgb"
    description: str = ""


_STYLES: dict[str, Style] = {}


def register_style(
    name: str,
    render: RenderFn | None = None,
    *,
    channel_order: str = "rgb",
    description: str | None = None,
    replace: bool = False,
):
    """Register a drawing style; use as ``register_style(name, fn)`` or as a decorator ``@register_style(name)``.

    Registering a taken name raises ``ValueError`` unless ``replace=True``.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")

    def decorator(fn: RenderFn) -> RenderFn:
        if name in _STYLES and not replace:
            raise ValueError(f"drawing style {name!r} is already registered (pass replace=True to override)")
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
        _STYLES[name] = Style(name=name, render=fn, channel_order=channel_order, description=doc)
        return fn

    return decorator(render) if render is not None else decorator


def list_styles() -> list[str]:
    """Names of the registered styles, in registration order."""
    return list(_STYLES)


def get_style(name: str) -> Style:
    """The style called ``name``; an unknown name is a :class:`UserError` listing the available ones."""
    try:
        return _STYLES[name]
    except KeyError:
        raise UserError(
            f"unknown drawing style {name!r}; choose one of: {', '.join(list_styles())}"
        ) from None


def draw_landmarks(points: np.ndarray, image_size: tuple[int, int], style: str = "aniportrait") -> np.ndarray:
    """Draw pixel landmarks as a uint8 colour image (H, W, 3), or a stack (T, H, W, 3) for (T, N, 2) input.

    ``points``: (N, 2) or (T, N, 2) pixel coordinates (x right, y down, origin at the top-left
    corner), N >= 468. ``image_size``: (H, W) of the output. ``style``: a name from
    :func:`list_styles`; see the module docstring for what each draws and its channel order.
    """
    render = get_style(style).render
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim not in (2, 3) or pts.shape[-1] != 2 or pts.shape[-2] < NUM_VERTICES:
        raise UserError(
            f"landmarks to draw have shape {pts.shape}; expected (N, 2) or (T, N, 2) pixel coordinates "
            f"with N >= {NUM_VERTICES} (the projected mesh, e.g. LandmarkSequence.project())"
        )
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image size {image_size!r} must be (height, width) in pixels") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(image_size):
        raise UserError(f"image size {tuple(image_size)} must be two positive whole numbers (height, width)")
    single = pts.ndim == 2
    frames = render(pts[None] if single else pts, (h, w))
    return frames[0] if single else frames


# --------------------------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------------------------

_ANIPORTRAIT_CANVAS = 512
_ANIPORTRAIT_COLORS = tuple(p.color for p in FACE_PARTS)


@register_style("aniportrait", channel_order="bgr")
def render_aniportrait(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """AniPortrait's FaceMeshVisualizer: 512 canvas, 2 px lines, resized to (W, H); BGR channel order."""
    h, w = image_size
    c = _ANIPORTRAIT_CANVAS
    num = points.shape[0]
    # Normalised coordinates as AniPortrait stores them (float32 protobuf fields).
    norm = (points / np.array([w, h], dtype=np.float64)).astype(np.float32)
    inside = ((norm >= 0.0) & (norm <= 1.0)).all(axis=-1)  # (T, N); NaN is outside
    px = np.minimum(np.floor(np.where(inside[..., None], norm, 0.0).astype(np.float64) * c), c - 1)
    segments = np.ascontiguousarray(px.astype(np.int32)[:, _ALL_EDGES])  # (T, S, 2, 2)
    seg_valid = inside[:, _ALL_EDGES].all(axis=-1)  # (T, S)
    all_valid = seg_valid.all(axis=1)

    out = np.zeros((num, h, w, 3), dtype=np.uint8)
    direct = (h, w) == (c, c)
    canvas = None if direct else np.empty((c, c, 3), dtype=np.uint8)
    for t in range(num):
        image = out[t] if direct else canvas
        if not direct:
            image.fill(0)
        _draw_parts(image, segments[t], None if all_valid[t] else seg_valid[t], _ANIPORTRAIT_COLORS, 2)
        if not direct:
            cv2.resize(canvas, (w, h), dst=out[t], interpolation=cv2.INTER_LINEAR)
    return out


_DEFAULT_COLORS = tuple(p.color[::-1] for p in FACE_PARTS)
_SHIFT = 4  # sub-pixel bits for cv2 drawing


def default_thickness(image_size: tuple[int, int]) -> int:
    """Line thickness of the ``default`` style: ``max(1, round(2 * min(H, W) / 512))`` pixels."""
    return max(1, round(2 * min(image_size) / 512))


@register_style("default", channel_order="rgb")
def render_default(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Drawn at the target size, thickness scaling with min(H, W), RGB channel order."""
    h, w = image_size
    num = points.shape[0]
    # cv2 puts integer coordinates at pixel centres; ours put pixel centres at i + 0.5.
    fixed = (points - 0.5) * (1 << _SHIFT)
    extent = np.array([w, h], dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN compares False: not ok
        ok = ((points >= -extent) & (points <= 2.0 * extent)).all(axis=-1)  # (T, N), also False for NaN
    segments = np.ascontiguousarray(
        np.rint(np.where(ok[..., None], fixed, 0.0)).astype(np.int32)[:, _ALL_EDGES]
    )
    seg_valid = ok[:, _ALL_EDGES].all(axis=-1)
    all_valid = seg_valid.all(axis=1)
    thickness = default_thickness(image_size)
    out = np.zeros((num, h, w, 3), dtype=np.uint8)
    for t in range(num):
        _draw_parts(
            out[t], segments[t], None if all_valid[t] else seg_valid[t], _DEFAULT_COLORS, thickness, _SHIFT
        )
    return out
