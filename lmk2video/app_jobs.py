"""The web app's jobs as a library: ``python -m lmk2video.app`` is the Gradio page around :class:`Studio`.

What a page asks for, and what it gets:

* **Models**: the folders under ``models/`` (:func:`discover_models`): audio2lmk folders hold
  ``audio2lmk.json``, lmk2video folders ``model_index.json``. The default is the sample models that ship with
  the code, AniPortrait's converted weights (``models/aniportrait/*``) when they are there and a GPU is.
  Loaded once and kept (:class:`LoadedModels`).
* **Inputs**, each checked before any model work, every problem one :class:`~common.errors.UserError` naming
  the upload and the fix (:func:`load_portrait`, :func:`load_speech`, :func:`load_driving`,
  :meth:`Adjustments.check`): a portrait with a face (sides up to :data:`common.limits.MAX_IMAGE_SIDE`),
  speech of at most :data:`MAX_AUDIO_SECONDS` (readable, not silent), a driving video of at most
  :data:`MAX_VIDEO_SECONDS` with a face.
* **Preview** (seconds): speech -> landmarks with audio2lmk on the portrait's face (or, for reenactment, the
  driving video's landmarks retargeted onto it), the adjustments applied (:func:`apply_adjustments`), and the
  landmark video with the sound, drawn over the portrait and beside it (:func:`render_preview`).
* **Generate**: the same landmarks, then :func:`lmk2video.generation.generate` with the loaded pipeline; its
  progress (denoising-UNet passes: steps x context windows, then decoded frames) goes to a ``report``
  callback, which may stop the job by raising :class:`Cancelled`.

Every file a job writes goes to its own folder in the session's folder of a :class:`Workspace` (a temporary
root), atomically (temporary file + rename), so nothing half-written is ever served; a session's folder is
removed when the session ends, and folders of app processes that no longer run are removed at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common import limits
from common.atomic import process_exists
from common.edit import MAX_ANGLE
from common.errors import UserError
from common.lmkfile import LandmarkSequence

log = logging.getLogger("lmk2video.app")

MAX_AUDIO_SECONDS = 60.0
"""Longest speech a page may send (``--max-seconds`` changes it)."""
MAX_VIDEO_SECONDS = 60.0
"""Longest driving video a page may send (``--max-seconds`` changes it)."""
MAX_UPLOAD = "50mb"
"""Largest upload (Gradio's ``max_file_size``; ``--max-upload`` changes it)."""
SESSION_MAX_AGE = 6 * 3600.0
"""Seconds after which the folder of a session that did nothing is removed (sessions that end are removed at once)."""
PREVIEW_HEIGHT = 384
"""Height in pixels of the landmark preview (portrait with the landmarks over it | landmarks alone)."""
MAX_POSE_CURVE = 10_000
"""Longest pose curve text, in characters."""

POSE_SOURCES = ("model", "still", "template", "video")
BLINKS = ("keep", "auto", "none", "video")
MIX_REGIONS = ("eyes", "brows")
PRESETS = ("quality", "balanced", "fastest")


def parse_upload_size(text: str) -> int:
    """``"50mb"`` -> bytes (units b, kb, mb, gb, tb, as Gradio's ``max_file_size`` counts them: 1 kb = 1024 b)."""
    match = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb|tb)\s*", str(text), flags=re.IGNORECASE)
    if match is None or int(match.group(1)) < 1:
        raise UserError(f"--max-upload {text!r}: write a size such as 50mb or 1gb (units b, kb, mb, gb, tb)")
    return int(match.group(1)) * 1024 ** ("b", "kb", "mb", "gb", "tb").index(match.group(2).lower())


class Cancelled(Exception):
    """The job was cancelled (raised by a ``report`` callback); nothing is written."""


Report = Callable[[str, int, int], None]
"""``report(stage, done, total)``: ``"landmarks"``, ``"denoising"`` (UNet passes), ``"decoding"`` (frames)."""


def _no_report(stage: str, done: int, total: int) -> None:
    return None


# ------------------------------------------------------------------------------------------------ models


