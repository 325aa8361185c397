"""audio2lmk training data: speaker split, seeded windows (with workers), targets, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lmk.data import (
    Audio2LmkDataModule,
    AudioAugment,
    ClipData,
    TrainWindows,
    ValWindows,
    WindowSampler,
    collate_windows,
    load_clip,
    make_window,
)
from common.edit import neutral_frame
from common.errors import UserError
from common.geometry import absolute_to_relative
from common.index import load_index
from common.lmkfile import LandmarkSequence
from tests.audio2lmk_corpus import CLIP_FRAMES, tiny_corpus_index
from tests.audio2lmk_tiny import one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, face_model):
    return tiny_corpus_index(tmp_path_factory, face_model)


def datamodule(index, **kwargs) -> Audio2LmkDataModule:
    options = {"index": str(index), "window_frames": 15, "samples_per_epoch": 12, "batch_size": 4, "seed": 3}
    options.update(kwargs)
    dm = Audio2LmkDataModule(**options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def batches(loader, epoch: int = 0) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def synthetic_clip(frames: int = 40, fps: float = 30.0) -> ClipData:
    rng = np.random.default_rng(0)
    pose = np.cumsum(rng.normal(scale=0.5, size=(frames, 6)), axis=0)
    return ClipData(
        id="synthetic",
        speaker="s",
        fps=fps,
        offsets=rng.normal(size=(frames, 468, 3)).astype(np.float32),
        reference_mesh=np.zeros((468, 3), np.float32),
        neutral=0,
        pose=pose,
        audio=rng.normal(size=int(frames * 16000 / fps) - 100).astype(np.float32),
    )


def test_split_by_speaker_is_disjoint(tiny_index):
    dm = datamodule(tiny_index, val_speakers=["feifeili"])
    train = {c.speaker for c in dm.train_records}
    val = {c.speaker for c in dm.val_records}
    assert val == {"feifeili"} and train == {"Obama", "andrew"}
    assert dm.style_ids == {"Obama": 0, "andrew": 1}
    drawn = datamodule(tiny_index, val_speakers=None, val_fraction=0.34, split_seed=1)
    assert not {c.speaker for c in drawn.train_records} & {c.speaker for c in drawn.val_records}
    assert drawn.val_records
    # every validation batch comes from a held-out speaker's clip
    val_ids = {c.id for c in dm.val_records}
    for batch in dm.val_dataloader():
        assert dm.val_records[int(batch["clip"][0])].id in val_ids
    with pytest.raises(UserError, match="not in the data set"):
        datamodule(tiny_index, val_speakers=["nobody"])


def test_data_source_errors(tmp_path):
    with pytest.raises(UserError, match=r"data\.index"):
        Audio2LmkDataModule()
    with pytest.raises(UserError, match="cache_dir"):
        Audio2LmkDataModule(source_dir=str(tmp_path))
    dm = Audio2LmkDataModule(index=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no data-set index"):
        dm.setup("fit")


def test_targets_are_offsets_from_the_neutral_frame(tiny_index):
    record = load_index(tiny_index)[0]
    clip = load_clip(record, 30.0)
    seq = LandmarkSequence.load(record.landmarks)
    n = neutral_frame(seq)
    assert clip.neutral == n and clip.num_frames == seq.num_frames
    np.testing.assert_allclose(clip.reference_mesh, seq.mesh[n])
    np.testing.assert_allclose(clip.offsets + clip.reference_mesh, seq.mesh, atol=1e-6)
    assert not clip.offsets[n].any()
    window = make_window(clip, 10, 20)
    assert window["audio"].shape == (round(30 * 16000 / 30) - round(10 * 16000 / 30),)
    np.testing.assert_allclose(window["offsets"], clip.offsets[10:30])
    np.testing.assert_allclose(window["pose"], absolute_to_relative(clip.pose[10:30]), atol=1e-5)
    assert np.abs(window["pose"][0]).max() < 1e-5  # relative to the window's first frame
    np.testing.assert_array_equal(window["audio"], clip.audio[5333:16000])


def test_window_padding_and_resampling(tiny_index):
    clip = synthetic_clip(40)
    window = make_window(clip, 30, 20)  # 10 real frames
    assert window["mask"].sum() == 10 and not window["offsets"][10:].any()
    assert len(window["audio"]) == round(20 * 16000 / 30)
    assert not window["audio"][-200:].any()  # past the recording: zeros
    # speed perturbation: frame i is clip position start + i * rate (linear interpolation)
    fast = make_window(clip, 0, 10, rate=1.5)
    np.testing.assert_allclose(fast["offsets"][2], clip.offsets[3], atol=1e-6)
    np.testing.assert_allclose(fast["offsets"][1], 0.5 * (clip.offsets[1] + clip.offsets[2]), atol=1e-6)
    assert len(fast["audio"]) == round(10 * 16000 / 30)
    # a model at 25 fps gets the 30 fps clips resampled
    dm = datamodule(tiny_index, fps=25.0, val_window_frames=None)
    assert all(
        dm.val_dataset().store[i].num_frames == CLIP_FRAMES * 25 // 30 for i in range(len(dm.val_records))
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["offsets"].shape == (4, 15, 468, 3)
    assert batch["audio"].shape == (4, round(15 * 16000 / 25))


def test_validation_windows_cover_each_clip_once(tiny_index):
    dm = datamodule(tiny_index, val_window_frames=25, val_batch_size=2)
    ds = dm.val_dataset()
    assert [(i, s, n) for i, s, n in ds.items] == [(0, 0, 25), (0, 25, 25), (0, 50, 10)]
    masks = [b["mask"] for b in dm.val_dataloader()]
    assert sum(int(m.sum()) for m in masks) == CLIP_FRAMES
    whole = ValWindows(ds.store, [0], None)
    assert len(whole) == 1 and len(whole[0]["mask"]) == CLIP_FRAMES


def test_seeded_windows_repeat_and_differ(tiny_index):
    a, b = datamodule(tiny_index), datamodule(tiny_index)
    first, again = batches(a.train_dataloader()), batches(b.train_dataloader())
    for x, y in zip(first, again, strict=True):
        for key in x:
            torch.testing.assert_close(x[key], y[key])
    other_epoch = batches(a.train_dataloader(), epoch=1)
    assert not torch.equal(first[0]["audio"], other_epoch[0]["audio"])
    other_seed = batches(datamodule(tiny_index, seed=4).train_dataloader())
    assert not torch.equal(first[0]["audio"], other_seed[0]["audio"])


def test_two_workers_give_the_same_batches(tiny_index):
    single = batches(datamodule(tiny_index, num_workers=0).train_dataloader(), epoch=2)
    workers = batches(datamodule(tiny_index, num_workers=2).train_dataloader(), epoch=2)
    assert len(single) == len(workers) == 3
    for x, y in zip(single, workers, strict=True):
        for key in x:
            torch.testing.assert_close(x[key], y[key])


def test_sampler_keys_follow_the_epoch():
    sampler = WindowSampler(4)
    assert list(sampler) == [0, 1, 2, 3]
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11] and len(sampler) == 4


def test_audio_augmentation():
    rng = np.random.default_rng(0)
    audio = rng.normal(scale=0.1, size=16000).astype(np.float32)
    gain_only = AudioAugment(gain_prob=1.0, gain_db=(6.0, 6.0), noise_prob=0.0)
    np.testing.assert_allclose(gain_only(audio, np.random.default_rng(1)), audio * 10 ** (6 / 20), rtol=1e-6)
    noise_only = AudioAugment(gain_prob=0.0, noise_prob=1.0, snr_db=(20.0, 20.0))
    noisy = noise_only(audio, np.random.default_rng(1))
    snr = 10 * np.log10(
        np.mean(audio.astype(np.float64) ** 2) / np.mean((noisy - audio).astype(np.float64) ** 2)
    )
    assert snr == pytest.approx(20.0, abs=0.3)
    same = noise_only(audio, np.random.default_rng(1))
    np.testing.assert_array_equal(noisy, same)  # seeded
    assert AudioAugment.from_config({"gain_db": [-3, 3], "noise_prob": 0.2}).gain_db == (-3.0, 3.0)


def test_train_windows_of_a_short_clip_are_padded():
    from audio2lmk.data import ClipStore

    class Store(ClipStore):
        def __init__(self):
            super().__init__([], 30.0)
            self.clip = synthetic_clip(10)

        def __len__(self):
            return 1

        def frames(self, i):
            return 10

        def __getitem__(self, i):
            return self.clip

    ds = TrainWindows(Store(), [0], window_frames=16, samples_per_epoch=2, speed=(0.9, 1.1))
    item = ds[5]
    assert item["mask"].shape == (16,) and 8 <= item["mask"].sum() <= 11
    batch = collate_windows([ds[0], ds[1]])
    assert batch["audio"].shape[0] == 2 and batch["style"].tolist() == [0, 0]
    with pytest.raises(UserError, match="speed"):
        TrainWindows(Store(), [0], window_frames=16, samples_per_epoch=2, speed=(1.2, 1.1))


def test_centered_targets_share_the_training_mean(tiny_index):
    from audio2lmk.data import centering_shifts

    dm = datamodule(tiny_index, center_targets=True, val_speakers=["feifeili"])
    ds = dm.train_dataset()
    store = ds.store
    shifts = centering_shifts(store)
    frames = [store[i].num_frames for i in range(len(store))]
    overall = np.average([store[i].offsets.mean(0) for i in range(len(store))], axis=0, weights=frames)
    for i in range(len(store)):
        np.testing.assert_allclose(store[i].offsets.mean(0) + shifts[i], overall, atol=1e-5)
    item, plain = ds[3], datamodule(tiny_index, val_speakers=["feifeili"]).train_dataset()[3]
    np.testing.assert_allclose(
        item["offsets"] - plain["offsets"],
        np.broadcast_to(shifts[item["clip"]], plain["offsets"].shape),
        atol=1e-6,
    )
    # validation targets stay the raw offsets from the neutral frame
    val = dm.val_dataset()[0]
    np.testing.assert_array_equal(
        val["offsets"], val_raw := make_window(dm.val_dataset().store[0], 0, CLIP_FRAMES)["offsets"]
    )
    assert not val_raw[dm.val_dataset().store[0].neutral].any()
