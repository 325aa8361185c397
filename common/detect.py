"""Face landmark detection with MediaPipe's Tasks ``FaceLandmarker`` and landmark extraction.

Model asset lookup, in order: an explicit path -> the ``TALKING_PORTRAIT_FACE_MODEL`` environment
variable -> the user cache (``$TALKING_PORTRAIT_CACHE`` or ``$XDG_CACHE_HOME/talking_portrait`` or
``~/.cache/talking_portrait``) -> the copy bundled with the package (``common/data``, so that everything
runs offline) -> a download from MediaPipe's published URL, checked against its SHA-256. With none of
them (offline, no bundled copy), one error says where to put the file.

Frames without a face in videos (documented policy, see :func:`fill_gaps`): gaps of up to
``max_gap`` seconds between detected frames are interpolated linearly in landmark space and
flagged ``face_found=False``; a trailing gap of up to ``max_gap`` holds the last detection;
extraction fails when the first frame has no face, when a gap is longer, or when fewer than
``min_face_fraction`` of the frames show a face.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.atomic import atomic_output
from common.errors import UserError
from common.geometry import landmarks_to_geometry
from common.limits import MAX_IMAGE_SIDE
from common.lmkfile import NUM_BLENDSHAPES, NUM_LANDMARKS, LandmarkSequence

log = logging.getLogger(__name__)
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging, read when it is imported

MODEL_ENV = "TALKING_PORTRAIT_FACE_MODEL"
CACHE_ENV = "TALKING_PORTRAIT_CACHE"
MODEL_FILENAME = "face_landmarker_v2_with_blendshapes.task"
MODEL_URL = "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
BUNDLED_MODEL = Path(__file__).resolve().parent / "data" / MODEL_FILENAME


# --------------------------------------------------------------------------------------------
# Model asset
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The user cache folder for downloaded assets."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "talking_portrait"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_face_model(
    dest: Path, url: str | None = None, sha256: str | None = None, timeout: float = 60
) -> Path:
    """Download the model (default: MediaPipe's published URL) to ``dest`` atomically and verify its SHA-256."""
    url = url or MODEL_URL
    sha256 = sha256 or MODEL_SHA256
    log.info("downloading MediaPipe face landmarker model from %s", url)
    with atomic_output(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
                while block := response.read(1 << 20):
                    fh.write(block)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise UserError(
                f"could not download the face landmarker model from {url} ({err}). Download it on a machine "
                f"with internet and put it at {dest}, or set {MODEL_ENV}=/path/to/{MODEL_FILENAME}"
            ) from None
        got = sha256_of(tmp)
        if got != sha256:
            raise UserError(
                f"downloaded face landmarker model from {url} has SHA-256 {got}, expected {sha256}; "
                f"the download is damaged or the URL changed: fetch it again or set {MODEL_ENV}"
            )
    return dest


def resolve_face_model(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the FaceLandmarker model bundle (see the module docstring for the lookup order)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"{p}: face landmarker model not found; give the path of {MODEL_FILENAME}")
        return _check_bundle(p)
    env = os.environ.get(MODEL_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise UserError(f"{MODEL_ENV}={env}: no such file; point it at {MODEL_FILENAME}")
        return _check_bundle(p)
    cached = cache_dir() / MODEL_FILENAME
    if cached.is_file():
        return cached
    if BUNDLED_MODEL.is_file():
        return BUNDLED_MODEL
    if not download:
        raise UserError(
            f"face landmarker model not found: put {MODEL_FILENAME} at {cached} or set {MODEL_ENV} "
            f"(it is published at {MODEL_URL})"
        )
    return download_face_model(cached)


def _check_bundle(path: Path) -> Path:
    """A MediaPipe ``.task`` file is a zip archive of models: refuse anything else before MediaPipe sees it."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: not a MediaPipe model bundle (a .task file is a zip archive); give {MODEL_FILENAME} "
            f"from {MODEL_URL}"
        )
    return path


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------


@dataclass
class FaceResult:
    """One detected face: normalised landmarks (478, 3), blendshape scores (52,), MediaPipe's 4x4 matrix."""

    landmarks: np.ndarray
    blendshapes: np.ndarray
    matrix: np.ndarray

    @property
    def area(self) -> float:
        """Bounding-box area of the landmarks in normalised units (for picking the largest face)."""
        lo, hi = self.landmarks[:, :2].min(0), self.landmarks[:, :2].max(0)
        return float(np.prod(hi - lo))

    @property
    def center(self) -> np.ndarray:
        return self.landmarks[:, :2].mean(0)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence MediaPipe's native start-up log lines (written straight to fd 2, ignoring GLOG settings)."""
    if os.environ.get("TALKING_PORTRAIT_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceDetector:
    """A MediaPipe FaceLandmarker in VIDEO mode (real timestamps) or IMAGE mode. Use as a context manager."""

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        mode: str = "video",
        num_faces: int = 1,
        min_confidence: float = 0.5,
    ) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        if mode not in ("video", "image"):
            raise ValueError(f"mode must be 'video' or 'image', got {mode!r}")
        self.mode = mode
        model = resolve_face_model(model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model)),
            running_mode=vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE,
            num_faces=num_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            with _quiet_native_stderr():
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as err:
            raise UserError(
                f"{model}: not a valid MediaPipe face landmarker model ({err}); re-download it"
            ) from None
        self._last_ts = -1

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown
        with contextlib.suppress(Exception):
            self.close()

    def detect(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> list[FaceResult]:
        """All faces in an RGB uint8 image; in video mode ``timestamp_ms`` must increase (it is bumped if not)."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self.mode == "video":
            ts = int(timestamp_ms if timestamp_ms is not None else self._last_ts + 33)
            ts = max(ts, self._last_ts + 1)
            self._last_ts = ts
            result = self._landmarker.detect_for_video(image, ts)
        else:
            result = self._landmarker.detect(image)
        faces = []
        for i, lms in enumerate(result.face_landmarks):
            landmarks = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float32)
            blend = (
                np.array([c.score for c in result.face_blendshapes[i]], dtype=np.float32)
                if result.face_blendshapes
                else np.zeros(NUM_BLENDSHAPES, np.float32)
            )
            matrix = (
                np.asarray(result.facial_transformation_matrixes[i], dtype=np.float64)
                if result.facial_transformation_matrixes
                else np.eye(4)
            )
            faces.append(FaceResult(landmarks=landmarks, blendshapes=blend, matrix=matrix))
        return faces


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


@dataclass
class ExtractionReport:
    """What happened during extraction: frames seen, faces found, interpolated frames, multi-face frames."""

    num_frames: int = 0
    num_found: int = 0
    num_interpolated: int = 0
    num_multi_face: int = 0
    warnings: list[str] = field(default_factory=list)


def fill_gaps(
    landmarks: np.ndarray,
    found: np.ndarray,
    fps: float,
    max_gap: float,
    min_face_fraction: float,
    source: str,
) -> np.ndarray:
    """Fill frames without a face per the module's policy; returns landmarks with every frame filled."""
    t = len(found)
    n_found = int(found.sum())
    if n_found == 0:
        raise UserError(
            f"{source}: no face found in any of its {t} frame(s); give a video or image showing a face"
        )
    if n_found < min_face_fraction * t:
        raise UserError(
            f"{source}: a face was found in only {n_found} of {t} frames (less than {min_face_fraction:.0%}); "
            "trim the video to the part that shows the face"
        )
    if not found[0]:
        first = int(np.argmax(found))
        raise UserError(
            f"{source}: no face in the first {first} frame(s) ({first / fps:.2f} s); the sequence must start on a "
            f"face: trim the start of the video (e.g. ffmpeg -ss {first / fps:.2f} -i IN OUT)"
        )
    out = landmarks.copy()
    max_frames = max(round(max_gap * fps), 0)
    idx = np.flatnonzero(found)
    # interior gaps between consecutive detections
    for a, b in itertools.pairwise(idx):
        gap = b - a - 1
        if gap == 0:
            continue
        if gap > max_frames:
            raise UserError(
                f"{source}: no face for {gap} frames ({gap / fps:.2f} s) from frame {a + 1}; gaps of up to "
                f"{max_gap} s are interpolated: raise --max-gap or cut that part of the video"
            )
        w = (np.arange(1, gap + 1) / (gap + 1))[:, None, None]
        out[a + 1 : b] = (1 - w) * landmarks[a] + w * landmarks[b]
    tail = t - 1 - idx[-1]
    if tail > 0:
        if tail > max_frames:
            raise UserError(
                f"{source}: no face in the last {tail} frames ({tail / fps:.2f} s); trim the end of the video "
                "or raise --max-gap"
            )
        out[idx[-1] + 1 :] = landmarks[idx[-1]]
    return out


def _sequence_from_landmarks(
    landmarks: np.ndarray,
    blendshapes: np.ndarray,
    found: np.ndarray,
    fps: float,
    image_size: tuple[int, int],
    meta: dict,
) -> LandmarkSequence:
    geometry = landmarks_to_geometry(landmarks, image_size)
    h, w = image_size
    return LandmarkSequence(
        mesh=geometry.mesh,
        pose=geometry.pose,
        fps=fps,
        image_size=image_size,
        landmarks2d=landmarks[:, :, :2] * np.array([w, h], dtype=np.float32),
        blendshapes=blendshapes,
        face_found=found,
        meta=meta,
    )


def extract_video(
    path: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    max_gap: float = 0.5,
    min_face_fraction: float = 0.5,
    num_faces: int = 1,
    progress: bool = True,
    report: ExtractionReport | None = None,
) -> LandmarkSequence:
    """Detect landmarks in every frame of a video and compute mesh and pose (see the module's gap policy).

    With ``num_faces > 1`` several faces are looked for; the tracked face is the one nearest the
    previous frame's (the largest on the first frame) and frames with several faces are counted
    in ``report.num_multi_face``.
    """
    from tqdm.auto import tqdm

    from common.video import iter_frames, probe_video

    path = Path(path)
    info = probe_video(path)
    report = report if report is not None else ExtractionReport()
    lms: list[np.ndarray] = []
    blends: list[np.ndarray] = []
    found: list[bool] = []
    size: tuple[int, int] | None = None
    prev_center: np.ndarray | None = None
    empty_lm = np.full((NUM_LANDMARKS, 3), np.nan, np.float32)
    with FaceDetector(model_path, mode="video", num_faces=num_faces) as detector:
        bar = tqdm(
            total=info.num_frames or None,
            desc=f"extract {path.name}",
            unit="frame",
            disable=not progress,
            leave=False,
        )
        with bar:
            for t, rgb in iter_frames(path):
                size = size or rgb.shape[:2]
                faces = detector.detect(rgb, round(t * 1000))
                if len(faces) > 1:
                    report.num_multi_face += 1
                if faces:
                    if prev_center is None:
                        face = max(faces, key=lambda f: f.area)
                    else:
                        face = min(faces, key=lambda f: float(np.linalg.norm(f.center - prev_center)))
                    prev_center = face.center
                    lms.append(face.landmarks)
                    blends.append(face.blendshapes)
                    found.append(True)
                else:
                    lms.append(empty_lm)
                    blends.append(np.full(NUM_BLENDSHAPES, np.nan, np.float32))
                    found.append(False)
                bar.update(1)
    found_arr = np.array(found, dtype=bool)
    report.num_frames = len(found_arr)
    report.num_found = int(found_arr.sum())
    report.num_interpolated = report.num_frames - report.num_found
    landmarks = fill_gaps(np.stack(lms), found_arr, info.fps, max_gap, min_face_fraction, str(path))
    blend = fill_gaps(
        np.stack(blends)[..., None], found_arr, info.fps, max_gap, min_face_fraction, str(path)
    )[..., 0]
    meta = {
        "source": str(path),
        "source_type": "video",
        "extraction": {"max_gap": max_gap, "num_faces": num_faces},
    }
    return _sequence_from_landmarks(landmarks, blend, found_arr, info.fps, size, meta)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), with a clear error for unreadable files."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file; check the path")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as header:  # reads the size only
            width, height = header.size
    except Image.DecompressionBombError:
        raise UserError(f"{path}: the image is far too large; scale it down") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"{path}: not a readable image; give a JPEG or PNG file") from None
    if max(width, height) > MAX_IMAGE_SIDE:
        raise UserError(
            f"{path}: the image is {width}x{height} pixels, more than {MAX_IMAGE_SIDE} on a side; scale it down"
        )
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UserError(f"{path}: not a readable image; give a JPEG or PNG file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def detect_image(
    image: np.ndarray,
    model_path: str | os.PathLike | None = None,
    source: str = "image",
    max_faces: int = 5,
) -> FaceResult:
    """The largest face in an RGB image; warns when there are several, fails when there is none."""
    with FaceDetector(model_path, mode="image", num_faces=max_faces) as detector:
        faces = detector.detect(image)
    if not faces:
        raise UserError(
            f"{source}: no face found; give an image with a clearly visible, roughly frontal face"
        )
    if len(faces) > 1:
        log.warning("%s: %d faces found; using the largest", source, len(faces))
    return max(faces, key=lambda f: f.area)


