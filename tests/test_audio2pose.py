"""Audio2PoseModel: KV-cached decoding equals full recomputation, continuous at any length, seeds."""

from __future__ import annotations

import pytest
import torch

from audio2lmk.models.audio2pose import Audio2PoseModel, shift_poses, sinusoidal_positions
from audio2lmk.models.pose_decoder import KVCache, alibi_slopes, causal_alibi_bias
from common.audio import load_audio
from tests.audio2lmk_tiny import (
    one_torch_thread,  # noqa: F401
    randomize_,
    speechlike,
    tiny_mel_encoder,
    tiny_wav2vec2_encoder,
)
from tests.conftest import shared_file

SPAN = 6


def _tiny(encoder: dict | None = None, **kwargs) -> Audio2PoseModel:
    config = {
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 4,
        "ffn_dim": 32,
        "num_styles": 5,
        "attention_span": SPAN,
    }
    config.update(kwargs)
    torch.manual_seed(0)
    model = Audio2PoseModel(encoder=encoder or tiny_mel_encoder(), **config)
    return randomize_(model, scale=0.3).eval()


def _memory(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 16, generator=torch.Generator().manual_seed(seed))


CONFIGS = {
    "aniportrait": {"positional_encoding": "sinusoidal", "cross_attention_window": 0},
    "alibi-window2": {"positional_encoding": "none", "cross_attention_window": 2},
    "unbounded": {"positional_encoding": "none", "attention_span": None, "cross_attention_window": 1},
    "span1": {"positional_encoding": "sinusoidal", "attention_span": 1, "cross_attention_window": 3},
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("frames", [1, SPAN, 2 * SPAN, 2 * SPAN + 1, 5 * SPAN, 41])
def test_cache_equals_full_prefix_recomputation(config, frames):
    """Lengths: one frame, exactly one span, multiples of it, one past the cache capacity, longer."""
    model = _tiny(**config)
    memory = _memory(frames, batch=2)
    cached = model.generate(memory=memory, style=[1, 3])
    recomputed = model.generate(memory=memory, style=[1, 3], use_cache=False)
    assert cached.shape == (2, frames, 6)
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=0)
    # The training pass (teacher forcing) computes the same function.
    forced = model.decode(memory, shift_poses(cached), torch.tensor([1, 3]))
    torch.testing.assert_close(forced, cached, atol=1e-5, rtol=0)


def test_bounded_span_is_translation_invariant():
    """With ALiBi only, a frame is the same function of its last `layers * (span - 1) + 1` inputs at
    any absolute position (each layer looks `span - 1` frames further back)."""
    model = _tiny(positional_encoding="none", attention_span=SPAN, cross_attention_window=0)
    pose_prev = torch.randn(1, 40, 6, generator=torch.Generator().manual_seed(3))
    memory = _memory(40)
    style = torch.tensor([2])
    full = model.decode(memory, pose_prev, style)
    reach = 2 * (SPAN - 1)
    for start in (reach, 17, 33):
        tail = model.decode(memory[:, start - reach :], pose_prev[:, start - reach :], style)
        torch.testing.assert_close(full[:, start:], tail[:, reach:], atol=1e-5, rtol=0)


def test_initial_pose_and_styles():
    model = _tiny(positional_encoding="sinusoidal", cross_attention_window=1)
    memory = _memory(20)
    start = torch.tensor([2.0, -1.0, 0.5, 0.1, 0.0, -0.2])
    out = model.generate(memory=memory, style=4, initial_pose=start)
    forced = model.decode(memory, shift_poses(out, start), torch.tensor([4]))
    torch.testing.assert_close(out, forced, atol=1e-5, rtol=0)
    assert not torch.allclose(out, model.generate(memory=memory, style=4))
    assert not torch.allclose(model.generate(memory=memory, style=0), model.generate(memory=memory, style=1))
    with pytest.raises(ValueError, match=r"style ids must lie in \[0, 5\)"):
        model.generate(memory=memory, style=5)
    with pytest.raises(ValueError, match="exactly one of `audio` or `memory`"):
        model.generate()


def test_same_seed_same_output_and_the_seed_draws_the_style():
    model = _tiny(num_styles=100)
    audio = speechlike(8000, seed=4)
    first = model.generate(audio, seed=7)
    assert torch.equal(first, model.generate(audio, seed=7))
    assert torch.equal(first, model.generate(audio, generator=torch.Generator().manual_seed(7)))
    drawn = int(model.draw_style(1, torch.Generator().manual_seed(7)))
    assert torch.equal(first, model.generate(audio, style=drawn))
    styles = {int(model.draw_style(1, torch.Generator().manual_seed(s))) for s in range(10)}
    assert len(styles) > 1  # different seeds reach different styles


