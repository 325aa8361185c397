"""lmk2video training data: split by identity, seeded samples, workers, stride augmentation, crops, drawings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.draw import draw_landmarks
from common.index import load_index
from common.lmkfile import LandmarkSequence
from common.video import read_frames
from lmk2video.data import (
    TRAIN,
    VAL,
    LandmarkVideoDataModule,
    LandmarkVideoDataset,
    StepSampler,
    clip_geometry,
    load_excerpt,
    to_tensor,
    to_uint8,
)
from lmk2video.framing import apply_framing
from tests.l2v_corpus import CLIP_FRAMES, VAL_SPEAKER, corpus_index

SIZE = (64, 64)


@pytest.fixture(scope="module")
def index(tmp_path_factory, face_model):
    return corpus_index(tmp_path_factory, face_model)


def datamodule(index, **kwargs) -> LandmarkVideoDataModule:
    values = {
        "height": SIZE[0],
        "width": SIZE[1],
        "landmark_style": "default",
        "index": str(index),
        "val_speakers": [VAL_SPEAKER],
        "num_frames": 4,
        "max_stride": 3,
        "samples_per_epoch": 8,
        "batch_size": 2,
        "seed": 7,
    }
    values.update(kwargs)
    module = LandmarkVideoDataModule(**values)
    module.setup()
    return module


def test_split_is_by_speaker(index) -> None:
    dm = datamodule(index)
    train, val = {c.speaker for c in dm.train_clips}, {c.speaker for c in dm.val_clips}
    assert train and val and not train & val
    assert val == {VAL_SPEAKER}
    assert {c.id for c in dm.train_clips} | {c.id for c in dm.val_clips} == {c.id for c in load_index(index)}


def test_samples_are_seeded_and_have_the_documented_layout(index) -> None:
    dm = datamodule(index)
    a, b = dm.dataset(TRAIN, 8), dm.dataset(TRAIN, 8)
    first, again = a[3], b[3]
    for key in ("pixel_values", "reference", "landmarks", "reference_landmarks"):
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert first["pixel_values"].shape == (3, 4, *SIZE)
    assert first["landmarks"].shape == (3, 4, *SIZE)
    assert first["reference"].shape == first["reference_landmarks"].shape == (3, *SIZE)
    assert first["pixel_values"].min() >= -1 and first["pixel_values"].max() <= 1
    other = datamodule(index, seed=8).dataset(TRAIN, 8)
    specs = [a.spec(i) for i in range(8)]
    assert specs != [other.spec(i) for i in range(8)]
    assert [a.spec(i) for i in range(8)] == specs
    # The validation stream differs from the training stream for the same seed and index.
    val = dm.dataset(VAL, 8)
    assert {val.clips[val.spec(i).clip].speaker for i in range(8)} == {VAL_SPEAKER}


def test_stride_augmentation_stays_within_bounds(index) -> None:
    dataset = datamodule(index, num_frames=5, max_stride=4).dataset(TRAIN, 200)
    strides = set()
    for i in range(200):
        spec = dataset.spec(i)
        total = dataset.geometry(spec.clip).num_frames
        frames = np.array(spec.frames)
        assert 1 <= spec.stride <= 4
        assert len(frames) == 5 and (np.diff(frames) == spec.stride).all()
        assert frames[0] >= 0 and frames[-1] < total
        assert 0 <= spec.reference < total
        strides.add(spec.stride)
    assert strides == {1, 2, 3, 4}
    # Clips too short for the largest stride fall back to the largest that fits.
    long = datamodule(index, num_frames=CLIP_FRAMES // 2, max_stride=8).dataset(TRAIN, 20)
    for i in range(20):
        spec = long.spec(i)
        assert spec.frames[-1] < long.geometry(spec.clip).num_frames


def test_crop_is_fixed_per_clip_and_landmarks_are_drawn_in_it(index) -> None:
    dm = datamodule(index, num_frames=2)
    dataset = dm.dataset(TRAIN, 16)
    clip = dataset.clips[0]
    geometry = clip_geometry(clip, SIZE)
    sequence = LandmarkSequence.load(clip.landmarks)
    for i in range(16):
        spec = dataset.spec(i)
        if spec.clip != 0:
            continue
        sample = dataset[i]
        assert dataset.geometry(0).framing == geometry.framing
        wanted = [spec.reference, *spec.frames]
        expected = np.stack([apply_framing(f, geometry.framing) for f in read_frames(clip.video, wanted)])
        torch.testing.assert_close(sample["pixel_values"], to_tensor(expected[1:]), rtol=0, atol=0)
        torch.testing.assert_close(sample["reference"], to_tensor(expected[:1])[:, 0], rtol=0, atol=0)
        points = geometry.framing.apply(sequence.project()[wanted])
        drawn = draw_landmarks(points, SIZE, "default")
        torch.testing.assert_close(sample["landmarks"], to_tensor(drawn[1:]), rtol=0, atol=0)
        # The drawn mesh lies on the face of the cropped frame: MediaPipe's own detections (landmarks2d),
        # mapped through the same crop, are within a pixel of it on average.
        detected = geometry.framing.apply(sequence.landmarks2d[wanted][:, :468])
        assert np.linalg.norm(detected - points, axis=-1).mean() < 1.0
        # The face fills about half of the crop's height (choose_framing's preferred fraction).
        height = points[..., 1].max(axis=-1) - points[..., 1].min(axis=-1)
        assert (np.abs(height / SIZE[0] - 0.5) < 0.1).all()
    assert to_uint8(sample["reference"]).tolist() == expected[0].tolist()


def test_frame_cache_gives_the_same_samples(index) -> None:
    seek = datamodule(index).dataset(TRAIN, 6)
    cached = datamodule(index, cache_frames=True).dataset(TRAIN, 6)
    for i in range(6):
        torch.testing.assert_close(seek[i]["pixel_values"], cached[i]["pixel_values"], rtol=0, atol=0)


def _batches(dm: LandmarkVideoDataModule, start: int = 0, **kwargs) -> list[dict]:
    dataset = dm.dataset(TRAIN, dm.samples_per_epoch)
    sampler = StepSampler(
        dataset, dm.batch_size, dm.samples_per_epoch // dm.batch_size, lambda: start, **kwargs
    )
    loader = dm._loader(dataset, dm.batch_size, sampler)
    return list(loader)


def test_two_workers_give_the_batches_of_none(index) -> None:
    serial = _batches(datamodule(index, num_workers=0))
    parallel = _batches(datamodule(index, num_workers=2))
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert a["index"].tolist() == b["index"].tolist()
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
        torch.testing.assert_close(a["landmarks"], b["landmarks"], rtol=0, atol=0)


def test_step_sampler_continues_where_training_stands() -> None:
    dataset = list(range(10**6))
    full = list(StepSampler(dataset, batch_size=2, num_batches=4, start=lambda: 0))
    assert full == list(range(8))
    # Resumed after 3 batches: the rest of the epoch, as the uninterrupted run drew it.
    assert list(StepSampler(dataset, batch_size=2, num_batches=4, start=lambda: 3)) == [6, 7]
    # The next epoch draws new samples.
    assert list(StepSampler(dataset, batch_size=2, num_batches=4, start=lambda: 4)) == list(range(8, 16))
    # Two ranks draw disjoint samples.
    rank0 = list(StepSampler(dataset, 2, 4, lambda: 0, num_replicas=2, rank=0))
    rank1 = list(StepSampler(dataset, 2, 4, lambda: 0, num_replicas=2, rank=1))
    assert not set(rank0) & set(rank1) and len(rank0) == len(rank1) == 8


def test_validation_excerpt_is_the_held_out_clip_after_its_reference(index) -> None:
    dm = datamodule(index)
    excerpt = dm.validation_excerpt(5)
    assert excerpt.clip.speaker == VAL_SPEAKER
    full = LandmarkSequence.load(excerpt.clip.landmarks)
    np.testing.assert_array_equal(excerpt.reference.mesh, full.mesh[:1])
    np.testing.assert_array_equal(excerpt.sequence.mesh, full.mesh[1:6])
    np.testing.assert_array_equal(excerpt.image, read_frames(excerpt.clip.video, [0])[0])
    with pytest.raises(Exception, match=r"val\.start"):
        load_excerpt(excerpt.clip, CLIP_FRAMES + 5, 4)


def test_missing_data_is_one_clear_error(tmp_path) -> None:
    from common.errors import UserError

    with pytest.raises(UserError, match=r"data\.index=DIR"):
        LandmarkVideoDataModule(64, 64, "default").setup()
    with pytest.raises(UserError, match=r"common\.preprocess"):
        LandmarkVideoDataModule(64, 64, "default", index=str(tmp_path)).setup()
    with pytest.raises(UserError, match="not a folder"):
        LandmarkVideoDataModule(
            64, 64, "default", source_dir=str(tmp_path / "nope"), cache_dir=str(tmp_path)
        ).setup()
    with pytest.raises(UserError, match="num_frames"):
        LandmarkVideoDataset([], SIZE, "default", num_frames=0)
