"""Put a reference image and a landmark sequence into the output frame (W x H) of generation.

Reference framing (:func:`choose_framing`, :func:`apply_framing`)
----------------------------------------------------------------
The face is found in the reference at its own size (any size, any aspect). Its *size* ``s`` is the height
of the box around the 468 mesh landmarks, or its width divided by the output aspect ``W / H`` when that is
larger (so a wide face also fits a narrow frame). A crop window of the output's aspect is centred on the
box (horizontally at the middle, vertically with the box centre at ``vertical_center`` of the height) and
its height ``c`` chosen so the face fills about half of the output:

* ``c = s / face_fraction`` (``face_fraction`` 0.5), unless that window leaves the image: then the window
  is tightened, down to ``s / max_face_fraction`` (0.55), to leave it as little as possible;
* if ``c`` is smaller than the output height (the crop would be enlarged), the window is loosened, up to
  ``s / min_face_fraction`` (0.45) and never so far that it leaves the image, so small images are
  enlarged no more than needed;
* whatever the window still has outside the image is padded (``pad_mode``: ``replicate`` the border
  pixels, ``reflect``, or ``constant`` black).

The window (rounded to whole pixels) is cut out and resized to W x H (area averaging when shrinking,
bicubic when enlarging). :class:`Framing` is the resulting 2-D affine map ``u = s_x x + o_x``,
``v = s_y y + o_y`` from the reference's pixel coordinates (origin at the top-left corner, pixel ``i``
covering ``[i, i + 1)``, as in :mod:`common.geometry` and :mod:`common.draw`) to the output's.

Landmarks (:func:`frame_landmarks`)
-----------------------------------
A landmark file describes a face by a pose-free mesh and a head pose in the camera of some image. A file
made for this reference (it stores ``reference_mesh``: audio2lmk's output, or ``common.lmk retarget`` onto
this image) is used as it is (with a warning when its reference face is clearly another person's); a
file without one (landmarks extracted from another person's video) is first retargeted onto the reference
face with :func:`common.edit.retarget` (its expression and head motion, the reference's face shape and
head pose), and that is logged. The meshes are then projected into the reference image's original camera
(its own width and height) and mapped through the framing affine, so they land exactly where the
reference's own face is in the output, and drawn at W x H in the model's landmark style (lazily, chunk by
chunk: :class:`LandmarkDrawings`). The reference's own landmarks, projected and mapped the same way, are
drawn once as the pose guider's reference input.
"""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np

from common.draw import draw_landmarks, get_style
from common.edit import inter_ocular_distance, retarget
from common.errors import UserError
from common.geometry import NUM_VERTICES, project
from common.lmkfile import LandmarkSequence

log = logging.getLogger(__name__)

PAD_MODES = {
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
    "constant": cv2.BORDER_CONSTANT,
}
# Mean vertex distance between a file's reference_mesh and the detected reference face, in inter-ocular
# distances, above which the file is taken to have been made for another face (a warning only). Measured on
# the shared portraits: the same face detected at two resolutions 0.007, two different people 0.045 to 0.21.
FOREIGN_REFERENCE_TOLERANCE = 0.03


@dataclasses.dataclass(frozen=True)
class Framing:
    """Where the output frame lies in the reference image, and the affine map between their pixel coordinates.

    Attributes:
        source_size: (H, W) of the reference image.
        size: (H, W) of the output.
        window: (x0, y0, width, height) of the crop window in reference pixels (may extend past the image).
        scale: (s_x, s_y) output pixels per reference pixel.
        offset: (o_x, o_y) in output pixels.
    """

    source_size: tuple[int, int]
    size: tuple[int, int]
    window: tuple[int, int, int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]

    @property
    def matrix(self) -> np.ndarray:
        """2x3 affine matrix (reference pixels -> output pixels)."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        return np.array([[sx, 0.0, ox], [0.0, sy, oy]])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Reference pixel coordinates (..., 2) -> output pixel coordinates (..., 2)."""
        pts = np.asarray(points, dtype=np.float64)
        return pts * np.asarray(self.scale) + np.asarray(self.offset)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Output pixel coordinates (..., 2) -> reference pixel coordinates (..., 2)."""
        pts = np.asarray(points, dtype=np.float64)
        return (pts - np.asarray(self.offset)) / np.asarray(self.scale)


def face_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the first 468 landmarks (pixels, (N, 2))."""
    pts = np.asarray(points, dtype=np.float64)[:NUM_VERTICES, :2]
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