@dataclasses.dataclass(frozen=True)
class ModelChoices:
    """The model folders found under a root; ``default_*``: the ones a new page starts with (or None)."""

    root: Path
    audio2lmk: tuple[Path, ...]
    lmk2video: tuple[Path, ...]
    default_audio2lmk: Path | None
    default_lmk2video: Path | None

    def label(self, path: Path) -> str:
        """``sample/lmk2video`` for ``ROOT/sample/lmk2video``."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def _model_folders(root: Path, marker: str, depth: int = 3) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")) if level < depth else []
        if marker in files:
            found.append(Path(folder))
            subfolders[:] = []
    return sorted(found)


def discover_models(root: str | os.PathLike, gpu: bool | None = None) -> ModelChoices:
    """The audio2lmk and lmk2video model folders under ``root`` (three levels deep, hidden folders skipped).

    Default: ``ROOT/aniportrait/{audio2lmk,lmk2video}`` when both are there and a GPU is (``gpu``: None asks
    torch), else ``ROOT/sample/...``, else the first folder found.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(
            f"model folder {root} does not exist; start the app in a checkout (models/sample ships with it) or "
            "pass --models DIR"
        )
    audio = tuple(_model_folders(root, "audio2lmk.json"))
    video = tuple(_model_folders(root, "model_index.json"))
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    converted = (root / "aniportrait" / "audio2lmk") in audio and (
        root / "aniportrait" / "lmk2video"
    ) in video
    preferred = root / ("aniportrait" if converted and gpu else "sample")

    def pick(found: tuple[Path, ...], stage: str) -> Path | None:
        if preferred / stage in found:
            return preferred / stage
        return found[0] if found else None

    return ModelChoices(root, audio, video, pick(audio, "audio2lmk"), pick(video, "lmk2video"))


