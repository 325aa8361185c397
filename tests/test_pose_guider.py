"""PoseGuider: output contract, zero init, reference attention, save/load, AniPortrait compatibility."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from safetensors.torch import load_file, save_file
from torch import nn

from common.errors import UserError
from lmk2video.models.pose_guider import (
    PoseGuider,
    PoseGuiderOutput,
    aniportrait_config_from_state_dict,
    convert_aniportrait_pose_guider,
    convert_to_aniportrait_pose_guider,
)

TINY = {
    "unet_block_out_channels": (8, 16),
    "block_out_channels": (4, 8),
    "norm_num_groups": 4,
    "attention_head_dim": 4,
}
TINY_ANI = {"num_attention_heads": 2, "attention_head_dim": 4, "norm_num_groups": 4}


def tiny(**overrides) -> PoseGuider:
    return PoseGuider(**{**TINY, **overrides}).eval()


def landmarks(b: int, f: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Target (B, 3, F, H, W) and reference (B, 3, H, W) drawings in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1, torch.rand(b, 3, h, w, generator=g) * 2 - 1


@torch.no_grad()
def randomise_(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and BatchNorm buffer with seeded values of sensible scale."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
        elif name.endswith("scale"):
            p.copy_(2 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return module


# ------------------------------------------------------------------------------------- our design


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"unet_block_out_channels": (8, 16, 32, 32), "block_out_channels": (4, 8, 8, 8)},
        {"unet_block_out_channels": (8,), "layers_per_block": 2},
        {"reference_attention": False, "mid_block_residual": True},
        {"num_attention_heads": 3, "attention_head_dim": 5},
    ],
)
def test_outputs_follow_the_unet_down_path(config: dict) -> None:
    model = tiny(**config)
    unet, s = model.config.unet_block_out_channels, model.downsample_factor
    b, f, h, w = 2, 3, 8 * s, 12 * s  # H != W
    x, ref = landmarks(b, f, h, w)
    out = model(x, ref)
    assert isinstance(out, PoseGuiderOutput)
    expected = [(b, unet[0], f, h // s, w // s)]
    rh, rw = h // s, w // s
    for i, c in enumerate(unet):
        if i < len(unet) - 1:
            rh, rw = -(-rh // 2), -(-rw // 2)
        expected.append((b, c, f, rh, rw))
    assert [tuple(t.shape) for t in out.down_block_res_samples] == expected
    if config.get("mid_block_residual"):
        assert tuple(out.mid_block_res_sample.shape) == expected[-1]
    else:
        assert out.mid_block_res_sample is None
    down, mid = model(x, ref, return_dict=False)
    assert all(torch.equal(a, c) for a, c in zip(down, out.down_block_res_samples))
    assert (mid is None) == (out.mid_block_res_sample is None)


def test_odd_latent_sizes_halve_like_the_unet() -> None:
    model = tiny(unet_block_out_channels=(8, 16, 16), block_out_channels=(4, 8))
    x, ref = landmarks(
        1, 2, 2 * 5, 2 * 7
    )  # latent 5x7 -> 3x4 -> 2x2 -> 2x2 (UNet's stride-2 conv, padding 1)
    sizes = [tuple(t.shape[-2:]) for t in model(x, ref).down_block_res_samples]
    assert sizes == [(5, 7), (3, 4), (2, 2), (2, 2)]


def test_new_guider_returns_exact_zeros_and_trains_from_its_zero_convs() -> None:
    model = tiny(mid_block_residual=True).train()
    x, ref = landmarks(2, 3, 16, 24)
    out = model(x, ref)
    outputs = [*out.down_block_res_samples, out.mid_block_res_sample]
    assert all(torch.equal(t, torch.zeros_like(t)) for t in outputs)
    g = torch.Generator().manual_seed(1)
    sum((t * torch.randn(t.shape, generator=g)).sum() for t in outputs).backward()
    for name, p in model.named_parameters():
        touched = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert touched == name.startswith(("zero_convs.", "mid_block_zero_conv.")), name


def test_trained_weights_give_non_zero_outputs() -> None:
    model = randomise_(tiny(mid_block_residual=True), seed=3)
    x, ref = landmarks(2, 3, 16, 24)
    out = model(x, ref)
    for t in [*out.down_block_res_samples, out.mid_block_res_sample]:
        assert t.abs().mean() > 1e-2


def test_reference_landmarks_change_the_outputs_after_the_stem() -> None:
    model = randomise_(tiny(unet_block_out_channels=(8, 16, 16)), seed=4)
    x, ref = landmarks(2, 3, 16, 24, seed=0)
    _, other_ref = landmarks(2, 3, 16, 24, seed=1)
    a = model(x, ref).down_block_res_samples
    b = model(x, other_ref).down_block_res_samples
    assert torch.equal(a[0], b[0])  # entry 0 precedes every attention block
    for i in range(1, len(a)):
        assert (a[i] - b[i]).abs().max() > 1e-3, i
    # the other batch item's reference does not leak into this item
    swapped = torch.stack([ref[0], other_ref[1]])
    c = model(x, swapped).down_block_res_samples
    assert torch.allclose(c[-1][0], a[-1][0], atol=1e-6) and not torch.allclose(c[-1][1], a[-1][1], atol=1e-3)


def test_frames_are_attended_independently() -> None:
    model = randomise_(tiny(), seed=5)
    x, ref = landmarks(2, 3, 16, 24)
    together = model(x, ref).down_block_res_samples
    for t in range(3):
        alone = model(x[:, :, t : t + 1], ref).down_block_res_samples
        for a, s in zip(together, alone):
            torch.testing.assert_close(a[:, :, t : t + 1], s, atol=1e-5, rtol=1e-5)


def test_reference_is_encoded_once_per_batch_item() -> None:
    model = randomise_(tiny(unet_block_out_channels=(8, 16, 16)), seed=6)
    stem_batches, key_inputs = [], []
    model.stem.register_forward_pre_hook(lambda _m, args: stem_batches.append(args[0].shape[0]))
    model.attentions[1].attn.to_k.register_forward_pre_hook(lambda _m, args: key_inputs.append(args[0].shape))
    b, f = 2, 5
    model(*landmarks(b, f, 16, 24))
    assert stem_batches == [b * f, b]
    assert key_inputs == [torch.Size([b, 2 * 3, 16])]  # one key projection per item: (B, h*w, C) at stage 1


def test_bad_inputs_are_refused() -> None:
    model = tiny()
    x, ref = landmarks(2, 3, 16, 24)
    with pytest.raises(ValueError, match="reference_landmarks"):
        model(x)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(x[..., :15, :], ref[..., :15, :])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(x, ref[:1])
    with pytest.raises(ValueError, match="landmarks must be"):
        model(x[:, :1], ref)
    with pytest.raises(ValueError, match="norm_num_groups"):
        PoseGuider(unet_block_out_channels=(6, 16), norm_num_groups=4)
    with pytest.raises(ValueError, match="attention_head_dim"):
        PoseGuider(unet_block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=3)
    assert tiny(reference_attention=False)(x).down_block_res_samples[0].shape[0] == 2


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    x, ref = landmarks(1, 2, 16, 16)
    results = []
    for checkpointing in (False, True):
        model = randomise_(tiny(), seed=7).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(x, ref).down_block_res_samples
        sum(t.square().sum() for t in out).backward()
        results.append(([t.detach() for t in out], [p.grad.clone() for p in model.parameters()]))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("architecture", ["default", "aniportrait"])
def test_save_pretrained_round_trip(tmp_path, architecture: str) -> None:
    if architecture == "default":
        model = randomise_(tiny(mid_block_residual=True), seed=8)
        x, ref = landmarks(1, 2, 16, 24)
    else:
        model = randomise_(PoseGuider.aniportrait(8, **TINY_ANI), seed=8).eval()
        x, ref = landmarks(1, 2, 64, 96)
    model.save_pretrained(tmp_path)
    loaded = PoseGuider.from_pretrained(tmp_path)
    public = [k for k in model.config if not k.startswith("_")]
    assert {k: loaded.config[k] for k in public} == {k: model.config[k] for k in public}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    a, b = model(x, ref), loaded(x, ref)
    for s, t in zip(a.down_block_res_samples, b.down_block_res_samples):
        assert torch.equal(s, t)


def test_from_pretrained_is_strict(tmp_path) -> None:
    tiny().save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["zero_convs.1.weight"]
    state["zero_convs.9.weight"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(UserError) as err:
        PoseGuider.from_pretrained(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert (
        "1 missing keys: zero_convs.1.weight" in message
        and "1 unexpected keys: zero_convs.9.weight" in message
    )


# --------------------------------------------------------------------- AniPortrait's released guider


def _conv_bn_relu(c_in: int, c_out: int, k: int, s: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=s, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class _ReleasedTransformer(nn.Module):
    """AniPortrait's Transformer2DModel wrapper as released: GroupNorm, 1x1 conv in, blocks, 1x1 conv out, +x."""

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        # released settings: cross_attention_dim=None -> no attn2 in the block
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, head_dim, cross_attention_dim=None, activation_fn="geglu")]
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.permute(0, 2, 3, 1).reshape(n, h * w, -1)
        for block in self.transformer_blocks:
            y = block(y, encoder_hidden_states=ref)
        y = self.proj_out(y.reshape(n, h, w, -1).permute(0, 3, 1, 2))
        return y + x


