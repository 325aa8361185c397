"""Tiny lmk2video UNet configs, seeded weights and inputs shared by the lmk2video UNet tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Three blocks: a cross-attention block that downsamples, a second one, and a plain last block, as SD1.5
# has (3 cross-attention blocks + a plain one) but at 8-16 channels. 8x8 latents reach 2x2 at the bottom.
TINY_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 2,
    "norm_num_groups": 4,
    "cross_attention_dim": 8,
    "attention_head_dim": 2,
}
TINY_MOTION: dict[str, Any] = {"num_attention_heads": 2, "max_position": 8}


def tiny_denoising_config(motion: bool = True, **overrides: Any) -> dict[str, Any]:
    return {**TINY_UNET, "motion_module": dict(TINY_MOTION) if motion else None, **overrides}


def randomize_(module: nn.Module, seed: int, std: float = 0.2, only: str | None = None) -> nn.Module:
    """Overwrite parameters with seeded noise (norm scales near 1), so no layer is an identity or zero.

    ``only``: restrict to parameters whose name contains this string.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = (nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if only is not None and only not in full:
                    continue
                noise = torch.randn(p.shape, generator=gen) * std
                if isinstance(mod, norms) and p_name == "weight":
                    noise = 1.0 + noise * 0.5
                p.copy_(noise)
    return module


def video_inputs(
    batch: int = 2, frames: int = 3, size: tuple[int, int] = (8, 8), seed: int = 0, tokens: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (sample (B, 4, F, H, W), timesteps (B,), encoder_hidden_states (B, tokens, 8))."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, *size, generator=gen)
    timesteps = torch.randint(0, 1000, (batch,), generator=gen)
    context = torch.randn(batch, tokens, TINY_UNET["cross_attention_dim"], generator=gen)
    return sample, timesteps, context


def fold(video: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frame index fastest."""
    b, c, f, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold(frames: torch.Tensor, batch: int) -> torch.Tensor:
    bf, c, h, w = frames.shape
    return frames.reshape(batch, bf // batch, c, h, w).permute(0, 2, 1, 3, 4)


def animatediff_motion_module_shapes(
    prefix: str, channels: int, max_position: int
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of one AnimateDiff v2 ``VanillaTemporalModule`` (1 transformer block, 2 temporal
    self-attentions, positional encoding), written out from AnimateDiff's ``motion_module.py``
    independently of lmk2video's implementation."""
    c = channels
    t = f"{prefix}.temporal_transformer"
    shapes = {
        f"{t}.norm.weight": (c,),
        f"{t}.norm.bias": (c,),
        f"{t}.proj_in.weight": (c, c),
        f"{t}.proj_in.bias": (c,),
        f"{t}.proj_out.weight": (c, c),
        f"{t}.proj_out.bias": (c,),
    }
    block = f"{t}.transformer_blocks.0"
    for a in range(2):
        attn = f"{block}.attention_blocks.{a}"
        for proj in ("to_q", "to_k", "to_v"):
            shapes[f"{attn}.{proj}.weight"] = (c, c)
        shapes[f"{attn}.to_out.0.weight"] = (c, c)
        shapes[f"{attn}.to_out.0.bias"] = (c,)
        shapes[f"{attn}.pos_encoder.pe"] = (1, max_position, c)
        shapes[f"{block}.norms.{a}.weight"] = (c,)
        shapes[f"{block}.norms.{a}.bias"] = (c,)
    shapes[f"{block}.ff.net.0.proj.weight"] = (8 * c, c)
    shapes[f"{block}.ff.net.0.proj.bias"] = (8 * c,)
    shapes[f"{block}.ff.net.2.weight"] = (c, 4 * c)
    shapes[f"{block}.ff.net.2.bias"] = (c,)
    shapes[f"{block}.ff_norm.weight"] = (c,)
    shapes[f"{block}.ff_norm.bias"] = (c,)
    return shapes


def animatediff_checkpoint_shapes(
    block_out_channels: list[int], layers_per_block: int, max_position: int, mid_block: bool = True
) -> dict[str, tuple[int, ...]]:
    """All motion-module keys of an AnimateDiff v2 (``mm_sd_v15_v2``-layout) checkpoint for a UNet."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(block_out_channels):
        for j in range(layers_per_block):
            shapes.update(
                animatediff_motion_module_shapes(f"down_blocks.{i}.motion_modules.{j}", c, max_position)
            )
    if mid_block:
        shapes.update(
            animatediff_motion_module_shapes(
                "mid_block.motion_modules.0", block_out_channels[-1], max_position
            )
        )
    for i, c in enumerate(reversed(block_out_channels)):
        for j in range(layers_per_block + 1):
            shapes.update(
                animatediff_motion_module_shapes(f"up_blocks.{i}.motion_modules.{j}", c, max_position)
            )
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.2 for k, s in shapes.items()}


def assert_weights_equal(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``expected`` is bit-identical in ``module``'s state dict."""
    state = module.state_dict()
    missing = sorted(set(expected) - set(state))
    assert not missing, f"keys absent from the module: {missing[:5]}"
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