def audio2lmk_styles(folder: str | os.PathLike | None) -> list[str]:
    """The training speakers (pose styles) an audio2lmk folder lists in ``audio2lmk.json`` (none when unreadable)."""
    if folder is None:
        return []
    try:
        return [str(s) for s in json.loads((Path(folder) / "audio2lmk.json").read_text()).get("styles", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


class LoadedModels:
    """Models loaded once and kept for every session; each model is used by one job at a time (its lock)."""

    def __init__(self, device: str = "auto") -> None:
        from common.devices import resolve_device

        self.device = resolve_device(device)
        self._models: dict[tuple[str, Path], Any] = {}
        self._locks: dict[tuple[str, Path], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: tuple[str, Path]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def audio2lmk(self, folder: str | os.PathLike) -> Iterator[Any]:
        """The loaded audio2lmk model of ``folder``, held for the block."""
        from audio2lmk.inference import load_audio2lmk

        key = ("audio2lmk", Path(folder).resolve())
        with self._lock(key):
            if key not in self._models:
                self._models[key] = load_audio2lmk(key[1]).to(self.device)
            yield self._models[key]

    @contextlib.contextmanager
    def lmk2video(self, folder: str | os.PathLike) -> Iterator[Any]:
        """The loaded lmk2video pipeline of ``folder`` (device and dtype as ``generate`` chooses), held for the block."""
        from lmk2video.pipeline import load_pipeline
        from lmk2video.rendering import resolve_dtype

        key = ("lmk2video", Path(folder).resolve())
        with self._lock(key):
            if key not in self._models:
                if not (key[1] / "model_index.json").is_file():
                    raise UserError(
                        f"{key[1]} is not an lmk2video model folder (no model_index.json); choose another model"
                    )
                dtype = resolve_dtype("auto", self.device)
                self._models[key] = load_pipeline(key[1], device=self.device, dtype=dtype)
            yield self._models[key]


# --------------------------------------------------------------------------------------------- workspace


def default_temp_root() -> Path:
    """``$TMPDIR/talking-portrait-app-UID``."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"talking-portrait-app-{uid}"


class Workspace:
    """The app's temporary files: ``ROOT/PID-SESSION/KIND-N/`` per job.

    The folder of a session is removed when the session ends (:meth:`end`), or, for a session that did nothing
    for :data:`SESSION_MAX_AGE`, when another job starts; folders of app processes that no longer run are
    removed by :meth:`prepare` (at start).
    """

    def __init__(self, root: str | os.PathLike | None = None, max_age: float = SESSION_MAX_AGE) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else default_temp_root()
        self.max_age = max_age
        self._guard = threading.Lock()

    def _unwritable(self, err: OSError) -> UserError:
        return UserError(
            f"the app's temporary folder {self.root} cannot be written ({err.strerror or err}); start the app "
            "with --temp-dir DIR (a folder you can write to)"
        )

    def prepare(self) -> list[Path]:
        """Create the root (checked writable) and remove the folders of app processes that have ended."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe."):
                pass
        except OSError as err:
            raise self._unwritable(err) from None
        removed = []
        for entry in self.root.iterdir():
            match = re.match(r"^(\d+)-", entry.name)
            if entry.is_dir() and match and not process_exists(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        if removed:
            log.info("removed %d folder(s) of app sessions that ended: %s", len(removed), self.root)
        return removed

    def session(self, session_id: str) -> Path:
        """The folder of ``session_id`` (a Gradio session hash; other characters are dropped)."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "", str(session_id))[:64] or "anonymous"
        return self.root / f"{os.getpid()}-{safe}"

    def new_job(self, session_id: str, kind: str) -> Path:
        """A new, empty folder for one job of the session (``KIND-N``)."""
        self.sweep()
        folder = self.session(session_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with self._guard:
                n = 1 + max((int(m.group(1)) for p in folder.iterdir() if (m := re.match(rf"{kind}-(\d+)$", p.name))),
                            default=0)  # fmt: skip
                job = folder / f"{kind}-{n:03d}"
                job.mkdir()
            os.utime(folder)
        except OSError as err:
            raise self._unwritable(err) from None
        return job

    def cache(self, session_id: str) -> Path:
        """The session's folder for files kept between its jobs (landmarks extracted from a driving video)."""
        folder = self.session(session_id) / "cache"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._unwritable(err) from None
        return folder

    def end(self, session_id: str) -> None:
        """Remove the session's folder (the page was closed)."""
        shutil.rmtree(self.session(session_id), ignore_errors=True)

    def sweep(self) -> list[Path]:
        """Remove this process's session folders unused for longer than ``max_age``."""
        removed = []
        now = time.time()
        prefix = f"{os.getpid()}-"
        with contextlib.suppress(OSError):
            for entry in self.root.iterdir():
                if entry.name.startswith(prefix) and now - entry.stat().st_mtime > self.max_age:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed


# ------------------------------------------------------------------------------------------------ inputs


def _shown(path: Path) -> str:
    return path.name


@contextlib.contextmanager
def _named(path: Path, what: str) -> Iterator[None]:
    """Errors about an upload name it as the user knows it (``portrait 'me.png'``), not by its temporary path."""
    try:
        yield
    except UserError as err:
        message = str(err)
        for form in {str(path), str(path.resolve())}:
            message = message.replace(form, f"{what} '{_shown(path)}'")
        raise UserError(message) from None


def _given(path: str | os.PathLike | None, what: str, hint: str) -> Path:
    if path is None or str(path) == "":
        raise UserError(f"no {what}: {hint}")
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{what} '{path.name}' is not there any more (uploads of an ended session are removed); upload it again"
        )
    return path


@dataclasses.dataclass(frozen=True)
class Portrait:
    """An uploaded portrait: the file, its RGB pixels and its face (a one-frame landmark sequence)."""

    path: Path
    image: np.ndarray
    face: LandmarkSequence


def load_portrait(path: str | os.PathLike | None, face_model: str | None = None) -> Portrait:
    """Read the portrait and find its face; a :class:`UserError` naming the upload otherwise."""
    from common.detect import extract_image, read_image
    from common.video import IMAGE_SUFFIXES

    path = _given(path, "portrait", "upload an image with a face (or pick a sample)")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(
            f"portrait '{path.name}' is not an image file; upload a {', '.join(s[1:] for s in IMAGE_SUFFIXES)} image"
        )
    with _named(path, "portrait"):
        image = read_image(path)
        face = extract_image(path, model_path=face_model, image=image)
    return Portrait(path, image, face)


def _container_seconds(path: Path) -> float | None:
    """The duration a container announces, without decoding (None when it announces none)."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            streams = container.streams.audio or container.streams.video
            if streams and streams[0].duration is not None and streams[0].time_base is not None:
                return float(streams[0].duration * streams[0].time_base)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None  # load_audio / probe_video say what is wrong with it
    return None


def _too_long(path: Path, what: str, seconds: float, limit: float) -> UserError:
    return UserError(
        f"{what} '{path.name}' lasts {seconds:.1f} s, longer than this app's limit of {limit:g} s; cut it to at "
        f"most {limit:g} s (the app's --max-seconds option raises the limit)"
    )


@dataclasses.dataclass(frozen=True)
class Speech:
    """Speech checked and written as 16 kHz mono wav (``path``, in a job folder) and its duration."""

    path: Path
    seconds: float
    name: str


def load_speech(
    path: str | os.PathLike | None, folder: str | os.PathLike, max_seconds: float = MAX_AUDIO_SECONDS
) -> Speech:
    """Decode the speech (any format PyAV reads; not empty, silent, corrupt or longer than ``max_seconds``) and
    write it to ``folder/speech.wav``."""
    from common.audio import SAMPLE_RATE, load_audio
    from common.corpus import write_wav

    path = _given(path, "speech", "upload an audio file or record from the microphone")
    announced = _container_seconds(path)
    if announced is not None and announced > max_seconds + 0.5:
        raise _too_long(path, "speech", announced, max_seconds)
    with _named(path, "speech"):
        samples = load_audio(path, SAMPLE_RATE, min_duration=0.1)
    seconds = samples.size / SAMPLE_RATE
    if seconds > max_seconds:
        raise _too_long(path, "speech", seconds, max_seconds)
    return Speech(write_wav(Path(folder) / "speech.wav", samples, SAMPLE_RATE), seconds, path.name)


@dataclasses.dataclass(frozen=True)
class Driving:
    """A driving video: its landmarks (the face in the video) and its sound, if any, as a 16 kHz wav."""

    path: Path
    landmarks: LandmarkSequence
    audio: Path | None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:20]


def load_driving(
    path: str | os.PathLike | None,
    cache: str | os.PathLike,
    max_seconds: float = MAX_VIDEO_SECONDS,
    face_model: str | None = None,
) -> Driving:
    """Check a driving video, extract its landmarks (kept in ``cache`` by content, so that a second preview of
    the same video does not extract again) and its sound."""
    from common.audio import SAMPLE_RATE, load_audio
    from common.corpus import write_wav
    from common.detect import extract_video
    from common.video import VIDEO_SUFFIXES, probe_video

    path = _given(path, "driving video", "upload a video of a talking face")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(
            f"driving video '{path.name}' is not a video file; upload a {', '.join(s[1:] for s in VIDEO_SUFFIXES)} "
            "video of a talking face"
        )
    with _named(path, "driving video"):
        info = probe_video(path)
        if info.duration > max_seconds + 0.5:
            raise _too_long(path, "driving video", info.duration, max_seconds)
        key = _digest(path)
        landmarks_path = Path(cache) / f"driving-{key}.npz"
        if landmarks_path.is_file():
            landmarks = LandmarkSequence.load(landmarks_path)
        else:
            landmarks = extract_video(path, model_path=face_model, progress=False)
            landmarks.save(landmarks_path)
        audio = None
        if info.has_audio:
            samples = load_audio(path, SAMPLE_RATE, silence_dbfs=None)
            count = round(landmarks.duration * SAMPLE_RATE)  # the sound cut or padded to the landmarks
            samples = np.pad(samples[:count], (0, max(0, count - samples.size)))
            audio = write_wav(Path(cache) / f"driving-{key}.wav", samples, SAMPLE_RATE)
    return Driving(path, landmarks, audio)


# ------------------------------------------------------------------------------------------- adjustments


@dataclasses.dataclass
class Adjustments:
    """The page's adjustments, applied in the order of ``python -m common.lmk edit``: mix regions, smoothing,
    mouth scale, expression scale, blinks, pose source, rotation offsets and pose curve.

    Attributes:
        pose: ``model`` (audio2lmk's head motion; reenactment: the driving video's), ``still`` (the portrait's
            pose held), ``template`` (an AniPortrait ``pose_temp``-style ``.npy`` upload, ``template``),
            ``video`` (the driving video's head motion, retargeted onto the portrait).
        template: the ``.npy`` pose template for ``pose="template"``.
        style: audio2lmk's pose style (an id or a training speaker's name); None draws it from ``seed``.
        mouth_scale, expression_scale: 1 = unchanged.
        smooth: frames averaged (1 = unchanged).
        yaw, pitch, roll: constant head-rotation offsets, degrees.
        pose_curve: keyframes typed in the page (``0:yaw=0;2.5:yaw=20``, seconds and degrees); empty: none.
        pose_curve_file: or an uploaded CSV file (``time,yaw,pitch,roll``).
        blink: ``keep``, ``auto`` (natural blinks, seeded), ``none``, ``video`` (the driving video's blinks).
        mix: regions taken from the driving video (``eyes``, ``brows``).
        seed: the style draw, the blinks and the diffusion noise.
    """

    pose: str = "model"
    template: str | None = None
    style: int | str | None = None
    mouth_scale: float = 1.0
    expression_scale: float = 1.0
    smooth: int = 1
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    pose_curve: str = ""
    pose_curve_file: str | None = None
    blink: str = "keep"
    mix: tuple[str, ...] = ()
    seed: int = 42

    def check(self) -> Adjustments:
        """Every value in range (named as the page labels it), before any file is read; returns ``self``."""
        if self.pose not in POSE_SOURCES:
            raise UserError(f"head pose {self.pose!r}: choose one of {', '.join(POSE_SOURCES)}")
        if self.pose == "template" and not self.template:
            raise UserError("head pose 'template' needs a pose template: upload a .npy file (frames x 6)")
        limits.number(
            self.mouth_scale, "mouth scale", 0, limits.MAX_MOUTH_SCALE, hint="1 = unchanged, 0 = closed"
        )
        limits.number(
            self.expression_scale, "expression scale", 0, limits.MAX_EXPRESSION_SCALE, hint="1 = unchanged"
        )
        limits.number(
            self.smooth, "smoothing", 1, limits.MAX_SMOOTH, integer=True, hint="frames; 1 = unchanged"
        )
        self.smooth = int(self.smooth)
        for name in ("yaw", "pitch", "roll"):
            limits.number(getattr(self, name), name, -MAX_ANGLE, MAX_ANGLE, hint="degrees")
        if not isinstance(self.pose_curve, str) or len(self.pose_curve) > MAX_POSE_CURVE:
            raise UserError(
                f"pose curve: at most {MAX_POSE_CURVE} characters of keyframes, or upload a CSV file"
            )
        if self.pose_curve.strip() and self.pose_curve_file:
            raise UserError("pose curve: give keyframes or a CSV file, not both (clear one of them)")
        if self.pose_curve.strip().lower().endswith(".csv"):  # typed text is keyframes, never a server path
            raise UserError(
                f"pose curve {self.pose_curve.strip()!r}: type keyframes (e.g. 0:yaw=0;2.5:yaw=20;5:yaw=0), or "
                "upload the CSV file in the field beside it"
            )
        if self.blink not in BLINKS:
            raise UserError(f"blinks {self.blink!r}: choose one of {', '.join(BLINKS)}")
        unknown = sorted(set(self.mix) - set(MIX_REGIONS))
        if unknown:
            raise UserError(f"mix regions {unknown}: choose among {', '.join(MIX_REGIONS)}")
        if self.seed is None:
            raise UserError("seed: give a whole number from 0 to 2^63 - 1")
        self.seed = limits.seed(self.seed, "seed")
        return self

    @property
    def needs_driving(self) -> bool:
        """Whether the adjustments take something from a driving video."""
        return self.pose == "video" or self.blink == "video" or bool(self.mix)


@dataclasses.dataclass(frozen=True)
class AdjustmentFiles:
    """The uploads :class:`Adjustments` name, read and checked: the pose template and the pose curve."""

    template: Any = None  # common.edit.PoseSource
    curve: Any = None  # common.edit.PoseCurve


def read_adjustment_files(adjustments: Adjustments) -> AdjustmentFiles:
    """Read the pose template and the pose curve (typed or uploaded) before any model work; a
    :class:`UserError` naming the upload otherwise."""
    from common import edit

    adj = adjustments
    template = curve = None
    if adj.pose == "template":
        path = Path(str(adj.template))
        if path.suffix.lower() != ".npy":
            raise UserError(
                f"pose template '{path.name}' is not a .npy file; upload a (frames, 6) .npy array"
            )
        with _named(path, "pose template"):
            template = edit.load_pose_source(path)
    if adj.pose_curve_file:
        path = Path(adj.pose_curve_file)
        if path.suffix.lower() != ".csv":
            raise UserError(
                f"pose curve '{path.name}' is not a .csv file; upload a CSV (time,yaw,pitch,roll)"
            )
        with _named(path, "pose curve"):
            curve = edit.parse_pose_curve(path)
    elif adj.pose_curve.strip():
        curve = edit.parse_pose_curve(adj.pose_curve.strip())
    return AdjustmentFiles(template, curve)


def apply_adjustments(
    seq: LandmarkSequence,
    adjustments: Adjustments,
    driving: LandmarkSequence | None = None,
    files: AdjustmentFiles | None = None,
) -> LandmarkSequence:
    """``seq`` edited as :class:`Adjustments` says (``driving``: the driving video's landmarks retargeted onto
    the portrait, for the pose, blinks and regions taken from it; ``files``: :func:`read_adjustment_files`,
    read here when not given)."""
    from common import edit

    adj = adjustments
    files = read_adjustment_files(adj) if files is None else files
    if adj.needs_driving and driving is None:
        raise UserError(
            "the head pose, blinks or regions are to come from a driving video: upload one (or choose other "
            "adjustments)"
        )
    if adj.mix:
        seq = edit.mix(seq, **dict.fromkeys(adj.mix, driving))
    if adj.smooth > 1:
        seq = edit.smooth(seq, adj.smooth)
    if adj.mouth_scale != 1:
        seq = edit.scale_mouth(seq, adj.mouth_scale)
    if adj.expression_scale != 1:
        seq = edit.scale_expression(seq, adj.expression_scale)
    if adj.blink != "keep":
        seq = edit.blink(seq, driving if adj.blink == "video" else adj.blink, seed=adj.seed)
    if adj.pose == "still":
        seq = edit.set_pose(seq, "still")
    elif adj.pose == "template":
        seq = edit.set_pose(seq, files.template)
    elif adj.pose == "video":
        source = edit.PoseSource(
            poses=driving.pose.astype(np.float64), relative=False, fps=driving.fps, origin="the driving video"
        )
        seq = edit.set_pose(seq, source)
    if adj.yaw or adj.pitch or adj.roll:
        seq = edit.rotate(seq, yaw=adj.yaw, pitch=adj.pitch, roll=adj.roll)
    if files.curve is not None:
        seq = edit.apply_pose_curve(seq, files.curve)
    return seq.validate("the adjusted landmarks")


# ----------------------------------------------------------------------------------------------- preview


def render_preview(
    seq: LandmarkSequence,
    image: np.ndarray,
    out: str | os.PathLike,
    audio: str | os.PathLike | None = None,
    height: int = PREVIEW_HEIGHT,
) -> Path:
    """The landmark video with the sound: the portrait (dimmed) with the landmarks drawn over it, and the
    landmarks alone beside it, ``height`` pixels high. ``seq`` must be made for this portrait (its
    ``image_size``: audio2lmk's output and retargeted landmarks are)."""
    import cv2

    from common.draw import draw_landmarks
    from common.video import VideoWriter

    h0, w0 = image.shape[:2]
    h = min(height, h0) // 2 * 2 or 2
    w = max(2, round(w0 * h / h0) // 2 * 2)
    still = (cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA) * 0.55).astype(np.uint8)
    points = seq.project((h, w))
    with VideoWriter(out, seq.fps, audio=audio) as writer:
        for start in range(0, seq.num_frames, 32):
            drawn = draw_landmarks(points[start : start + 32], (h, w), style="default")
            over = np.where(drawn.any(axis=-1, keepdims=True), drawn, still[None])
            writer.write(np.concatenate([over, drawn], axis=2))
    return Path(out)


# ------------------------------------------------------------------------------------------------- jobs


@dataclasses.dataclass(frozen=True)
class JobFiles:
    """What a job wrote (all in its folder, complete): the landmark file, its preview, the video (Generate)."""

    folder: Path
    landmarks: Path
    preview: Path
    video: Path | None = None
    seconds: float = 0.0

    @property
    def downloads(self) -> list[Path]:
        return [p for p in (self.video, self.landmarks, self.preview) if p is not None]


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
    """The page's sampler fields: a preset (``quality`` = the model's own), steps (None = the preset's)."""

    preset: str = "quality"
    steps: int | None = None

    def check(self) -> SamplerChoice:
        if self.preset not in PRESETS:
            raise UserError(f"quality {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.steps is not None:
            limits.number(
                self.steps, "steps", 1, limits.MAX_STEPS, integer=True, hint="0 or empty = the model's"
            )
        return self


class Studio:
    """The app's jobs: model choices, loaded models, the temporary workspace and the limits, shared by every
    session. Each job method takes the session id (Gradio's session hash) and checks its inputs first."""

    def __init__(
        self,
        models_root: str | os.PathLike,
        temp_root: str | os.PathLike | None = None,
        *,
        max_seconds: float = MAX_AUDIO_SECONDS,
        device: str = "auto",
        face_model: str | None = None,
    ) -> None:
        limits.number(max_seconds, "--max-seconds", 0, 3600, low_open=True)
        self.models = discover_models(models_root)
        self.workspace = Workspace(temp_root)
        self.workspace.prepare()
        self.max_seconds = float(max_seconds)
        self.loaded = LoadedModels(device)
        self.face_model = face_model

    # -- helpers

    def _model(self, folder: str | os.PathLike | None, kind: str) -> Path:
        found = self.models.audio2lmk if kind == "audio2lmk" else self.models.lmk2video
        if folder is None or str(folder) == "":
            how = (
                "python -m audio2lmk.train experiment=sample_audio2lmk export_dir=models/sample/audio2lmk"
                if kind == "audio2lmk"
                else "python -m lmk2video.train experiment=sample_lmk2video export_dir=models/sample/lmk2video"
            )
            raise UserError(f"no {kind} model folder under {self.models.root}; make one with: {how}")
        path = Path(folder).expanduser().resolve()
        if path not in found:
            raise UserError(
                f"{folder} is not one of the {kind} models under {self.models.root}; choose one from the list"
            )
        return path

    def _driving(
        self, session: str, video: str | os.PathLike | None, portrait: Portrait
    ) -> tuple[Driving, LandmarkSequence]:
        from common import edit

        driving = load_driving(video, self.workspace.cache(session), self.max_seconds, self.face_model)
        return driving, edit.retarget(driving.landmarks, portrait.face)

    @contextlib.contextmanager
    def _job(self, session: str, kind: str) -> Iterator[Path]:
        """A new job folder of the session, removed with everything in it when the job fails or is cancelled."""
        job = self.workspace.new_job(session, kind)
        try:
            yield job
        except BaseException:
            shutil.rmtree(job, ignore_errors=True)
            raise

    # -- speech -> landmarks -> video

    def speech_landmarks(
        self,
        session: str,
        *,
        audio2lmk: str | os.PathLike | None,
        portrait: str | os.PathLike | None,
        speech: str | os.PathLike | None,
        adjustments: Adjustments,
        driving: str | os.PathLike | None = None,
        report: Report = _no_report,
    ) -> JobFiles:
        """Speech -> landmarks on the portrait, adjusted, and their preview with the speech (a new job folder)."""
        adjustments.check()
        model = self._model(audio2lmk, "audio2lmk")
        with self._job(session, "speech") as job:
            return self._speech_into(job, session, model, portrait, speech, adjustments, driving, report)

    def _speech_into(
        self,
        job: Path,
        session: str,
        model: Path,
        portrait: str | os.PathLike | None,
        speech: str | os.PathLike | None,
        adjustments: Adjustments,
        driving: str | os.PathLike | None,
        report: Report,
    ) -> JobFiles:
        from audio2lmk.inference import audio_to_landmarks

        face = load_portrait(portrait, self.face_model)
        sound = load_speech(speech, job, self.max_seconds)
        uploads = read_adjustment_files(adjustments)
        retargeted = None
        if adjustments.needs_driving:
            if driving is None or str(driving) == "":
                raise UserError(
                    "the head pose, blinks or regions come from a driving video, but none was uploaded: upload "
                    "a video of a talking face, or choose another head pose, blinks and no regions"
                )
            retargeted = self._driving(session, driving, face)[1]
        report("landmarks", 0, 1)
        with self.loaded.audio2lmk(model) as loaded, _named(sound.path, "speech"):
            seq = audio_to_landmarks(
                loaded,
                sound.path,
                face.face,
                pose="model" if adjustments.pose == "model" and loaded.pose_model is not None else "still",
                style=adjustments.style,
                seed=adjustments.seed,
            )
        seq = apply_adjustments(seq, adjustments, retargeted, uploads)
        seq.meta["source"] = sound.name
        seq.meta["reference"] = face.path.name
        landmarks = seq.save(job / "talking.npz")
        preview = render_preview(seq, face.image, job / "talking_preview.mp4", audio=sound.path)
        report("landmarks", 1, 1)
        return JobFiles(job, landmarks, preview, seconds=sound.seconds)

    def reenactment_landmarks(
        self,
        session: str,
        *,
        portrait: str | os.PathLike | None,
        driving: str | os.PathLike | None,
        adjustments: Adjustments,
        report: Report = _no_report,
    ) -> JobFiles:
        """The driving video's expression and head motion retargeted onto the portrait, adjusted, and their
        preview with the video's sound (a new job folder). ``adjustments.pose="model"`` keeps the video's
        head motion."""
        adjustments.check()
        with self._job(session, "reenact") as job:
            return self._reenact_into(job, session, portrait, driving, adjustments, report)

    def _reenact_into(
        self,
        job: Path,
        session: str,
        portrait: str | os.PathLike | None,
        driving: str | os.PathLike | None,
        adjustments: Adjustments,
        report: Report,
    ) -> JobFiles:
        from common.atomic import atomic_output

        face = load_portrait(portrait, self.face_model)
        uploads = read_adjustment_files(adjustments)
        report("landmarks", 0, 1)
        video, seq = self._driving(session, driving, face)
        # The driving video's own head motion is the reenactment's "model" pose.
        pose = "model" if adjustments.pose == "video" else adjustments.pose
        seq = apply_adjustments(seq, dataclasses.replace(adjustments, pose=pose), seq, uploads)
        seq.meta["source"] = video.path.name
        seq.meta["reference"] = face.path.name
        landmarks = seq.save(job / "reenacted.npz")
        audio = None
        if video.audio is not None:
            with atomic_output(job / "sound.wav") as tmp:
                shutil.copyfile(video.audio, tmp)
            audio = job / "sound.wav"
        preview = render_preview(seq, face.image, job / "reenacted_preview.mp4", audio=audio)
        report("landmarks", 1, 1)
        return JobFiles(job, landmarks, preview, seconds=seq.duration)

    def render_video(
        self,
        files: JobFiles,
        *,
        lmk2video: str | os.PathLike | None,
        portrait: str | os.PathLike,
        audio: str | os.PathLike | None,
        sampler: SamplerChoice,
        seed: int,
        report: Report = _no_report,
    ) -> JobFiles:
        """The video of ``files.landmarks`` on the portrait with the sound (``files.folder / NAME.mp4``)."""
        from lmk2video.generation import GenerateSettings, generate
        from lmk2video.rendering import SamplerOptions

        sampler.check()
        model = self._model(lmk2video, "lmk2video")
        out = files.landmarks.with_suffix(".mp4")
        settings = GenerateSettings(
            model=str(model),
            reference=str(portrait),
            landmarks=str(files.landmarks),
            audio=str(audio) if audio is not None else None,
            out=str(out),
            sampler=SamplerOptions(
                steps=sampler.steps, preset=None if sampler.preset == "quality" else sampler.preset
            ),
            seed=seed,
            face_model=self.face_model,
            progress=False,
            overwrite=True,
        )
        with self.loaded.lmk2video(model) as pipe, _named(Path(str(portrait)), "portrait"):
            report("denoising", 0, 1)
            video = generate(settings, pipeline=pipe, progress=report)
        return dataclasses.replace(files, video=video)

    def generate_speech(
        self,
        session: str,
        *,
        audio2lmk: str | os.PathLike | None,
        lmk2video: str | os.PathLike | None,
        portrait: str | os.PathLike | None,
        speech: str | os.PathLike | None,
        adjustments: Adjustments,
        sampler: SamplerChoice,
        driving: str | os.PathLike | None = None,
        report: Report = _no_report,
    ) -> JobFiles:
        """Speech -> landmarks (as :meth:`speech_landmarks`) -> the talking video, with the speech; a failed
        or cancelled job leaves nothing."""
        adjustments.check()
        sampler.check()
        model = self._model(audio2lmk, "audio2lmk")
        self._model(lmk2video, "lmk2video")
        with self._job(session, "speech") as job:
            files = self._speech_into(job, session, model, portrait, speech, adjustments, driving, report)
            return self.render_video(
                files,
                lmk2video=lmk2video,
                portrait=str(portrait),
                audio=job / "speech.wav",
                sampler=sampler,
                seed=adjustments.seed,
                report=report,
            )

    def generate_reenactment(
        self,
        session: str,
        *,
        lmk2video: str | os.PathLike | None,
        portrait: str | os.PathLike | None,
        driving: str | os.PathLike | None,
        adjustments: Adjustments,
        sampler: SamplerChoice,
        report: Report = _no_report,
    ) -> JobFiles:
        """Driving video -> retargeted landmarks (as :meth:`reenactment_landmarks`) -> the video, with its sound;
        a failed or cancelled job leaves nothing."""
        adjustments.check()
        sampler.check()
        self._model(lmk2video, "lmk2video")
        with self._job(session, "reenact") as job:
            files = self._reenact_into(job, session, portrait, driving, adjustments, report)
            sound = job / "sound.wav"
            return self.render_video(
                files,
                lmk2video=lmk2video,
                portrait=str(portrait),
                audio=sound if sound.is_file() else None,
                sampler=sampler,
                seed=adjustments.seed,
                report=report,
            )