class _ReleasedPoseGuider(nn.Module):
    """AniPortrait's PoseGuider(noise_latent_channels=c, use_ca=True), re-built from primitives with its key names
    and forward (including the reference pass through the BatchNorm layers)."""

    def __init__(self, c: int, heads: int, head_dim: int, groups: int) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            *_conv_bn_relu(3, 3, 3, 1),
            *_conv_bn_relu(3, 16, 4, 2),
            *_conv_bn_relu(16, 16, 3, 1),
            *_conv_bn_relu(16, 32, 4, 2),
            *_conv_bn_relu(32, 32, 3, 1),
            *_conv_bn_relu(32, 64, 4, 2),
            *_conv_bn_relu(64, 64, 3, 1),
            *_conv_bn_relu(64, 128, 3, 1),
        )
        self.final_proj = nn.Conv2d(128, c, 1)
        self.conv_layers_1 = nn.Sequential(*_conv_bn_relu(c, c, 3, 1), *_conv_bn_relu(c, c, 3, 2))
        self.conv_layers_2 = nn.Sequential(*_conv_bn_relu(c, c, 3, 1), *_conv_bn_relu(c, 2 * c, 3, 2))
        self.conv_layers_3 = nn.Sequential(
            *_conv_bn_relu(2 * c, 2 * c, 3, 1), *_conv_bn_relu(2 * c, 4 * c, 3, 2)
        )
        self.conv_layers_4 = nn.Sequential(*_conv_bn_relu(4 * c, 4 * c, 3, 1))
        for i, ch in enumerate((c, 2 * c, 4 * c, 4 * c), start=1):
            setattr(self, f"cross_attn{i}", _ReleasedTransformer(ch, heads, head_dim, groups))
        self.scale = nn.Parameter(torch.ones(1) * 2)

    def forward(self, x: torch.Tensor, ref_x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)  # b c f h w -> (b f) c h w
        x = self.final_proj(self.conv_layers(x)) * self.scale
        features = [x]
        x = self.conv_layers_1(x)
        ref_x = self.conv_layers_1(self.final_proj(self.conv_layers(ref_x)) * self.scale)
        x = self.cross_attn1(x, ref_x)
        features.append(x)
        for i in (2, 3, 4):
            x = getattr(self, f"conv_layers_{i}")(x)
            ref_x = getattr(self, f"conv_layers_{i}")(ref_x)
            x = getattr(self, f"cross_attn{i}")(x, ref_x)
            features.append(x)
        return [t.unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4) for t in features]