def test_generate_keeps_the_training_mode_and_is_deterministic():
    model = _tiny(dropout=0.5).train()
    memory = _memory(10)
    a = model.generate(memory=memory, style=0)
    b = model.generate(memory=memory, style=0)
    assert model.training and torch.equal(a, b)


@pytest.mark.parametrize("encoder", [tiny_wav2vec2_encoder(), tiny_mel_encoder()], ids=["wav2vec2", "mel"])
def test_save_load_round_trip(tmp_path, encoder):
    model = _tiny(encoder, positional_encoding="sinusoidal", attention_span=None, cross_attention_window=2)
    audio = speechlike(10000, seed=5)
    expected = model.generate(audio, seed=3)
    model.save_pretrained(tmp_path / "a2p")
    loaded = Audio2PoseModel.from_pretrained(tmp_path / "a2p").eval()
    assert loaded.config.attention_span is None and loaded.config.cross_attention_window == 2
    torch.testing.assert_close(loaded.generate(audio, seed=3), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seconds", [1 / 30, 1.0, 2.0, 3.0, 2.5])
def test_lengths_around_encoder_windows(seconds):
    """The encoder runs 1 s windows with 0.25 s context: a frame, exactly one window, multiples, between."""
    model = _tiny(tiny_mel_encoder(window_seconds=1.0, context_seconds=0.25), positional_encoding="none")
    audio = speechlike(round(seconds * 16000), seed=6)
    poses = model.generate(audio, seed=0)
    assert poses.shape == (1, model.num_frames(audio.shape[1]), 6)
    assert torch.isfinite(poses).all()


def test_long_real_speech_is_one_continuous_decode():
    audio = torch.from_numpy(load_audio(shared_file("talking", "KristiNoem.wav")))[None]
    model = _tiny(tiny_mel_encoder(window_seconds=4.0, context_seconds=1.0), positional_encoding="none")
    memory = model.encode_audio(audio)
    frames = memory.shape[1]
    assert frames == model.num_frames(audio.shape[1]) > 500
    poses = model.generate(memory=memory, seed=1)
    assert poses.shape == (1, frames, 6) and torch.isfinite(poses).all()
    # Continuous: the last frames equal a decode that only sees their receptive field of the run.
    style = model.draw_style(1, torch.Generator().manual_seed(1))
    reach = 2 * (SPAN - 1)
    tail = model.decode(memory[:, -reach - 10 :], shift_poses(poses)[:, -reach - 10 :], style)
    torch.testing.assert_close(poses[:, -10:], tail[:, -10:], atol=1e-5, rtol=0)


def test_training_forward_backward():
    model = _tiny(tiny_wav2vec2_encoder(), positional_encoding="sinusoidal").train()
    target = torch.randn(2, 15, 6, generator=torch.Generator().manual_seed(0))
    audio = speechlike(8000, batch=2)
    pred = model(audio, shift_poses(target), torch.tensor([0, 4]))
    assert pred.shape == (2, 15, 6)
    (pred - target).square().mean().backward()
    assert model.style_embedding.weight.grad[[0, 4]].abs().sum() > 0
    assert model.style_embedding.weight.grad[1].abs().sum() == 0
    assert model.layers[0].self_attn.to_qkv.weight.grad is not None


def test_alibi_pieces():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([0.5**i for i in range(1, 9)]))
    assert alibi_slopes(6).tolist()[:4] == alibi_slopes(4).tolist()
    bias = causal_alibi_bias(alibi_slopes(2), 4, 4, span=2)
    assert bias[0, 3, 3] == 0 and bias[0, 3, 2] == -alibi_slopes(2)[0] and bias[0, 3, 1] == float("-inf")
    assert bias[1, 0, 1] == float("-inf")
    table = sinusoidal_positions(torch.arange(3), 4)
    torch.testing.assert_close(
        table[1],
        torch.tensor([1.0, 0.01]).sin().repeat_interleave(2) * torch.tensor([1, 0, 1, 0])
        + torch.tensor([1.0, 0.01]).cos().repeat_interleave(2) * torch.tensor([0, 1, 0, 1]),
    )
    cache = KVCache(span=3, capacity=4)
    for step in range(9):
        keys, _ = cache.append(torch.full((1, 1, 1, 1), float(step)), torch.zeros(1, 1, 1, 1))
        assert keys.flatten().tolist() == [float(s) for s in range(max(0, step - 2), step + 1)]
    growing = KVCache(span=None, capacity=1)
    for step in range(5):
        keys, _ = growing.append(torch.full((1, 1, 1, 1), float(step)), torch.zeros(1, 1, 1, 1))
    assert keys.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and growing.capacity == 8
