"""DenoisingUNet: equality with diffusers' UNet, motion modules, pose injection, checkpointing, freezing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from lmk2video.models.denoising_unet import DenoisingUNet
from lmk2video.models.motion_module import MotionModule, MotionModuleConfig, sinusoidal_table
from lmk2video.models.reference_unet import ReferenceUNet
from lmk2video.models.sd15 import sd15_denoising_unet_config
from tests.l2v_tiny import (
    TINY_MOTION,
    TINY_UNET,
    animatediff_checkpoint_shapes,
    fold,
    randomize_,
    tiny_denoising_config,
    unfold,
    video_inputs,
)


def _pair(motion: bool = False, seed: int = 1) -> tuple[DenoisingUNet, UNet2DConditionModel]:
    """diffusers UNet with seeded random weights and a DenoisingUNet holding the same 2D weights."""
    reference = randomize_(UNet2DConditionModel(**TINY_UNET), seed)
    model = DenoisingUNet(**tiny_denoising_config(motion=motion))
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected
    assert all(".motion_modules." in k for k in missing)
    return model.eval(), reference.eval()


def _diffusers_on_frames(unet: UNet2DConditionModel, sample, timesteps, context, **kwargs) -> torch.Tensor:
    frames = sample.shape[2]
    out = unet(
        fold(sample), timesteps.repeat_interleave(frames), context.repeat_interleave(frames, 0), **kwargs
    )
    return unfold(out.sample, sample.shape[0])


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_equals_diffusers_unet_with_frames_folded(size: tuple[int, int]) -> None:
    model, reference = _pair(motion=False)
    sample, timesteps, context = video_inputs(batch=2, frames=3, size=size)
    with torch.no_grad():
        ours = model(sample, timesteps, context).sample
        theirs = _diffusers_on_frames(reference, sample, timesteps, context)
    diff = (ours - theirs).abs().max().item()
    print(f"max abs diff vs diffusers UNet2DConditionModel (fp32, latents {size}): {diff:.3e}")
    assert ours.shape == (2, 4, 3, *size)
    assert theirs.abs().mean() > 0.05  # a non-trivial output
    assert diff <= 1e-5


def test_equals_diffusers_unet_in_float64() -> None:
    """The fp32 difference is rounding: in float64 the two UNets agree to ~1e-15."""
    model, reference = _pair(motion=False)
    model, reference = model.double(), reference.double()
    sample, timesteps, context = video_inputs(batch=2, frames=3)
    with torch.no_grad():
        ours = model(sample.double(), timesteps, context.double()).sample
        theirs = _diffusers_on_frames(reference, sample.double(), timesteps, context.double())
    diff = (ours - theirs).abs().max().item()
    print(f"max abs diff vs diffusers UNet2DConditionModel (fp64): {diff:.3e}")
    assert diff <= 1e-12


def test_parameter_names_are_diffusers_and_animatediff() -> None:
    model = DenoisingUNet(**tiny_denoising_config(motion=True))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    spatial = {k: tuple(v.shape) for k, v in UNet2DConditionModel(**TINY_UNET).state_dict().items()}
    motion = animatediff_checkpoint_shapes(
        TINY_UNET["block_out_channels"], TINY_UNET["layers_per_block"], TINY_MOTION["max_position"]
    )
    assert ours == {**spatial, **motion}


def test_full_size_layout_matches_sd15_and_mm_sd_v15_v2() -> None:
    with torch.device("meta"):
        model = DenoisingUNet.from_config(sd15_denoising_unet_config())
        sd15 = UNet2DConditionModel(
            **{k: v for k, v in sd15_denoising_unet_config().items() if k != "motion_module"}
        )
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in sd15.state_dict().items()}
    expected.update(animatediff_checkpoint_shapes([320, 640, 1280, 1280], 2, 32))
    assert ours == expected
    motion_params = sum(p.numel() for _, p in model.named_motion_module_parameters())
    assert motion_params == 453_209_280  # mm_sd_v15_v2: 1.81 GB of fp32 weights besides the positional tables


def test_zero_initialised_motion_modules_leave_the_output_unchanged() -> None:
    plain, _ = _pair(motion=False)
    with_motion, _ = _pair(motion=True)
    sample, timesteps, context = video_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            with_motion(sample, timesteps, context).sample,
            plain(sample, timesteps, context).sample,
            rtol=0,
            atol=0,
        )


def test_motion_modules_mix_information_across_frames() -> None:
    plain, _ = _pair(motion=False)
    moving, _ = _pair(motion=True)
    randomize_(moving, seed=7, only="motion_modules")
    sample, timesteps, context = video_inputs(batch=1, frames=3)
    changed = sample.clone()
    changed[:, :, 0] += torch.randn(changed[:, :, 0].shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain_a, plain_b = plain(sample, timesteps, context).sample, plain(changed, timesteps, context).sample
        moving_a, moving_b = (
            moving(sample, timesteps, context).sample,
            moving(changed, timesteps, context).sample,
        )
    assert (moving_a - plain_a).abs().max() > 1e-2  # non-zero proj_out changes the output
    # Without motion modules frames are independent: frame 1 does not see frame 0's change.
    torch.testing.assert_close(plain_a[:, :, 1:], plain_b[:, :, 1:], rtol=0, atol=0)
    assert (plain_a[:, :, 0] - plain_b[:, :, 0]).abs().max() > 1e-2
    # With them, it does.
    assert (moving_a[:, :, 1] - moving_b[:, :, 1]).abs().max() > 1e-3


def _naive_motion_module(
    module: MotionModule, x: torch.Tensor, frames: int, heads: int, groups: int
) -> torch.Tensor:
    """AnimateDiff's VanillaTemporalModule written out step by step from its state dict."""
    sd = {k.removeprefix("temporal_transformer."): v for k, v in module.state_dict().items()}
    bf, c, h, w = x.shape
    b = bf // frames
    y = F.group_norm(x, groups, sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    y = y.permute(0, 2, 3, 1).reshape(bf, h * w, c)  # (b f) (h w) c
    y = F.linear(y, sd["proj_in.weight"], sd["proj_in.bias"])
    blk = "transformer_blocks.0."
    for a in range(2):
        att = f"{blk}attention_blocks.{a}."
        n = F.layer_norm(y, (c,), sd[f"{blk}norms.{a}.weight"], sd[f"{blk}norms.{a}.bias"])
        n = n.reshape(b, frames, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, frames, c)  # (b d) f c
        n = n + sd[f"{att}pos_encoder.pe"][:, :frames]
        q, k, v = (F.linear(n, sd[f"{att}{p}.weight"]) for p in ("to_q", "to_k", "to_v"))
        d = c // heads
        outs = []
        for i in range(heads):
            qi, ki, vi = (t[..., i * d : (i + 1) * d] for t in (q, k, v))
            weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
            outs.append(weights @ vi)
        o = F.linear(torch.cat(outs, dim=-1), sd[f"{att}to_out.0.weight"], sd[f"{att}to_out.0.bias"])
        o = o.reshape(b, h * w, frames, c).permute(0, 2, 1, 3).reshape(bf, h * w, c)  # (b f) d c
        y = y + o
    n = F.layer_norm(y, (c,), sd[f"{blk}ff_norm.weight"], sd[f"{blk}ff_norm.bias"])
    hidden, gate = F.linear(n, sd[f"{blk}ff.net.0.proj.weight"], sd[f"{blk}ff.net.0.proj.bias"]).chunk(
        2, dim=-1
    )
    y = y + F.linear(hidden * F.gelu(gate), sd[f"{blk}ff.net.2.weight"], sd[f"{blk}ff.net.2.bias"])
    y = F.linear(y, sd["proj_out.weight"], sd["proj_out.bias"])
    return y.reshape(bf, h, w, c).permute(0, 3, 1, 2) + x


def test_motion_module_math_equals_animatediff() -> None:
    config = MotionModuleConfig(num_attention_heads=2, max_position=8)
    module = randomize_(MotionModule(8, config, norm_num_groups=4), seed=5).eval()
    frames = 4
    x = torch.randn(2 * frames, 8, 3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            module(x, frames), _naive_motion_module(module, x, frames, 2, 4), rtol=1e-5, atol=1e-5
        )


def test_positional_table_is_animatediffs_sinusoid() -> None:
    dim, length = 16, 32
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    expected = torch.zeros(1, length, dim)
    expected[0, :, 0::2] = torch.sin(position * div_term)
    expected[0, :, 1::2] = torch.cos(position * div_term)
    torch.testing.assert_close(sinusoidal_table(length, dim), expected, rtol=0, atol=1e-5)


def test_too_many_frames_is_a_clear_error() -> None:
    model, _ = _pair(motion=True)
    sample, timesteps, context = video_inputs(batch=1, frames=TINY_MOTION["max_position"] + 1)
    with pytest.raises(ValueError, match="exceed the motion module's max_position 8"):
        model(sample, timesteps, context)


def _pose_residuals(
    model: DenoisingUNet, sample: torch.Tensor, seed: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random residuals shaped like the tensors at AniPortrait's injection points."""
    gen = torch.Generator().manual_seed(seed)
    b, _, f, h, w = sample.shape
    channels = TINY_UNET["block_out_channels"]
    shapes = [(channels[0], h, w)]
    for i, c in enumerate(channels):
        if i < len(channels) - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
        shapes.append((c, h, w))
    down = [torch.randn(b, c, f, hh, ww, generator=gen) for c, hh, ww in shapes]
    mid = torch.randn(b, channels[-1], f, h, w, generator=gen)
    return down, mid


def test_pose_residuals_enter_at_aniportraits_points() -> None:
    model, reference = _pair(motion=False)
    sample, timesteps, context = video_inputs(batch=2, frames=2)
    down, mid = _pose_residuals(model, sample, seed=4)
    folded = [fold(t) for t in down]
    # AniPortrait (unet_3d.py): conv_in output += entry 0 (the first skip carries it); each down block's
    # passed-on sample += entry i + 1 after the block returned its skips; mid block output += mid.
    hooks = [reference.conv_in.register_forward_hook(lambda m, i, out: out + folded[0])]
    for k, block in enumerate(reference.down_blocks):
        hooks.append(block.register_forward_hook(lambda m, i, out, k=k: (out[0] + folded[k + 1], out[1])))
    hooks.append(reference.mid_block.register_forward_hook(lambda m, i, out: out + fold(mid)))
    with torch.no_grad():
        theirs = _diffusers_on_frames(reference, sample, timesteps, context)
        ours = model(
            sample, timesteps, context, down_block_res_samples=tuple(down), mid_block_res_sample=mid
        ).sample
        plain = model(sample, timesteps, context).sample
        zeros = model(
            sample, timesteps, context, down_block_res_samples=tuple(torch.zeros_like(t) for t in down)
        ).sample
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-2
    torch.testing.assert_close(zeros, plain, rtol=0, atol=0)


def test_bad_pose_residuals_are_refused() -> None:
    model, _ = _pair(motion=False)
    sample, timesteps, context = video_inputs(batch=1, frames=2)
    down, _ = _pose_residuals(model, sample, seed=0)
    with pytest.raises(ValueError, match="must hold 4 tensors"):
        model(sample, timesteps, context, down_block_res_samples=tuple(down[:-1]))
    with torch.no_grad():  # the mid residual alone is allowed
        mid_only = model(sample, timesteps, context, mid_block_res_sample=torch.ones(1, 16, 2, 2, 2)).sample
        assert (mid_only - model(sample, timesteps, context).sample).abs().max() > 1e-3
    down[2] = down[2][..., :1]
    with pytest.raises(ValueError, match=r"down_block_res_samples\[2\] \(after down block 1\)"):
        model(sample, timesteps, context, down_block_res_samples=tuple(down))


def test_timestep_forms_and_tuple_output() -> None:
    model, _ = _pair(motion=True)
    sample, _, context = video_inputs(batch=2, frames=2)
    with torch.no_grad():
        a = model(sample, 500, context).sample
        b = model(sample, torch.tensor(500), context).sample
        (c,) = model(sample, torch.tensor([500, 500]), context, return_dict=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        model(sample, 500, context[:1])


def _loss_and_grads(denoiser, ref_unet, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sample, timesteps, context = video_inputs(batch=2, frames=2, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    ref_latents = torch.randn(2, 4, 8, 8, generator=gen)
    bank = ref_unet.compute_reference_hidden_states(ref_latents, context)
    down, mid = _pose_residuals(denoiser, sample, seed=seed + 2)
    out = denoiser(
        sample,
        timesteps,
        context,
        reference_hidden_states=bank,
        down_block_res_samples=tuple(down),
        mid_block_res_sample=mid,
    ).sample
    loss = (out * torch.randn(out.shape, generator=gen)).sum()
    loss.backward()
    grads = {f"denoiser.{n}": p.grad.clone() for n, p in denoiser.named_parameters() if p.grad is not None}
    grads.update(
        {f"reference.{n}": p.grad.clone() for n, p in ref_unet.named_parameters() if p.grad is not None}
    )
    return loss.detach(), grads


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    denoiser = randomize_(DenoisingUNet(**tiny_denoising_config(motion=True)), seed=11).train()
    ref_unet = randomize_(ReferenceUNet(**TINY_UNET), seed=12).train()
    loss, grads = _loss_and_grads(denoiser, ref_unet, seed=0)

    denoiser_ckpt, ref_ckpt = copy.deepcopy(denoiser), copy.deepcopy(ref_unet)
    denoiser_ckpt.zero_grad(set_to_none=True)
    ref_ckpt.zero_grad(set_to_none=True)
    denoiser_ckpt.enable_gradient_checkpointing()
    ref_ckpt.enable_gradient_checkpointing()
    assert denoiser_ckpt.is_gradient_checkpointing
    assert all(
        b.gradient_checkpointing
        for b in [*denoiser_ckpt.down_blocks, denoiser_ckpt.mid_block, *denoiser_ckpt.up_blocks]
    )
    loss_ckpt, grads_ckpt = _loss_and_grads(denoiser_ckpt, ref_ckpt, seed=0)

    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-5)
    assert grads_ckpt.keys() == grads.keys()
    assert any(".motion_modules." in k for k in grads) and any(k.startswith("reference.") for k in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_freezing_by_stage() -> None:
    model = DenoisingUNet(**tiny_denoising_config(motion=True))
    motion = {n for n, _ in model.named_motion_module_parameters()}
    spatial = {n for n, _ in model.named_2d_parameters()}
    assert motion and spatial and not motion & spatial
    assert motion | spatial == {n for n, _ in model.named_parameters()}
    assert all(".motion_modules." in n for n in motion)

    model.set_2d_trainable(False)  # stage 2: only the motion modules learn
    model.set_motion_modules_trainable(True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == motion
    model.set_2d_trainable(True)  # stage 1: the image UNet learns, motion modules frozen
    model.set_motion_modules_trainable(False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == spatial
    assert not DenoisingUNet(**tiny_denoising_config(motion=False)).has_motion_modules


@pytest.mark.slow
def test_full_size_models_run_together() -> None:
    """SD1.5-sized ReferenceUNet + DenoisingUNet with AnimateDiff v2 motion modules (random weights, ~9 GB RAM)."""
    from lmk2video.models.sd15 import sd15_unet_config

    torch.manual_seed(0)
    denoiser = DenoisingUNet.from_config(sd15_denoising_unet_config()).eval()
    ref_unet = ReferenceUNet.from_config(sd15_unet_config()).eval()
    sample = torch.randn(1, 4, 2, 16, 16)
    context = torch.randn(1, 1, 768)
    with torch.no_grad():
        bank = ref_unet.compute_reference_hidden_states(torch.randn(1, 4, 16, 16), context)
        out = denoiser(sample, 999, context, reference_hidden_states=bank).sample
    assert len(bank) == 16  # SD1.5's self-attentions: 6 down, 1 mid, 9 up
    assert out.shape == sample.shape and torch.isfinite(out).all()