def _max_diff(a: list[torch.Tensor], b: tuple[torch.Tensor, ...]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((s - t).abs().max().item() for s, t in zip(a, b))


def test_released_key_names_and_shapes() -> None:
    with torch.device("meta"):
        released = _ReleasedPoseGuider(320, heads=16, head_dim=88, groups=32).state_dict()
        ours = PoseGuider.aniportrait().state_dict()
    back = convert_to_aniportrait_pose_guider(ours)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in released.items()}
    assert tuple(released["cross_attn1.transformer_blocks.0.attn1.to_q.weight"].shape) == (1408, 1408)
    assert tuple(released["cross_attn4.proj_in.weight"].shape) == (1408, 1280, 1, 1)
    assert tuple(released["conv_layers_3.3.weight"].shape) == (1280, 640, 3, 3)
    assert "conv_layers.22.running_var" in released and "scale" in released
    assert not any(".attn2." in k for k in released)


def test_aniportrait_matches_the_released_forward_exactly(tmp_path) -> None:
    released = randomise_(_ReleasedPoseGuider(8, heads=2, head_dim=4, groups=4), seed=10).eval()
    path = tmp_path / "pose_guider.pth"
    torch.save(released.state_dict(), path)
    ours = PoseGuider.from_aniportrait(path, num_attention_heads=2, norm_num_groups=4).eval()
    x, ref = landmarks(2, 3, 128, 96, seed=11)
    with torch.no_grad():
        expected = released(x, ref)
        got = ours(x, ref).down_block_res_samples
    assert _max_diff(expected, got) <= 1e-5
    assert [t.shape[1] for t in got] == [8, 8, 16, 32, 32]
    # training mode: batch statistics, and the reference pass updates BatchNorm running statistics
    released.train(), ours.train()
    expected = released(x, ref)
    got = ours(x, ref).down_block_res_samples
    assert _max_diff(expected, got) <= 1e-5
    buffers = convert_to_aniportrait_pose_guider(ours.state_dict())
    for k, v in released.named_buffers():
        torch.testing.assert_close(buffers[k], v, atol=1e-6, rtol=1e-6, msg=k)


