"""Eye blinks in landmark sequences: measure them, learn their statistics, and synthesise natural ones.

* **Openness** of the eyes in a frame: each eye's lid gap (vertices 159-145, 386-374) over its width
  (33-133, 263-362), averaged over both eyes (:func:`eye_openness`).
* **Closure** ``c`` in [0, 1]: 0 with the eyes as open as usual, 1 as closed as at the apex of a typical
  blink: ``c = clip((1 - r) / (1 - closed_ratio), 0, 1)`` with ``r`` the openness over its usual level (the
  running 90th percentile over 2 s) and ``closed_ratio`` that ratio at a typical apex (:func:`closure`).
* **A blink** is a run of frames with ``c >= 0.5`` (more than half closed); its *duration* is that run's length
  and it extends, for its profile, to where ``c`` falls below 0.1 on both sides (:func:`detect_blinks`).
* **The blink model** (:class:`BlinkModel`, ``common/data/blinks.npz``): blink durations and the intervals
  between blinks, the mean closure profile over a blink, the typical apex ``closed_ratio``, and the mean
  displacement of the mesh from open to closed eyes (in inter-ocular distances). It is measured on real
  talking-head clips by ``python -m common.measure_blinks CLIPS... -o FILE`` (the shipped one on the nine
  clips of ``../shared/data/talking``; its ``source`` says so).
* **Synthesis**: :func:`schedule_blinks` draws blink times and durations from the model (a renewal process
  over the measured intervals, seeded), :func:`closure_curve` turns a schedule into ``c`` per frame, and
  ``common.edit.blink`` closes the eyes of a sequence by it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import percentile_filter

from common.atomic import atomic_output
from common.errors import UserError

# (upper lid, lower lid, outer corner, inner corner) of the subject's right and left eye.
EYE_LIDS = ((159, 145, 33, 133), (386, 374, 263, 362))
OPEN_WINDOW_S = 2.0  # the usual openness is the running 90th percentile over this window
OPEN_PERCENTILE = 90
HALF = 0.5  # closure above which a frame counts as blinking
EDGE = 0.1  # closure below which a blink has ended (for its profile)
PROFILE_SAMPLES = 33
DATA_FILE = Path(__file__).with_name("data") / "blinks.npz"


def eye_openness(mesh: np.ndarray) -> np.ndarray:
    """Openness (T,) of the pose-free ``mesh`` (T, 468, 3): lid gap over eye width, mean of both eyes."""
    m = np.asarray(mesh, dtype=np.float64)
    ratios = [
        np.linalg.norm(m[..., up, :] - m[..., low, :], axis=-1)
        / np.linalg.norm(m[..., outer, :] - m[..., inner, :], axis=-1)
        for up, low, outer, inner in EYE_LIDS
    ]
    return (ratios[0] + ratios[1]) / 2.0


def relative_openness(mesh: np.ndarray, fps: float) -> np.ndarray:
    """Openness (T,) over its usual level: the running 90th percentile over :data:`OPEN_WINDOW_S`."""
    openness = eye_openness(mesh)
    window = max(1, round(OPEN_WINDOW_S * fps)) | 1
    usual = percentile_filter(openness, OPEN_PERCENTILE, size=window, mode="nearest")
    return openness / np.maximum(usual, 1e-9)


def closure(mesh: np.ndarray, fps: float, closed_ratio: float) -> np.ndarray:
    """Closure (T,) in [0, 1]: 0 as open as usual, 1 as closed as a typical blink's apex (``closed_ratio``)."""
    return np.clip((1.0 - relative_openness(mesh, fps)) / (1.0 - closed_ratio), 0.0, 1.0)


@dataclass(frozen=True)
class Blink:
    """One blink: frames ``start:end`` more than half closed, ``onset:offset`` from first to last closing frame."""

    start: int
    end: int
    onset: int
    offset: int
    apex: int

    def duration(self, fps: float) -> float:
        """Seconds more than half closed."""
        return (self.end - self.start) / fps


