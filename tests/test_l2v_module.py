"""LandmarkVideoModule: which parameters train in each stage, the loss's parts, EMA, optimizers, pixel space."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from common.config import CONF_DIR
from common.errors import UserError
from lmk2video.building import add_motion_modules, build_pipeline
from lmk2video.models.denoising_unet import MOTION_KEY
from lmk2video.module import EMA, LandmarkVideoModule, adamw_8bit, snr_weights, trainable_names
from lmk2video.pipeline import LandmarkVideoPipeline
from tests.l2v_models import tiny_model_config, tiny_pipeline
from tests.l2v_tiny import randomize_

SIZE = 64


def batch(frames: int = 2, size: int = SIZE, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded images in [-1, 1] with the data module's keys and layout."""
    gen = torch.Generator().manual_seed(seed)

    def images(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=gen).float() / 127.5 - 1

    return {
        "pixel_values": images(batch_size, 3, frames, size, size),
        "reference": images(batch_size, 3, size, size),
        "landmarks": images(batch_size, 3, frames, size, size),
        "reference_landmarks": images(batch_size, 3, size, size),
    }


def loader(item: dict[str, torch.Tensor]) -> torch.utils.data.DataLoader:
    """A loader yielding ``item`` as its one batch."""
    return torch.utils.data.DataLoader([item], batch_size=None)


def one_step(m: pl.LightningModule, frames: int) -> None:
    """One Lightning optimizer step of ``m`` on a seeded batch of ``frames``-frame samples, on the CPU."""
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, train_dataloaders=loader(batch(frames=frames)))


def module(stage: int, motion: bool = True, **kwargs) -> LandmarkVideoModule:
    kwargs.setdefault("loss", {"uncond_ratio": 0.0})
    return LandmarkVideoModule(tiny_pipeline(motion=motion), stage=stage, **kwargs)


def expected_trainable(m: LandmarkVideoModule, stage: int) -> set[str]:
    if stage == 2:
        return {f"denoising_unet.{n}" for n, _ in m.denoising_unet.named_motion_module_parameters()}
    reference = tiny_pipeline().reference_unet
    unused = set(reference.freeze_unused_parameters())
    names = {f"denoising_unet.{n}" for n, _ in m.denoising_unet.named_2d_parameters()}
    names |= {f"reference_unet.{n}" for n, _ in reference.named_parameters() if n not in unused}
    names |= {f"pose_guider.{n}" for n, _ in m.pose_guider.named_parameters()}
    return names