def test_aniportrait_full_size_matches_the_released_forward() -> None:
    released = randomise_(_ReleasedPoseGuider(320, heads=16, head_dim=88, groups=32), seed=12).eval()
    ours = PoseGuider.aniportrait().eval()
    ours.load_state_dict(convert_aniportrait_pose_guider(released.state_dict()))
    x, ref = landmarks(1, 2, 64, 64, seed=13)
    with torch.no_grad():
        diff = _max_diff(released(x, ref), ours(x, ref).down_block_res_samples)
    assert diff <= 1e-5


def test_aniportrait_ignores_reference_landmarks() -> None:
    model = randomise_(PoseGuider.aniportrait(8, **TINY_ANI), seed=14).eval()
    x, ref = landmarks(1, 2, 64, 64, seed=0)
    _, other = landmarks(1, 2, 64, 64, seed=1)
    outputs = [model(x, r).down_block_res_samples for r in (ref, other, None)]
    for a, b in zip(outputs[0], outputs[1]):
        assert torch.equal(a, b)
    for a, b in zip(outputs[0], outputs[2]):
        assert torch.equal(a, b)


def test_fresh_aniportrait_guider_is_only_zero_at_its_first_output() -> None:
    torch.manual_seed(0)
    model = PoseGuider.aniportrait(8, **TINY_ANI).eval()
    out = model(*landmarks(1, 2, 64, 64)).down_block_res_samples
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert all(t.abs().max() > 0 for t in out[1:])


def test_converter_round_trip_and_inferred_config() -> None:
    released = randomise_(_ReleasedPoseGuider(8, heads=2, head_dim=4, groups=4), seed=15).state_dict()
    ours = convert_aniportrait_pose_guider(released)
    assert set(ours) == set(PoseGuider.aniportrait(8, **TINY_ANI).state_dict())
    assert ours["stem.scale"] is released["scale"]
    assert (
        ours["attentions.3.transformer_blocks.0.ff.net.2.weight"]
        is released["cross_attn4.transformer_blocks.0.ff.net.2.weight"]
    )
    back = convert_to_aniportrait_pose_guider(ours)
    assert list(back) == list(released) and all(back[k] is released[k] for k in released)
    config = aniportrait_config_from_state_dict(released, num_attention_heads=2, norm_num_groups=4)
    assert config == dict(PoseGuider.aniportrait(8, **TINY_ANI).config)


def test_converter_is_strict() -> None:
    released = _ReleasedPoseGuider(8, heads=2, head_dim=4, groups=4).state_dict()
    broken = dict(released)
    del broken["conv_layers_2.4.running_var"]
    broken["cross_attn2.transformer_blocks.0.attn2.to_q.weight"] = torch.zeros(8, 8)
    broken["extra.weight"] = torch.zeros(1)
    broken["conv_layers_1.0.bias"] = torch.zeros(3)
    with pytest.raises(UserError) as err:
        convert_aniportrait_pose_guider(broken, source="my.pth")
    message = str(err.value)
    assert message.startswith("my.pth:")
    assert "1 missing keys: stages.1.4.running_var" in message
    assert "2 unexpected keys: extra.weight, attentions.1.transformer_blocks.0.attn2.to_q.weight" in message
    assert "stages.0.0.bias (3,) (expected (8,))" in message
    with pytest.raises(UserError, match="not an AniPortrait pose guider"):
        convert_aniportrait_pose_guider({"conv_in.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"unexpected keys: stem\.conv_in\.weight"):
        convert_to_aniportrait_pose_guider(tiny().state_dict())


def test_from_aniportrait_reports_bad_files(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        PoseGuider.from_aniportrait(tmp_path / "missing.pth")
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2], not_weights)
    with pytest.raises(UserError, match="not a state dict"):
        PoseGuider.from_aniportrait(not_weights)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        PoseGuider.from_aniportrait(garbage)