def find_blinks(c: np.ndarray) -> list[Blink]:
    """The blinks of a closure curve ``c`` (T,) (see the module docstring)."""
    c = np.asarray(c, dtype=np.float64)
    above = np.concatenate([[False], c >= HALF, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    blinks = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        onset = start
        while onset > 0 and c[onset - 1] > EDGE and c[onset - 1] < c[onset] + 1e-9:
            onset -= 1
        offset = end
        while offset < len(c) and c[offset] > EDGE and c[offset] < c[offset - 1] + 1e-9:
            offset += 1
        blinks.append(
            Blink(int(start), int(end), int(onset), int(offset), int(start + np.argmax(c[start:end])))
        )
    return blinks


def detect_blinks(mesh: np.ndarray, fps: float, closed_ratio: float | None = None) -> list[Blink]:
    """The blinks in a pose-free mesh sequence; ``closed_ratio`` defaults to the shipped model's."""
    ratio = load_blink_model().closed_ratio if closed_ratio is None else closed_ratio
    return find_blinks(closure(mesh, fps, ratio))


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlinkModel:
    """Blink statistics (see the module docstring). Times in seconds; ``closed_delta`` (468, 3) in IODs."""

    durations_s: np.ndarray
    intervals_s: np.ndarray
    profile: np.ndarray
    closed_ratio: float
    closed_delta: np.ndarray
    minutes: float
    source: str

    @property
    def rate_per_minute(self) -> float:
        return len(self.durations_s) / self.minutes

    @property
    def half_fraction(self) -> float:
        """Fraction of a blink's profile that is more than half closed."""
        return float(np.mean(self.profile >= HALF))

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                durations_s=self.durations_s,
                intervals_s=self.intervals_s,
                profile=self.profile,
                closed_ratio=np.float64(self.closed_ratio),
                closed_delta=self.closed_delta.astype(np.float32),
                minutes=np.float64(self.minutes),
                source=np.array(self.source),
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BlinkModel:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                durations_s=z["durations_s"].astype(np.float64),
                intervals_s=z["intervals_s"].astype(np.float64),
                profile=z["profile"].astype(np.float64),
                closed_ratio=float(z["closed_ratio"]),
                closed_delta=z["closed_delta"].astype(np.float64),
                minutes=float(z["minutes"]),
                source=str(z["source"]),
            )


@functools.cache
def load_blink_model() -> BlinkModel:
    """The blink model shipped with the package (``common/data/blinks.npz``)."""
    return BlinkModel.load(DATA_FILE)


def measure_blink_model(sequences, source: str, closed_ratio: float | None = None) -> BlinkModel:
    """Measure a :class:`BlinkModel` on ``sequences`` (``LandmarkSequence``\\ s of real talking faces).

    ``closed_ratio`` (the relative openness at a typical apex) is the median over blinks found with a first
    guess of 0.15, unless given. The open-to-closed displacement is each blink's apex mesh minus the mean of the
    two frames before its onset, over the inter-ocular distance, averaged over blinks and kept in the eye region.
    """
    from common.edit import inter_ocular_distance
    from common.regions import region_weights

    sequences = list(sequences)
    if closed_ratio is None:
        apexes = [
            relative_openness(s.mesh, s.fps)[b.apex]
            for s in sequences
            for b in find_blinks(closure(s.mesh, s.fps, 0.15))
        ]
        if not apexes:
            raise UserError(
                f"{source}: no blinks found; measure on clips of people talking with their eyes open"
            )
        closed_ratio = float(np.median(apexes))
    durations, intervals, profiles, deltas = [], [], [], []
    minutes = 0.0
    for s in sequences:
        mesh = s.mesh.astype(np.float64)
        c = closure(mesh, s.fps, closed_ratio)
        blinks = find_blinks(c)
        minutes += s.num_frames / s.fps / 60.0
        durations += [b.duration(s.fps) for b in blinks]
        intervals += list(np.diff([b.apex for b in blinks]) / s.fps)
        for b in blinks:
            span = np.arange(max(b.onset - 1, 0), min(b.offset + 1, len(c)))  # from open to open
            if len(span) >= 3:
                profiles.append(
                    np.interp(np.linspace(0, len(span) - 1, PROFILE_SAMPLES), np.arange(len(span)), c[span])
                )
            if b.onset >= 2:
                before = mesh[b.onset - 2 : b.onset].mean(axis=0)
                deltas.append((mesh[b.apex] - before) / inter_ocular_distance(before) / max(c[b.apex], 0.5))
    if not durations:
        raise UserError(f"{source}: no blinks found; measure on clips of people talking with their eyes open")
    profile = np.mean(profiles, axis=0)
    profile = np.clip(profile - np.linspace(profile[0], profile[-1], len(profile)), 0.0, None)
    profile = profile / profile.max()  # from 0 (open) through 1 (the apex) back to 0
    delta = np.mean(deltas, axis=0) * region_weights("eyes")[:, None]
    return BlinkModel(
        durations_s=np.asarray(durations),
        intervals_s=np.asarray(intervals),
        profile=profile,
        closed_ratio=closed_ratio,
        closed_delta=delta,
        minutes=minutes,
        source=source,
    )


# --------------------------------------------------------------------------------------------
# synthesis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledBlink:
    """A blink to synthesise: it begins closing at ``start_s`` and is more than half closed for ``duration_s``."""

    start_s: float
    duration_s: float


def schedule_blinks(model: BlinkModel, seconds: float, rng: np.random.Generator) -> list[ScheduledBlink]:
    """Blinks over ``seconds``: intervals and durations drawn from the measured ones (a renewal process).

    The intervals are scaled to the measured rate (blinks over minutes): intervals seen within clips are biased
    short, since long ones are cut by the clip's ends. The first blink comes after a uniform fraction of a drawn
    interval, so a clip does not always open with a blink; blinks never overlap (each starts at least 0.1 s after
    the previous one has reopened) and every blink ends within ``seconds``.
    """
    blinks: list[ScheduledBlink] = []
    intervals = model.intervals_s * (60.0 / model.rate_per_minute / float(np.mean(model.intervals_s)))
    t = float(rng.uniform(0.0, 1.0)) * float(rng.choice(intervals))
    while True:
        duration = float(rng.choice(model.durations_s))
        length = duration / model.half_fraction
        if t + length > seconds:
            return blinks
        blinks.append(ScheduledBlink(t, duration))
        t = max(t + float(rng.choice(intervals)), t + length + 0.1)


def closure_curve(blinks: list[ScheduledBlink], num_frames: int, fps: float, model: BlinkModel) -> np.ndarray:
    """Closure (num_frames,) of scheduled blinks: each the model's profile stretched to its duration."""
    times = np.arange(num_frames) / fps
    c = np.zeros(num_frames)
    grid = np.linspace(0.0, 1.0, len(model.profile))
    for b in blinks:
        length = b.duration_s / model.half_fraction
        u = (times - b.start_s) / length
        inside = (u >= 0) & (u <= 1)
        c[inside] = np.maximum(c[inside], np.interp(u[inside], grid, model.profile))
    return c