@pytest.mark.parametrize("stage", [1, 2])
def test_one_training_step_changes_exactly_the_stage_parameters(stage) -> None:
    """One Lightning optimizer step (no weight decay) moves every trained parameter and nothing else."""
    import functools

    m = module(stage, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    trainable = set(trainable_names(m))
    assert trainable == expected_trainable(m, stage)
    assert not any(n.startswith(("vae.", "image_encoder.")) for n in trainable)
    if stage == 1:
        assert not any(MOTION_KEY in f".{n}" for n in trainable)
    one_step(m, frames=1 if stage == 1 else 3)
    changed = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert sorted(changed - trainable) == []
    # Cross-attention's query path (norm2, to_q) and keys get exactly zero gradient: with a single conditioning
    # token (the CLIP embedding) the softmax over keys is always 1. Every other trained parameter moved.
    single_token = (".attn2.to_q.weight", ".attn2.to_k.weight", ".norm2.weight", ".norm2.bias")
    assert sorted(n for n in trainable - changed if not n.endswith(single_token)) == []
    # Frozen networks stayed in eval mode through fit.
    assert not m.vae.training and not m.image_encoder.training
    assert m.pose_guider.training == (stage == 1)


def test_stage_two_needs_motion_modules_and_stages_are_one_or_two() -> None:
    with pytest.raises(UserError, match="has none"):
        module(2, motion=False)
    with pytest.raises(UserError, match="choose 1"):
        module(3)


def test_loss_is_seeded_and_condition_dropout_removes_the_reference() -> None:
    m = module(1)
    data = batch()
    loss_a, details = m.compute_loss(data, torch.Generator().manual_seed(3))
    loss_b, _ = m.compute_loss(data, torch.Generator().manual_seed(3))
    assert torch.equal(loss_a, loss_b)
    assert details["weights"].shape == details["mse"].shape == (2,)
    assert not details["dropped"].any()
    other = dict(data, reference=batch(seed=1)["reference"])
    assert not torch.equal(m.compute_loss(other, torch.Generator().manual_seed(3))[0], loss_a)
    # Every sample dropped: no image embedding, no reference attention, so the reference no longer matters.
    m.loss_settings.uncond_ratio = 1.0
    dropped = m.compute_loss(data, torch.Generator().manual_seed(3))
    assert dropped[1]["dropped"].all()
    torch.testing.assert_close(m.compute_loss(other, torch.Generator().manual_seed(3))[0], dropped[0])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    data = batch()
    grads = []
    for checkpointing in (False, True):
        m = module(1, gradient_checkpointing=checkpointing).train()
        loss, _ = m.compute_loss(data, torch.Generator().manual_seed(0))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.trainable_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_min_snr_weights() -> None:
    snr = torch.tensor([0.0, 1.0, 5.0, 10.0])
    # AniPortrait's form (the default): min(SNR + 1, g) / (SNR + 1), full weight at pure noise.
    torch.testing.assert_close(snr_weights(snr, 5.0), torch.tensor([1.0, 1.0, 5 / 6, 5 / 11]))
    torch.testing.assert_close(
        snr_weights(snr, 5.0, weighting="min_snr"), torch.tensor([0.0, 0.5, 5 / 6, 5 / 11])
    )
    torch.testing.assert_close(snr_weights(snr, 5.0, "epsilon"), torch.tensor([0.0, 1.0, 1.0, 0.5]))
    torch.testing.assert_close(snr_weights(snr, None), torch.ones(4))
    with pytest.raises(UserError, match="weighting"):
        snr_weights(snr, 5.0, weighting="plain")


def test_training_weights_keep_the_high_noise_timesteps_and_the_schedule_is_a_setting() -> None:
    # Zero terminal SNR: the last timestep is pure noise; AniPortrait's weighting keeps it at weight 1.
    m = module(1)
    scheduler = m.noise_scheduler
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    last = snr_weights(snr[-1:], 5.0)
    assert float(last) == 1.0 and float(snr_weights(snr[-1:], 5.0, weighting="min_snr")) == 0.0
    # ... and every timestep above 800 keeps at least weight 0.5 (the plain form gives them < 0.01).
    assert float(snr_weights(snr[800:], 5.0).min()) > 0.5
    assert scheduler.config.beta_schedule == m.inference_scheduler_config["beta_schedule"]
    scaled = module(1, loss={"beta_schedule": "scaled_linear"})
    assert scaled.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert not torch.equal(scaled.noise_scheduler.alphas_cumprod, alphas)
    with pytest.raises(UserError, match="beta_schedule"):
        module(1, loss={"beta_schedule": "cubic"})


def test_ema_math_swap_and_state() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([("w", weight)], decay=0.9)
    with torch.no_grad():
        weight.copy_(torch.tensor([3.0, 4.0]))
    ema.update([("w", weight)])
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([1.2, 2.2]))
    ema.update([("w", weight)])
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([0.9 * 1.2 + 0.3, 0.9 * 2.2 + 0.4]))
    with ema.swapped([("w", weight)]):
        torch.testing.assert_close(weight.detach(), ema.shadow["w"])
    torch.testing.assert_close(weight.detach(), torch.tensor([3.0, 4.0]))
    restored = EMA([("w", weight)], decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2 and torch.equal(restored.shadow["w"], ema.shadow["w"])
    with pytest.raises(UserError, match="ema_decay"):
        EMA([("w", weight)], decay=1.0)


def test_module_ema_follows_optimizer_steps_and_travels_in_the_state_dict() -> None:
    import functools

    m = module(2, ema_decay=0.5, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    start = {n: p.detach().clone() for n, p in m.trainable_parameters()}
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, train_dataloaders=loader(batch(frames=2)))
    for name, param in m.trainable_parameters():
        torch.testing.assert_close(m.ema.shadow[name], 0.5 * start[name] + 0.5 * param.detach())
    state = m.state_dict()
    assert state["_ema.num_updates"] == 1
    fresh = module(2, ema_decay=0.5)
    fresh.load_state_dict(state)
    for name in start:
        torch.testing.assert_close(fresh.ema.shadow[name], m.ema.shadow[name], rtol=0, atol=0)


def test_adamw8bit_without_bitsandbytes_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        adamw_8bit(params, lr=1e-5)
    factory = instantiate(OmegaConf.load(CONF_DIR / "lmk2video" / "groups" / "optimizer" / "adamw8bit.yaml"))
    with pytest.raises(UserError, match=r"talking-portrait\[bnb\]"):
        factory(params)
    plain = instantiate(OmegaConf.load(CONF_DIR / "lmk2video" / "groups" / "optimizer" / "adamw.yaml"))
    assert isinstance(plain(params), torch.optim.AdamW)


def pixel_config() -> dict:
    config = tiny_model_config(motion=False)
    config["vae"] = None
    config["unet"] = {**config["unet"], "in_channels": 3, "out_channels": 3, "sample_size": 16}
    config["pose_guider"] = {**config["pose_guider"], "block_out_channels": [4], "reference_attention": False}
    config["width"] = config["height"] = 16
    return config


def test_pixel_space_model_saves_loads_trains_and_generates(tmp_path) -> None:
    torch.manual_seed(0)
    pipe = build_pipeline(pixel_config())
    assert pipe.vae is None and pipe.vae_scale_factor == 1 and pipe.latent_channels == 3
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(pipe.encode_images(images), images) and torch.equal(
        pipe.decode_latents(images), images
    )
    pipe.save_pretrained(tmp_path / "pixel")
    assert json.loads((tmp_path / "pixel" / "model_index.json").read_text())["vae"] == [None, None]
    loaded = LandmarkVideoPipeline.from_pretrained(tmp_path / "pixel")
    assert loaded.vae is None
    randomize_(loaded.denoising_unet, 1)
    randomize_(loaded.pose_guider, 2)
    loaded.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    drawings = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    frames = loaded(reference, drawings, drawings[0], num_inference_steps=2).frames
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8 and frames.std() > 0
    m = LandmarkVideoModule(loaded, stage=1)
    loss, _ = m.compute_loss(batch(frames=1, size=16), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for _, p in m.trainable_parameters())


def test_pixel_space_mismatches_are_clear() -> None:
    config = pixel_config()
    config["pose_guider"] = {**config["pose_guider"], "block_out_channels": [4, 8]}
    with pytest.raises(UserError, match="no vae: give the pose guider one block_out_channels entry"):
        build_pipeline(config)
    config = pixel_config()
    config["pretrained"] = {"vae_path": "."}
    with pytest.raises(UserError, match="pixel-space"):
        build_pipeline(config)


def test_motion_modules_are_added_to_a_stage_one_model(tmp_path) -> None:
    stage1 = tiny_pipeline(motion=False)
    donor = tiny_pipeline(motion=True, seed=5).denoising_unet
    donor.save_motion_modules(tmp_path / "mm.safetensors")
    motion = {"num_attention_heads": 2, "max_position": 16}
    two_d = {n: p.detach().clone() for n, p in stage1.denoising_unet.named_2d_parameters()}
    add_motion_modules(stage1, motion, tmp_path / "mm.safetensors")
    unet = stage1.denoising_unet
    assert unet.has_motion_modules
    for name, param in unet.named_2d_parameters():
        assert torch.equal(param.detach(), two_d[name]), name
    for key, value in donor.motion_module_state_dict().items():
        assert torch.equal(unet.motion_module_state_dict()[key], value), key
    m = LandmarkVideoModule(stage1, stage=2)
    assert set(trainable_names(m)) == {
        f"denoising_unet.{n}" for n, _ in unet.named_motion_module_parameters()
    }