FRAMING_OPTIONS = ("face_fraction", "min_face_fraction", "max_face_fraction", "vertical_center")


def check_framing_options(options: dict[str, float]) -> dict[str, float]:
    """``options`` if they are :func:`choose_framing`'s keyword arguments with valid values, else UserError."""
    unknown = sorted(set(options) - set(FRAMING_OPTIONS))
    if unknown:
        raise UserError(
            f"unknown framing option(s) {', '.join(unknown)}; known: {', '.join(FRAMING_OPTIONS)}"
        )
    box = np.array([[0.0, 0.0], [1.0, 1.0]])
    choose_framing(box, (4, 4), (4, 4), **options)
    return options


def choose_framing(
    face_points: np.ndarray,
    source_size: tuple[int, int],
    size: tuple[int, int],
    *,
    face_fraction: float = 0.5,
    min_face_fraction: float = 0.45,
    max_face_fraction: float = 0.55,
    vertical_center: float = 0.5,
) -> Framing:
    """The crop window for a face (landmarks (N >= 468, 2) in reference pixels); see the module docstring.

    Args:
        face_points: the reference face's landmarks in pixels of the reference image.
        source_size: (H, W) of the reference image.
        size: (H, W) of the output.
        face_fraction: preferred face size as a fraction of the output height.
        min_face_fraction, max_face_fraction: how far the size may move to avoid enlarging / padding.
        vertical_center: where the face box's centre sits, as a fraction of the output height from the top.
    """
    if not 0 < min_face_fraction <= face_fraction <= max_face_fraction < 1:
        raise UserError(
            f"face fractions must satisfy 0 < min ({min_face_fraction}) <= preferred ({face_fraction}) "
            f"<= max ({max_face_fraction}) < 1"
        )
    if not 0 < vertical_center < 1:
        raise UserError(f"vertical_center={vertical_center} must be between 0 and 1")
    img_h, img_w = (int(v) for v in source_size)
    out_h, out_w = (int(v) for v in size)
    aspect = out_w / out_h
    x0, y0, x1, y1 = face_box(face_points)
    face_size = max(y1 - y0, (x1 - x0) / aspect)
    if not face_size > 0:
        raise UserError("the detected face has no extent; give an image with a clearly visible face")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # The tallest centred window that stays inside the image (<= 0 when the face centre is outside it).
    inside = min(
        2 * cx / aspect, 2 * (img_w - cx) / aspect, cy / vertical_center, (img_h - cy) / (1 - vertical_center)
    )
    tight, preferred, loose = (
        face_size / max_face_fraction,
        face_size / face_fraction,
        face_size / min_face_fraction,
    )
    height = preferred
    if height > inside:
        height = max(tight, inside)
    elif height < out_h:
        height = min(out_h, loose, inside)
    win_h = max(1, round(height))
    win_w = max(1, round(win_h * aspect))
    left = round(cx - win_w / 2)
    top = round(cy - vertical_center * win_h)
    sx, sy = out_w / win_w, out_h / win_h
    return Framing(
        source_size=(img_h, img_w),
        size=(out_h, out_w),
        window=(left, top, win_w, win_h),
        scale=(sx, sy),
        offset=(-left * sx, -top * sy),
    )


