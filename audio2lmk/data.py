"""Training data of audio2lmk: windows of prepared clips (``common.preprocess``), split by speaker.

A clip of the index is loaded as :class:`ClipData`: its landmark file resampled to the model's fps
when the clip's differs (:func:`common.edit.resample_fps`), the mesh as offsets from its own
reference mesh (its most neutral frame, :func:`common.edit.neutral_frame`, so that at inference
"reference mesh + predicted offsets" means the same thing), its absolute head pose, and its 16 kHz
speech. A window of ``L`` frames starting at frame ``s`` carries:

* ``audio`` ``(N,)``: samples ``round(s * 16000 / fps)`` to ``round((s + L) * 16000 / fps)``
  (zero-padded past the end of the recording);
* ``offsets`` ``(L, 468, 3)`` cm and ``pose`` ``(L, 6)``: the head pose relative to the window's
  first frame (``common.geometry.absolute_to_relative``; AniPortrait's convention);
* ``mask`` ``(L,)``: True on real frames (a clip shorter than the window is padded);
* ``style``: the speaker's style id (index in the sorted training speakers; a held-out speaker
  gets ``clip % num_styles``, used only to generate poses in validation), ``clip``: the clip's
  position in its split (for per-clip metrics).

Training draws ``samples_per_epoch`` random windows per epoch: sample key ``k`` (from
:class:`WindowSampler`, ``epoch * samples_per_epoch + i``) seeds its own generator
``numpy.random.default_rng([seed, k])``, which picks the clip (in proportion to its length), the
start frame, the speed perturbation rate (``speed``, see :func:`make_window`) and the audio
augmentation (a random gain in dB, additive Gaussian noise at a random SNR). So a seed gives the same windows in the same order whatever the number of DataLoader
workers, every epoch differs, and a resumed run continues the sequence. Validation windows are
deterministic: consecutive windows of ``val_window_frames`` covering each held-out clip (whole
clips by default), no augmentation.

The split is by speaker (:func:`common.index.split_by_speaker`): ``val_speakers`` names them,
else ``val_fraction`` of the speakers are drawn with ``split_seed``; no training speaker is ever
in validation.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from audio2lmk.encoders.phoneme import HOP, decode_phones, phone_frames
from common.audio import SAMPLE_RATE, load_audio
from common.edit import neutral_frame, resample_fps
from common.errors import UserError
from common.geometry import absolute_to_relative
from common.index import ClipRecord, load_index, split_by_speaker
from common.lmkfile import LandmarkSequence

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------


@dataclass
class ClipData:
    """One prepared clip at the model's fps.

    ``offsets`` (T, 468, 3) float32 cm: mesh minus ``reference_mesh`` (468, 3), the clip's most
    neutral frame (index ``neutral``). ``pose`` (T, 6) float64: absolute head pose. ``audio``
    (N,) float32, 16 kHz mono. ``phones`` (N // 160 + 1,) int64: the speech's phone ids
    (:func:`audio2lmk.encoders.phoneme.decode_phones`), when the data module decodes them.
    """

    id: str
    speaker: str
    fps: float
    offsets: np.ndarray
    reference_mesh: np.ndarray
    neutral: int
    pose: np.ndarray
    audio: np.ndarray
    phones: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.offsets.shape[0])


def frames_at(record: ClipRecord, fps: float) -> int:
    """Frame count of ``record`` after resampling to ``fps`` (:func:`common.edit.resample_fps`'s rule)."""
    if record.fps == fps:
        return int(record.frames)
    return max(1, math.floor(record.frames * fps / record.fps + 0.5))


def load_clip(record: ClipRecord, fps: float, phones: bool = False) -> ClipData:
    """Read a clip of the index (landmarks + wav) as :class:`ClipData` at ``fps`` (``phones``: decode them)."""
    seq = LandmarkSequence.load(record.landmarks)
    if seq.fps != fps:
        seq = resample_fps(seq, fps)
    neutral = neutral_frame(seq)
    reference = seq.mesh[neutral].astype(np.float32)
    audio = load_audio(record.audio, SAMPLE_RATE, silence_dbfs=None)
    return ClipData(
        id=record.id,
        speaker=record.speaker,
        fps=float(fps),
        offsets=(seq.mesh - reference[None]).astype(np.float32),
        reference_mesh=reference,
        neutral=neutral,
        pose=seq.pose.astype(np.float64),
        audio=audio.astype(np.float32, copy=False),
        phones=decode_phones(audio) if phones else None,
    )


class ClipStore:
    """Clips of a split, loaded on first use and kept in a least-recently-used cache.

    ``cache_clips=None`` keeps every clip (small data sets); each DataLoader worker has its own
    cache.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        fps: float,
        cache_clips: int | None = None,
        phones: bool = False,
    ) -> None:
        self.records = list(records)
        self.fps = float(fps)
        self.cache_clips = cache_clips
        self.phones = bool(phones)
        self._cache: OrderedDict[int, ClipData] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def frames(self, i: int) -> int:
        return frames_at(self.records[i], self.fps)

    def preload(self) -> ClipStore:
        """Load every clip now (in the main process, so forked DataLoader workers share them)."""
        for i in range(len(self.records) if self.cache_clips is None else 0):
            self[i]
        return self

    def __getitem__(self, i: int) -> ClipData:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        clip = load_clip(self.records[i], self.fps, self.phones)
        self._cache[i] = clip
        if self.cache_clips is not None and len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)
        return clip


def audio_bounds(start: float, length: float, fps: float, sample_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """Sample range ``[a, b)`` of frames ``start .. start + length - 1``."""
    return round(start * sample_rate / fps), round((start + length) * sample_rate / fps)


def make_window(clip: ClipData, start: int, length: int, rate: float = 1.0) -> dict[str, np.ndarray]:
    """Frames ``start .. start + length - 1`` of ``clip`` (padded past its end, see the module doc).

    ``rate != 1`` is speed perturbation: the window covers ``length * rate`` frames of the clip
    from ``start``, played ``rate`` times faster (``rate > 1``) or slower. Landmarks and relative
    poses are interpolated linearly at the clip positions ``start + i * rate``; the audio is
    resampled (``scipy.signal.resample_poly``), which shifts the voice's pitch and formants by the
    same factor, as in Kaldi-style speed perturbation.
    """
    total = clip.num_frames
    if not 0 <= start < total:
        raise ValueError(f"window start {start} is outside {clip.id} ({total} frames)")
    positions = start + np.arange(length) * float(rate)
    mask = positions <= total - 1 + 1e-9
    real = int(mask.sum())
    # Interpolation weights between neighbouring clip frames (rate 1: exact frames, weight 0).
    lo = np.minimum(np.floor(positions[:real] + 1e-9).astype(np.int64), total - 1)
    hi = np.minimum(lo + 1, total - 1)
    w = (positions[:real] - lo).astype(np.float32)
    offsets = np.zeros((length, *clip.offsets.shape[1:]), np.float32)
    pose = np.zeros((length, 6), np.float32)
    last = int(hi[-1]) + 1
    relative = absolute_to_relative(clip.pose[start:last])
    if rate == 1.0:
        offsets[:real] = clip.offsets[start : start + real]
        pose[:real] = relative[:real]
    else:
        wv = w[:, None, None]
        offsets[:real] = clip.offsets[lo] * (1 - wv) + clip.offsets[hi] * wv
        pose[:real] = relative[lo - start] * (1 - w[:, None]) + relative[hi - start] * w[:, None]
    a, b = audio_bounds(start, length * float(rate), clip.fps)
    piece = np.zeros(b - a, np.float32)
    src = clip.audio[a:b]
    piece[: len(src)] = src
    size = audio_bounds(0, length, clip.fps)[1]
    if rate != 1.0:
        from fractions import Fraction

        from scipy.signal import resample_poly

        ratio = Fraction(1.0 / float(rate)).limit_denominator(64)
        piece = resample_poly(piece, ratio.numerator, ratio.denominator).astype(np.float32)
    audio = np.zeros(size, np.float32)
    audio[: min(size, len(piece))] = piece[:size]
    window = {"audio": audio, "offsets": offsets, "pose": pose, "mask": mask}
    if clip.phones is not None:
        # The clip's phones on the window's 10 ms grid (at ``rate`` clip frames per window frame).
        where = np.rint(a / HOP + np.arange(phone_frames(size)) * float(rate)).astype(np.int64)
        inside = where < len(clip.phones)
        window["phones"] = np.where(inside, clip.phones[np.minimum(where, len(clip.phones) - 1)], 0)
    return window


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioAugment:
    """Random gain and additive noise on training audio.

    With probability ``gain_prob`` the waveform is scaled by a gain drawn uniformly in ``gain_db``
    (dB); with probability ``noise_prob`` Gaussian white noise is added at an SNR drawn uniformly
    in ``snr_db`` (dB, relative to the window's mean power).
    """

    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (10.0, 40.0)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | AudioAugment | None) -> AudioAugment | None:
        if config is None or isinstance(config, AudioAugment):
            return config
        kwargs = {k: (tuple(v) if k.endswith("_db") else float(v)) for k, v in dict(config).items()}
        return cls(**kwargs)

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Draw everything up front so the random stream does not depend on the branches taken.
        gain_on, gain = rng.random() < self.gain_prob, rng.uniform(*self.gain_db)
        noise_on, snr = rng.random() < self.noise_prob, rng.uniform(*self.snr_db)
        out = audio.astype(np.float32, copy=True)
        if gain_on:
            out *= np.float32(10.0 ** (gain / 20.0))
        if noise_on:
            power = float(np.mean(out.astype(np.float64) ** 2))
            if power > 0:
                sigma = math.sqrt(power / 10.0 ** (snr / 10.0))
                out += (sigma * rng.standard_normal(len(out))).astype(np.float32)
        return out


# --------------------------------------------------------------------------------------------
# Target centring
# --------------------------------------------------------------------------------------------


def centering_shifts(store: ClipStore) -> np.ndarray:
    """Per-clip shifts (clips, 468, 3) that replace each clip's mean offsets by the split's mean.

    ``shift_i = mean over all frames of all clips - mean over clip i's frames``. Added to a clip's
    training targets, its offsets keep their motion but all clips share one mean expression: the
    model cannot learn a speaker's resting expression (or the quirks of its neutral frame) from
    the voice, which it would wrongly transfer to unseen speakers. Validation targets stay raw.
    """
    means, counts = [], []
    for i in range(len(store)):
        clip = store[i]
        means.append(clip.offsets.astype(np.float64).mean(axis=0))
        counts.append(clip.num_frames)
    means_arr = np.stack(means)
    overall = np.average(means_arr, axis=0, weights=np.asarray(counts, dtype=np.float64))
    return (overall[None] - means_arr).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class WindowSampler(Sampler[int]):
    """Sample keys ``epoch * num_samples + i`` for ``i < num_samples``; Lightning sets the epoch.

    Under DDP, Lightning wraps it in a ``DistributedSamplerWrapper`` that shards the keys and
    forwards ``set_epoch``.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.num_samples
        return iter(range(base, base + self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


class TrainWindows(Dataset):
    """Random training windows; item ``key`` is a pure function of ``(seed, key)`` (module doc).

    ``shifts`` (clips, 468, 3), when given, is added to every real frame's offsets of each clip
    (:func:`centering_shifts`).
    """

    def __init__(
        self,
        store: ClipStore,
        styles: Sequence[int],
        window_frames: int,
        samples_per_epoch: int,
        seed: int = 0,
        augment: AudioAugment | None = None,
        speed: tuple[float, float] | None = None,
        shifts: np.ndarray | None = None,
    ) -> None:
        if window_frames < 1:
            raise UserError(f"data.window_frames={window_frames}: a window needs at least one frame")
        self.store, self.styles = store, list(styles)
        self.window_frames, self.samples_per_epoch = int(window_frames), int(samples_per_epoch)
        self.seed, self.augment = int(seed), augment
        if speed is not None and not 0 < float(speed[0]) <= float(speed[1]):
            raise UserError(
                f"data.speed={list(speed)}: give [low, high] rates with 0 < low <= high, e.g. [0.9, 1.1]"
            )
        self.speed = None if speed is None else (float(speed[0]), float(speed[1]))
        frames = np.array([store.frames(i) for i in range(len(store))], dtype=np.float64)
        self.weights = frames / frames.sum()
        self.shifts = None if shifts is None else np.asarray(shifts, dtype=np.float32)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(key)])
        index = int(rng.choice(len(self.store), p=self.weights))
        clip = self.store[index]
        rate = float(rng.uniform(*self.speed)) if self.speed is not None else 1.0
        span = math.ceil((self.window_frames - 1) * rate) + 1  # clip frames the window touches
        start = int(rng.integers(0, max(clip.num_frames - span, 0) + 1))
        window = make_window(clip, start, self.window_frames, rate)
        if self.shifts is not None:
            window["offsets"][window["mask"]] += self.shifts[index]
        if self.augment is not None:
            window["audio"] = self.augment(window["audio"], rng)
        return {**window, "style": self.styles[index], "clip": index}


class ValWindows(Dataset):
    """Consecutive windows of ``window_frames`` (None: whole clips) covering every clip, in order."""

    def __init__(self, store: ClipStore, styles: Sequence[int], window_frames: int | None = None) -> None:
        self.store, self.styles = store, list(styles)
        self.items: list[tuple[int, int, int]] = []
        for i in range(len(store)):
            total = store.frames(i)
            step = total if window_frames is None else int(window_frames)
            self.items += [(i, s, min(step, total - s)) for s in range(0, total, step)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index, start, length = self.items[item]
        window = make_window(self.store[index], start, length)
        return {**window, "style": self.styles[index], "clip": index}


def collate_windows(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack windows into a batch, padding frames (mask False) and audio (zeros) to the longest."""
    frames = max(len(it["mask"]) for it in items)
    samples = max(len(it["audio"]) for it in items)

    def pad(x: np.ndarray, size: int) -> np.ndarray:
        return np.pad(x, [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))

    batch = {
        "audio": torch.from_numpy(np.stack([pad(it["audio"], samples) for it in items])),
        "offsets": torch.from_numpy(np.stack([pad(it["offsets"], frames) for it in items])),
        "pose": torch.from_numpy(np.stack([pad(it["pose"], frames) for it in items])),
        "mask": torch.from_numpy(np.stack([pad(it["mask"], frames) for it in items])),
        "style": torch.tensor([it["style"] for it in items], dtype=torch.long),
        "clip": torch.tensor([it["clip"] for it in items], dtype=torch.long),
    }
    if "phones" in items[0]:
        longest = max(len(it["phones"]) for it in items)
        batch["phones"] = torch.from_numpy(np.stack([pad(it["phones"], longest) for it in items]))
    return batch


# --------------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------------


class Audio2LmkDataModule(pl.LightningDataModule):
    """Windows of a prepared index, split by speaker (see the module docstring).

    Args:
        index: a prepared index (``index.json`` or its folder), or None to prepare ``source_dir``.
        source_dir: folder of talking-head videos, prepared into ``cache_dir`` on first use
            (:func:`common.corpus.ensure_preprocessed`; reused by later runs).
        cache_dir: where ``source_dir`` is prepared.
        preprocess: extra options of the preparation (``face_model``, ``num_workers``, ...).
        val_speakers: held-out speakers; None draws ``val_fraction`` of them with ``split_seed``.
        fps: the model's frame rate; clips at another rate are resampled.
        window_frames: frames per training window.
        val_window_frames: frames per validation window; None validates on whole clips.
        samples_per_epoch: training windows per epoch.
        batch_size, val_batch_size: batch sizes.
        num_workers: DataLoader worker processes.
        seed: seeds the training windows and augmentation.
        augment: :class:`AudioAugment` options, or None for no augmentation.
        speed: ``[low, high]``: speed perturbation of training windows by a rate drawn uniformly
            in that range (:func:`make_window`), or None.
        center_targets: train on offsets whose per-clip mean is replaced by the training clips'
            mean (:func:`centering_shifts`); validation targets are unchanged.
        cache_clips: clips each process keeps in memory (None: all).
        phones: decode every clip's phones once (PocketSphinx) and give each window its slice
            (``phones``), for phoneme encoders; off, they decode each window themselves.
    """

    def __init__(
        self,
        index: str | None = None,
        source_dir: str | None = None,
        cache_dir: str | None = None,
        preprocess: Mapping[str, Any] | None = None,
        val_speakers: Sequence[str] | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        fps: float = 30.0,
        window_frames: int = 90,
        val_window_frames: int | None = None,
        samples_per_epoch: int = 1024,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        augment: Mapping[str, Any] | None = None,
        speed: Sequence[float] | None = None,
        center_targets: bool = False,
        cache_clips: int | None = None,
        phones: bool = False,
    ) -> None:
        super().__init__()
        if (index is None) == (source_dir is None):
            raise UserError(
                "give the data as data.index=PATH (a prepared index) or data.source_dir=VIDEOS with "
                "data.cache_dir=FOLDER (prepared on first use), not both"
            )
        if source_dir is not None and cache_dir is None:
            raise UserError(f"data.source_dir={source_dir} needs data.cache_dir=FOLDER to prepare it into")
        self.index = index
        self.source_dir, self.cache_dir = source_dir, cache_dir
        self.preprocess_options = dict(preprocess or {})
        self.val_speakers = list(val_speakers) if val_speakers is not None else None
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.fps = float(fps)
        self.window_frames, self.val_window_frames = int(window_frames), val_window_frames
        self.samples_per_epoch = int(samples_per_epoch)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.augment = AudioAugment.from_config(augment)
        self.speed = None if speed is None else (float(speed[0]), float(speed[1]))
        self.center_targets = bool(center_targets)
        self.cache_clips = cache_clips
        self.phones = bool(phones)
        self.train_records: list[ClipRecord] = []
        self.val_records: list[ClipRecord] = []
        self.train_speakers: list[str] = []

    @property
    def index_path(self) -> Path:
        return Path(self.index) if self.index is not None else Path(self.cache_dir) / "index.json"

    def prepare_data(self) -> None:
        """Prepare ``source_dir`` into ``cache_dir`` unless its index exists (rank zero only)."""
        if self.index is None:
            from common.corpus import ensure_preprocessed

            log.info("preparing %s into %s (skipped when already there)", self.source_dir, self.cache_dir)
            ensure_preprocessed(str(self.source_dir), str(self.cache_dir), **self.preprocess_options)

    def setup(self, stage: str | None = None) -> None:
        if self.train_records:
            return
        clips = load_index(self.index_path)
        self.train_records, self.val_records = split_by_speaker(
            clips, self.val_speakers, self.val_fraction, self.split_seed
        )
        if not self.val_records:
            raise UserError(f"{self.index_path}: no clip of the validation speakers; check data.val_speakers")
        self.train_speakers = sorted({c.speaker for c in self.train_records})
        log.info(
            "training speakers %s (%d clips); held out %s (%d clips)",
            ", ".join(self.train_speakers),
            len(self.train_records),
            ", ".join(sorted({c.speaker for c in self.val_records})),
            len(self.val_records),
        )

    @property
    def style_ids(self) -> dict[str, int]:
        """Training speaker -> style id (sorted names)."""
        return {name: i for i, name in enumerate(self.train_speakers)}

    def describe(self) -> dict[str, Any]:
        """What the exported model records about its data: index, speakers, split."""
        return {
            "index": str(self.index_path.resolve()),
            "train_speakers": list(self.train_speakers),
            "val_speakers": sorted({c.speaker for c in self.val_records}),
            "train_clips": [c.id for c in self.train_records],
            "val_clips": [c.id for c in self.val_records],
        }

    def train_dataset(self) -> TrainWindows:
        store = ClipStore(self.train_records, self.fps, self.cache_clips, self.phones).preload()
        styles = [self.style_ids[c.speaker] for c in self.train_records]
        shifts = centering_shifts(store) if self.center_targets else None
        return TrainWindows(
            store,
            styles,
            self.window_frames,
            self.samples_per_epoch,
            self.seed,
            self.augment,
            self.speed,
            shifts,
        )

    def val_dataset(self) -> ValWindows:
        store = ClipStore(self.val_records, self.fps, self.cache_clips, self.phones).preload()
        styles = [i % max(len(self.train_speakers), 1) for i in range(len(self.val_records))]
        return ValWindows(store, styles, self.val_window_frames)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_windows,
            persistent_workers=False,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        return self._loader(dataset, self.batch_size, WindowSampler(len(dataset)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), self.val_batch_size, None)
