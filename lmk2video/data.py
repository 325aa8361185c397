"""Training data for lmk2video: clips prepared by ``common.preprocess`` -> (reference, target frames, landmarks).

A sample (:class:`LandmarkVideoDataset`) comes from one clip:

* ``pixel_values`` (3, F, H, W): ``F = num_frames`` target frames (stage 1: one frame; stage 2: consecutive
  frames ``start, start + s, ...`` with a random stride ``s`` in ``[1, max_stride]``, the stride augmentation
  of AniPortrait's stage 2, which draws its stride from {1, 4});
* ``reference`` (3, H, W): a random frame of the same clip;
* ``landmarks`` (3, F, H, W) and ``reference_landmarks`` (3, H, W): the stored landmarks of those frames drawn
  in the model's ``landmark_style`` (its channel order): mesh and pose projected in the clip's own camera
  (:meth:`LandmarkSequence.project`), mapped through the crop, drawn at H x W (:mod:`common.draw`);

all in ``[-1, 1]`` (``pixel / 127.5 - 1``, the VAE's and the pose guider's scaling). A batch is (B, 3, F, H, W).

The crop is fixed per clip (no per-frame jitter): :func:`lmk2video.framing.choose_framing` on the clip's
median face box (the per-frame boxes of the projected mesh, median of each side), so training frames a face
as generation frames a reference image, and the head moves inside a still window as in the source video.

Frames are decoded with :func:`common.video.read_frames` (one container per call, a seek per run of
frames): safe in worker processes. A sample is a pure function of ``(seed, index)``: its random choices come
from ``numpy.random.default_rng([seed, split, index])``. :class:`StepSampler` makes the index a global sample
number (``step * world_size * batch_size + ...``) that continues across epochs and across a resumed run, so
batches are identical for a fixed seed whatever the number of workers, and a run resumed from a checkpoint
sees the batches the uninterrupted run would have seen.

The split is by identity (:func:`common.index.split_by_speaker`): no speaker is in both parts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.draw import draw_landmarks, get_style
from common.errors import UserError
from common.index import ClipRecord, load_index, split_by_speaker
from common.lmkfile import LandmarkSequence
from common.video import read_frames
from lmk2video.framing import Framing, apply_framing, choose_framing

log = logging.getLogger(__name__)

TRAIN, VAL = 0, 1


@dataclasses.dataclass(frozen=True)
class ClipGeometry:
    """A clip's fixed crop and its landmarks in output pixels.

    Attributes:
        framing: the crop (clip camera pixels -> output pixels).
        points: (T, 468, 2) projected landmarks in output pixels, T = usable frames of the clip.
    """

    framing: Framing
    points: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.points.shape[0])


def clip_geometry(clip: ClipRecord, size: tuple[int, int], **framing_kwargs: Any) -> ClipGeometry:
    """The fixed crop of ``clip`` for output ``size`` (H, W) and its landmarks mapped into it.

    ``framing_kwargs`` go to :func:`choose_framing` (face fractions, vertical centre).
    """
    sequence = LandmarkSequence.load(clip.landmarks)
    camera = (int(clip.height), int(clip.width))
    points = sequence.project(camera).astype(np.float64)  # (T, 468, 2) in the clip's pixels
    frames = min(sequence.num_frames, int(clip.frames))
    points = points[:frames]
    boxes = np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)  # (T, 4): x0, y0, x1, y1
    x0, y0, x1, y1 = np.median(boxes, axis=0)
    framing = choose_framing(np.array([[x0, y0], [x1, y1]]), camera, size, **framing_kwargs)
    return ClipGeometry(framing=framing, points=framing.apply(points))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (3, N, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(3, 0, 1, 2)
    return x.float() / 127.5 - 1.0


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor` for one image: (3, H, W) in [-1, 1] -> (H, W, 3) uint8 (exact round trip)."""
    x = ((tensor.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """What one sample takes from its clip: clip number, reference frame, target frames, stride."""

    clip: int
    reference: int
    frames: tuple[int, ...]
    stride: int


class LandmarkVideoDataset(Dataset):
    """Samples of reference + target frames + landmark drawings (see the module docstring).

    Args:
        clips: the clips to draw from (each must have at least ``num_frames`` frames).
        size: (H, W) of the output frames.
        landmark_style: :mod:`common.draw` style of the drawings (the model's).
        num_frames: target frames per sample (1 for stage 1).
        max_stride: largest frame stride of the stride augmentation (1: consecutive frames only).
        length: samples per epoch (``len()``); indices beyond it are valid (the next epochs').
        seed: seed of every random choice.
        split: ``TRAIN`` or ``VAL`` (another random stream for the same seed).
        cache_clips: clip geometries kept per process (landmark files are read once per clip).
        cache_frames: also keep every frame of a clip, cropped to ``size``, per process (decoded once: for
            small data sets at small sizes; otherwise frames are decoded per sample with a seek).
        pad_mode: padding where a crop leaves the frame (:func:`lmk2video.framing.apply_framing`).
        framing: keyword arguments of :func:`lmk2video.framing.choose_framing`.
    """

    def __init__(
        self,
        clips: Sequence[ClipRecord],
        size: tuple[int, int],
        landmark_style: str,
        num_frames: int = 1,
        max_stride: int = 1,
        length: int = 1000,
        seed: int = 0,
        split: int = TRAIN,
        cache_clips: int = 64,
        cache_frames: bool = False,
        pad_mode: str = "replicate",
        framing: dict[str, float] | None = None,
    ) -> None:
        if num_frames < 1 or max_stride < 1 or length < 1:
            raise UserError(
                f"data: num_frames={num_frames}, max_stride={max_stride} and length={length} must be >= 1"
            )
        get_style(landmark_style)
        self.size = (int(size[0]), int(size[1]))
        self.landmark_style = landmark_style
        self.num_frames = int(num_frames)
        self.max_stride = int(max_stride)
        self.length = int(length)
        self.seed = int(seed)
        self.split = int(split)
        self.cache_clips = int(cache_clips)
        self.cache_frames = bool(cache_frames)
        self.pad_mode = pad_mode
        self.framing = dict(framing or {})
        usable = [c for c in clips if c.frames >= self.num_frames]
        if len(usable) < len(clips):
            log.warning(
                "%d clip(s) shorter than num_frames=%d left out: %s",
                len(clips) - len(usable),
                self.num_frames,
                ", ".join(c.id for c in clips if c.frames < self.num_frames),
            )
        if not usable:
            raise UserError(f"no clip has num_frames={self.num_frames} frames; lower data.num_frames")
        self.clips = list(usable)
        self._cache: collections.OrderedDict[int, ClipGeometry] = collections.OrderedDict()
        self._frames: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:  # worker processes start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()
        state["_frames"] = collections.OrderedDict()
        return state

    def geometry(self, clip: int) -> ClipGeometry:
        """The cached :class:`ClipGeometry` of clip number ``clip``."""
        if clip in self._cache:
            self._cache.move_to_end(clip)
            return self._cache[clip]
        geometry = clip_geometry(self.clips[clip], self.size, **self.framing)
        self._cache[clip] = geometry
        while len(self._cache) > max(1, self.cache_clips):
            self._cache.popitem(last=False)
        return geometry

    def cropped_frames(self, clip: int, indices: list[int]) -> np.ndarray:
        """Frames ``indices`` of clip number ``clip`` cropped to the output size: (N, H, W, 3) uint8."""
        record = self.clips[clip]
        framing = self.geometry(clip).framing
        if not self.cache_frames:
            decoded = read_frames(record.video, indices)
            if decoded.shape[1:3] != framing.source_size:
                raise UserError(
                    f"{record.video}: frames are {decoded.shape[2]}x{decoded.shape[1]}, the index says "
                    f"{record.width}x{record.height}; prepare the data set again (python -m common.preprocess)"
                )
            return np.stack([apply_framing(f, framing, self.pad_mode) for f in decoded])
        if clip not in self._frames:
            from common.video import iter_frames

            frames = []
            for _, rgb in iter_frames(record.video):
                if rgb.shape[:2] != framing.source_size:
                    raise UserError(
                        f"{record.video}: frames are {rgb.shape[1]}x{rgb.shape[0]}, the index says "
                        f"{record.width}x{record.height}; prepare the data set again (python -m common.preprocess)"
                    )
                frames.append(apply_framing(rgb, framing, self.pad_mode))
            self._frames[clip] = np.stack(frames)
            while len(self._frames) > max(1, self.cache_clips):
                self._frames.popitem(last=False)
        self._frames.move_to_end(clip)
        stored = self._frames[clip]
        if max(indices) >= len(stored):
            raise UserError(f"{record.video}: frame {max(indices)} is past the end of the video")
        return stored[indices]

    def spec(self, index: int) -> SampleSpec:
        """The random choices of sample ``index``: a pure function of (seed, split, index)."""
        rng = np.random.default_rng([self.seed, self.split, int(index)])
        clip = int(rng.integers(len(self.clips)))
        total = self.geometry(clip).num_frames
        stride = int(rng.integers(1, self.max_stride + 1)) if self.num_frames > 1 else 1
        stride = max(1, min(stride, (total - 1) // max(1, self.num_frames - 1)))
        span = (self.num_frames - 1) * stride + 1
        start = int(rng.integers(0, total - span + 1))
        frames = tuple(start + stride * i for i in range(self.num_frames))
        reference = int(rng.integers(total))
        return SampleSpec(clip=clip, reference=reference, frames=frames, stride=stride)

    def __getitem__(self, index: int) -> dict[str, Any]:
        spec = self.spec(index)
        geometry = self.geometry(spec.clip)
        wanted = [spec.reference, *spec.frames]
        images = self.cropped_frames(spec.clip, wanted)
        drawings = draw_landmarks(geometry.points[wanted], self.size, self.landmark_style)
        pixels, lmk = to_tensor(images), to_tensor(drawings)
        return {
            "pixel_values": pixels[:, 1:],
            "reference": pixels[:, 0],
            "landmarks": lmk[:, 1:],
            "reference_landmarks": lmk[:, 0],
            "index": int(index),
            "clip": spec.clip,
            "frames": torch.tensor(spec.frames),
            "reference_frame": spec.reference,
            "stride": spec.stride,
        }


class StepSampler(DistributedSampler):
    """Yields global sample numbers: ``(batch_number * world_size + rank) * batch_size + j``.

    ``batch_number`` counts this process's batches since the start of training and continues where the
    trainer stands (``start()``, the number of batches already consumed, read when an epoch's iteration
    begins), so every epoch draws new samples and a resumed run continues with the batches an uninterrupted
    run would have drawn. An epoch holds ``num_batches`` batches; an epoch resumed midway yields the rest.

    It subclasses :class:`DistributedSampler` so Lightning keeps it under DDP (each rank yields its own
    share) instead of wrapping it.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_batches: int,
        start: Callable[[], int] = lambda: 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # DistributedSampler.__init__ would need an initialised process group; set what it would set.
        self.dataset = dataset
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.shuffle = False
        self.drop_last = True
        self.seed = 0
        self.batch_size = int(batch_size)
        self.num_batches = int(num_batches)
        self.start = start
        self.num_samples = self.batch_size * self.num_batches
        self.total_size = self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        first = int(self.start())
        done_in_epoch = first % self.num_batches
        for batch in range(first, first - done_in_epoch + self.num_batches):
            base = (batch * self.num_replicas + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return torch.utils.data.default_collate(samples)


@dataclasses.dataclass
class ValidationExcerpt:
    """The held-out clip excerpt validation renders: reference = frame ``start``, landmarks = the next frames.

    Attributes:
        clip: the clip's record.
        image: (H0, W0, 3) RGB uint8 reference frame at the clip's size.
        reference: the reference frame's one-frame landmark sequence.
        sequence: the landmark frames to render (``start + 1 ...``), in the clip's camera.
        start: the reference frame's number in the clip.
    """

    clip: ClipRecord
    start: int
    image: np.ndarray
    reference: LandmarkSequence
    sequence: LandmarkSequence


def load_excerpt(clip: ClipRecord, start: int, num_frames: int) -> ValidationExcerpt:
    """Frame ``start`` of ``clip`` as the reference and the landmarks of the next ``num_frames`` frames."""
    sequence = LandmarkSequence.load(clip.landmarks)
    total = min(sequence.num_frames, clip.frames)
    if not 0 <= start < total - 1:
        raise UserError(f"val.start={start} is outside {clip.id} ({total} frames)")
    stop = min(total, start + 1 + num_frames)
    image = read_frames(clip.video, [start])[0]
    return ValidationExcerpt(
        clip=clip,
        start=start,
        image=image,
        reference=sequence.select(slice(start, start + 1)),
        sequence=sequence.select(slice(start + 1, stop)),
    )


class LandmarkVideoDataModule(pl.LightningDataModule):
    """Train / validation loaders over a prepared corpus (see the module docstring).

    Args:
        index: a prepared data set (its ``index.json`` or folder); or
        source_dir, cache_dir: videos prepared into ``cache_dir`` on first use (:func:`ensure_preprocessed`).
        preprocess: keyword arguments of :class:`common.corpus.PreprocessSettings` for that preparation.
        val_speakers, val_fraction, split_seed: the split by identity (:func:`split_by_speaker`).
        height, width, landmark_style: the model's frame size and drawing style.
        num_frames, max_stride: target frames per sample and the largest stride.
        samples_per_epoch: training samples per epoch (per process; an epoch is only a logging unit).
        val_samples: validation-loss samples (fixed: the same samples at every validation).
        batch_size, val_batch_size, num_workers: loader settings.
        seed: seed of the samples.
        val_clip, val_start: the clip excerpt validation renders (clip id, first frame; default the first
            validation clip, frame 0).
        cache_clips, cache_frames, pad_mode, framing: see :class:`LandmarkVideoDataset`.
        work_dir: the folder relative paths are taken from.
    """

    def __init__(
        self,
        height: int,
        width: int,
        landmark_style: str,
        index: str | None = None,
        source_dir: str | None = None,
        cache_dir: str | None = None,
        preprocess: dict[str, Any] | None = None,
        val_speakers: list[str] | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        num_frames: int = 1,
        max_stride: int = 1,
        samples_per_epoch: int = 1000,
        val_samples: int = 8,
        batch_size: int = 1,
        val_batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        val_clip: str | None = None,
        val_start: int = 0,
        cache_clips: int = 64,
        cache_frames: bool = False,
        pad_mode: str = "replicate",
        framing: dict[str, float] | None = None,
        work_dir: str = ".",
    ) -> None:
        super().__init__()
        self.size = (int(height), int(width))
        self.landmark_style = landmark_style
        self.index = index
        self.source_dir = source_dir
        self.cache_dir = cache_dir
        self.preprocess_kwargs = dict(preprocess or {})
        self.val_speakers = None if val_speakers is None else list(val_speakers)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_frames = int(num_frames)
        self.max_stride = int(max_stride)
        self.samples_per_epoch = int(samples_per_epoch)
        self.val_samples = int(val_samples)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.val_clip = val_clip
        self.val_start = int(val_start)
        self.cache_clips = int(cache_clips)
        self.cache_frames = bool(cache_frames)
        self.pad_mode = pad_mode
        self.framing = dict(framing or {})
        self.work_dir = Path(work_dir)
        self.train_clips: list[ClipRecord] | None = None
        self.val_clips: list[ClipRecord] | None = None
        if self.batch_size < 1 or self.val_batch_size < 1 or self.samples_per_epoch < self.batch_size:
            raise UserError(
                f"data: batch_size={batch_size} and val_batch_size={val_batch_size} must be >= 1 and "
                f"samples_per_epoch={samples_per_epoch} at least batch_size"
            )

    # ---------------------------------------------------------------------------------------- preparation

    def _path(self, value: str | None) -> Path | None:
        return None if value is None else self.work_dir / Path(str(value)).expanduser()

    def index_path(self) -> Path:
        """The index to read, preparing ``source_dir`` into ``cache_dir`` first when needed."""
        if self.index is not None:
            return self._path(self.index)
        if self.source_dir is None or self.cache_dir is None:
            raise UserError(
                "data.index=DIR (a folder prepared by python -m common.preprocess) is required, or "
                "data.source_dir=VIDEOS with data.cache_dir=DIR to prepare it on first use"
            )
        from common.corpus import ensure_preprocessed

        source, cache = self._path(self.source_dir), self._path(self.cache_dir)
        if not source.is_dir():
            raise UserError(f"data.source_dir={source} is not a folder; give the folder holding the videos")
        if not (cache / "index.json").is_file():
            log.info("preparing %s into %s (once; later runs reuse it)", source, cache)
        return ensure_preprocessed(str(source), str(cache), **self.preprocess_kwargs)

    def prepare_data(self) -> None:
        """Prepare the corpus (once, on the first process of each node)."""
        self.index_path()

    def setup(self, stage: str | None = None) -> None:
        if self.train_clips is not None:
            return
        clips = load_index(self.index_path())
        self.train_clips, self.val_clips = split_by_speaker(
            clips, self.val_speakers, self.val_fraction, self.split_seed
        )
        log.info(
            "data: %d training clips (%s), %d validation clips (%s)",
            len(self.train_clips),
            ", ".join(sorted({c.speaker for c in self.train_clips})),
            len(self.val_clips),
            ", ".join(sorted({c.speaker for c in self.val_clips})),
        )

    def dataset(self, split: int, length: int) -> LandmarkVideoDataset:
        self.setup()
        clips = self.train_clips if split == TRAIN else self.val_clips
        return LandmarkVideoDataset(
            clips,
            self.size,
            self.landmark_style,
            num_frames=self.num_frames,
            max_stride=self.max_stride if split == TRAIN else 1,
            length=length,
            seed=self.seed,
            split=split,
            cache_clips=self.cache_clips,
            cache_frames=self.cache_frames,
            pad_mode=self.pad_mode,
            framing=self.framing,
        )

    # ---------------------------------------------------------------------------------------- loaders

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Any = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_collate,
            drop_last=sampler is not None,
            persistent_workers=False,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset(TRAIN, self.samples_per_epoch)
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0

        def start() -> int:
            if trainer is None:
                return 0
            return int(trainer.global_step) * int(trainer.accumulate_grad_batches)

        sampler = StepSampler(
            dataset,
            self.batch_size,
            max(1, math.ceil(self.samples_per_epoch / self.batch_size)),
            start,
            world,
            rank,
        )
        return self._loader(dataset, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(VAL, self.val_samples), self.val_batch_size)

    def validation_excerpt(self, num_frames: int) -> ValidationExcerpt:
        """The excerpt validation renders (``val_clip`` from frame ``val_start``; see :func:`load_excerpt`)."""
        self.setup()
        clips = sorted(self.val_clips, key=lambda c: c.id)
        if self.val_clip is not None:
            chosen = [c for c in clips if c.id == self.val_clip]
            if not chosen:
                raise UserError(
                    f"data.val_clip={self.val_clip} is not a validation clip; choose one of "
                    f"{', '.join(c.id for c in clips)}"
                )
            clip = chosen[0]
        else:
            clip = clips[0]
        return load_excerpt(clip, self.val_start, num_frames)