def apply_framing(image: np.ndarray, framing: Framing, pad_mode: str = "replicate") -> np.ndarray:
    """Cut ``framing.window`` out of ``image`` (H, W, C) uint8, padding outside it, and resize to ``framing.size``."""
    if pad_mode not in PAD_MODES:
        raise UserError(f"pad_mode={pad_mode!r}; choose one of {', '.join(PAD_MODES)}")
    img_h, img_w = image.shape[:2]
    if (img_h, img_w) != framing.source_size:
        raise ValueError(f"image is {img_h}x{img_w}, the framing was made for {framing.source_size}")
    left, top, win_w, win_h = framing.window
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + win_w, img_w), min(top + win_h, img_h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the crop window does not overlap the image")
    crop = image[y0:y1, x0:x1]
    pads = (y0 - top, top + win_h - y1, x0 - left, left + win_w - x1)  # top, bottom, left, right
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, PAD_MODES[pad_mode], value=(0, 0, 0))
    out_h, out_w = framing.size
    shrinking = out_w < win_w and out_h < win_h
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (out_w, out_h), interpolation=interpolation)


def frame_reference(
    image: np.ndarray,
    face_points: np.ndarray,
    size: tuple[int, int],
    *,
    pad_mode: str = "replicate",
    **kwargs,
) -> tuple[np.ndarray, Framing]:
    """The reference image framed to ``size`` (H, W) around its face, and the :class:`Framing` used.

    ``kwargs`` go to :func:`choose_framing` (face fractions, vertical centre).
    """
    framing = choose_framing(face_points, image.shape[:2], size, **kwargs)
    return apply_framing(image, framing, pad_mode), framing


def prepare_sequence(
    sequence: LandmarkSequence, reference: LandmarkSequence, source: str
) -> LandmarkSequence:
    """The sequence to draw: as given when it was made for a reference, else retargeted onto ``reference``.

    ``reference``: the reference image's one-frame sequence (:func:`common.detect.extract_image`).
    ``source`` names the landmark file in messages.
    """
    if sequence.reference_mesh is None:
        log.info(
            "%s has no reference face (reference_mesh): retargeting its expression and head motion onto the "
            "reference image's face",
            source,
        )
        return retarget(sequence, reference)
    detected = reference.mesh[0].astype(np.float64)
    stored = sequence.reference_mesh.astype(np.float64)
    distance = float(np.linalg.norm(stored - detected, axis=-1).mean() / inter_ocular_distance(detected))
    if distance > FOREIGN_REFERENCE_TOLERANCE:
        log.warning(
            "%s was made for a different face (its reference_mesh is %.2f inter-ocular distances from the "
            "reference image's face); it is used as it is: retarget it onto this image with "
            "`python -m common.lmk retarget` if the face shape looks wrong",
            source,
            distance,
        )
    return sequence


def frame_landmarks(
    sequence: LandmarkSequence, reference: LandmarkSequence, framing: Framing
) -> tuple[np.ndarray, np.ndarray]:
    """Output-pixel landmarks of the sequence (T, 468, 2) and of the reference face (468, 2).

    Both are projected in the reference image's original camera (``reference.image_size``) and mapped
    through ``framing``.
    """
    size = reference.image_size
    points = framing.apply(project(sequence.mesh, sequence.pose, size))
    reference_points = framing.apply(project(reference.mesh[:1], reference.pose[:1], size))[0]
    return points, reference_points


class LandmarkDrawings:
    """Landmark drawings (T, H, W, 3) uint8 made on demand: ``len()``, ``drawings[a:b]``.

    Drawn in ``style``'s own channel order (what the pose guider was trained on); :meth:`rgb` gives
    viewable frames.
    """

    def __init__(self, points: np.ndarray, size: tuple[int, int], style: str) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        if self.points.ndim != 3 or self.points.shape[-1] != 2:
            raise ValueError(f"points must be (T, N, 2), got {self.points.shape}")
        self.size = (int(size[0]), int(size[1]))
        self.style = get_style(style)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("LandmarkDrawings are read in slices, e.g. drawings[0:16]")
        return draw_landmarks(self.points[index], self.size, self.style.name)

    def rgb(self, images: np.ndarray) -> np.ndarray:
        """Drawings from this style's channel order to RGB."""
        return images[..., ::-1] if self.style.channel_order == "bgr" else images