def extract_image(
    path: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    fps: float = 30.0,
    image: np.ndarray | None = None,
) -> LandmarkSequence:
    """A one-frame landmark sequence from an image (the largest face)."""
    path = Path(path)
    rgb = read_image(path) if image is None else image
    face = detect_image(rgb, model_path, source=str(path))
    meta = {"source": str(path), "source_type": "image"}
    return _sequence_from_landmarks(
        face.landmarks[None], face.blendshapes[None], np.ones(1, bool), fps, rgb.shape[:2], meta
    )


def extract(path: str | os.PathLike, **kwargs) -> LandmarkSequence:
    """Extract from a video or an image, chosen by file extension (images: see ``common.video.IMAGE_SUFFIXES``)."""
    from common.video import IMAGE_SUFFIXES

    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        image_kwargs = {k: v for k, v in kwargs.items() if k in ("model_path", "fps")}
        return extract_image(path, **image_kwargs)
    kwargs.pop("fps", None)
    return extract_video(path, **kwargs)


def load_reference(path: str | Path, model_path: str | None = None) -> LandmarkSequence:
    """A reference face from an image (detected) or a landmark file (its first frame)."""
    from common.video import IMAGE_SUFFIXES

    path = Path(path)
    if path.suffix.lower() == ".npz":
        return LandmarkSequence.load(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return extract_image(path, model_path=model_path)
    raise UserError(f"{path}: a reference is an image ({', '.join(IMAGE_SUFFIXES)}) or a landmark .npz file")
