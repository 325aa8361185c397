"""AnimateDiff-style motion module: temporal self-attention across the frames of each pixel.

Parameter names follow AnimateDiff's ``VanillaTemporalModule`` exactly, so ``mm_sd_v15_v2.ckpt``
and AniPortrait's ``motion_module.pth`` load without renaming::

    temporal_transformer.norm                                    GroupNorm(C), eps 1e-6
    temporal_transformer.proj_in                                 Linear(C, C)
    temporal_transformer.transformer_blocks.{k}.attention_blocks.{a}.to_q / to_k / to_v   Linear, no bias
    temporal_transformer.transformer_blocks.{k}.attention_blocks.{a}.to_out.0            Linear
    temporal_transformer.transformer_blocks.{k}.attention_blocks.{a}.pos_encoder.pe      buffer (1, max_position, C)
    temporal_transformer.transformer_blocks.{k}.norms.{a}                                LayerNorm(C)
    temporal_transformer.transformer_blocks.{k}.ff.net.0.proj / ff.net.2                 GEGLU feed-forward
    temporal_transformer.transformer_blocks.{k}.ff_norm                                  LayerNorm(C)
    temporal_transformer.proj_out                                Linear(C, C), zero-initialised

Math (AnimateDiff v2): ``x + proj_out(blocks(proj_in(norm(x))))`` where each block runs, per
attention, ``h = h + attn(LN(h) + pe[:F])`` over the F frames of every spatial position, then
``h = h + ff(LN(h))``. The positional table is added to the normalised input of each attention
(queries, keys and values), not to the residual stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import nn

from common.errors import UserError

TEMPORAL_SELF = "Temporal_Self"
# CUDA's memory-efficient/flash SDPA kernels reject a batch dimension of 65536 or more in some
# PyTorch versions (pytorch/pytorch#146704); temporal attention batches B*H*W sequences.
_MAX_SDPA_BATCH = 32768


@dataclasses.dataclass(frozen=True)
class MotionModuleConfig:
    """Where motion modules go and how they are shaped. Defaults are AnimateDiff v2 (``mm_sd_v15_v2``).

    AnimateDiff names in brackets.

    - ``num_attention_heads`` [num_attention_heads]: heads of each temporal attention.
    - ``num_transformer_blocks`` [num_transformer_block]: temporal transformer blocks per module.
    - ``attention_block_types`` [attention_block_types]: one entry per attention in a block; only
      ``"Temporal_Self"`` exists in released checkpoints and is the only type supported.
    - ``positional_encoding`` [temporal_position_encoding]: add sinusoidal frame positions.
    - ``max_position`` [temporal_position_encoding_max_len]: longest clip (frames); 32 in v2, 24 in v1.
    - ``resolutions`` [motion_module_resolutions]: down block ``i`` gets modules when ``2**i`` is
      listed, up block ``i`` when ``2**(n-1-i)`` is listed (``n`` = number of blocks).
    - ``mid_block`` [motion_module_mid_block]: a module after the mid block's attention (v2: yes, v1: no).
    - ``decoder_only`` [motion_module_decoder_only]: no modules in the down blocks.
    - ``norm_num_groups``: GroupNorm groups of ``temporal_transformer.norm``; ``None`` takes the
      UNet's ``norm_num_groups`` (AnimateDiff hard-codes 32, which is SD1.5's value).
    """

    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    attention_block_types: tuple[str, ...] = (TEMPORAL_SELF, TEMPORAL_SELF)
    positional_encoding: bool = True
    max_position: int = 32
    resolutions: tuple[int, ...] = (1, 2, 4, 8)
    mid_block: bool = True
    decoder_only: bool = False
    norm_num_groups: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_block_types", tuple(self.attention_block_types))
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        bad = [t for t in self.attention_block_types if t != TEMPORAL_SELF]
        if bad or not self.attention_block_types:
            raise ValueError(
                f"attention_block_types must be a non-empty list of {TEMPORAL_SELF!r}, got {bad}"
            )
        if self.num_attention_heads < 1 or self.num_transformer_blocks < 1 or self.max_position < 1:
            raise ValueError("num_attention_heads, num_transformer_blocks and max_position must be >= 1")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | MotionModuleConfig) -> MotionModuleConfig:
        """Build from a plain dict (as stored in a model's ``config.json``); unknown keys are an error."""
        if isinstance(values, MotionModuleConfig):
            return values
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown motion_module config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["attention_block_types"] = list(self.attention_block_types)
        out["resolutions"] = list(self.resolutions)
        return out

    def in_down_block(self, index: int) -> bool:
        return not self.decoder_only and 2**index in self.resolutions

    def in_up_block(self, index: int, num_blocks: int) -> bool:
        return 2 ** (num_blocks - 1 - index) in self.resolutions


def sinusoidal_table(max_position: int, dim: int) -> torch.Tensor:
    """(1, max_position, dim) table: even channels ``sin(p * w_i)``, odd channels ``cos(p * w_i)``,
    ``w_i = 10000 ** (-2i / dim)``, ``p`` the frame index (the Transformer/AnimateDiff encoding)."""
    if dim % 2:
        raise ValueError(f"positional encoding needs an even channel count, got {dim}")
    position = torch.arange(max_position, dtype=torch.float32)[:, None]
    frequency = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = position * frequency[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(1, max_position, dim)


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table (persistent buffer ``pe``) to (N, F, C) inputs."""

    def __init__(self, dim: int, max_position: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_position, dim), persistent=True)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Recompute the table in place (after ``to_empty``)."""
        self.pe.copy_(sinusoidal_table(self.pe.shape[1], self.pe.shape[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(
                f"{frames} frames exceed the motion module's max_position {self.pe.shape[1]}; "
                "denoise in windows of at most that many frames"
            )
        return x + self.pe[:, :frames].to(x.dtype)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` on (N, heads, F, d), split along N for very large N on CUDA."""
    if query.device.type != "cuda" or query.shape[0] <= _MAX_SDPA_BATCH:
        return F.scaled_dot_product_attention(query, key, value)
    chunks = [
        F.scaled_dot_product_attention(q, k, v)
        for q, k, v in zip(
            query.split(_MAX_SDPA_BATCH), key.split(_MAX_SDPA_BATCH), value.split(_MAX_SDPA_BATCH)
        )
    ]
    return torch.cat(chunks)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention along the frame axis of (N, F, C) sequences (N = batch * pixels)."""

    def __init__(
        self, dim: int, num_heads: int, positional_encoding: bool, max_position: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"motion module channels {dim} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.pos_encoder = PositionalEncoding(dim, max_position) if positional_encoding else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        n, frames, dim = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, frames, heads, dim // heads).transpose(1, 2)

        out = _sdpa(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        out = out.transpose(1, 2).reshape(n, frames, dim)
        return self.to_out[1](self.to_out[0](out))


class TemporalTransformerBlock(nn.Module):
    """Pre-norm residual temporal attentions followed by a GEGLU feed-forward, on (N, F, C)."""

    def __init__(self, dim: int, config: MotionModuleConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalSelfAttention(
                dim, config.num_attention_heads, config.positional_encoding, config.max_position, dropout
            )
            for _ in config.attention_block_types
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in config.attention_block_types)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x))
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    """GroupNorm -> Linear -> temporal blocks -> Linear (zero-initialised) + residual."""

    def __init__(self, channels: int, config: MotionModuleConfig, norm_num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, config) for _ in range(config.num_transformer_blocks)
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B*F, C, H, W) with frames folded into the batch (frame index fastest) -> same shape."""
        bf, channels, height, width = hidden_states.shape
        if bf % num_frames:
            raise ValueError(f"batch {bf} is not a multiple of num_frames {num_frames}")
        batch = bf // num_frames
        x = self.norm(hidden_states)
        # (B, F, C, H*W) -> (B*H*W, F, C): one sequence of F frames per pixel. LayerNorm, the
        # feed-forward and the residuals are per token, so the whole transformer runs in this layout.
        x = x.reshape(batch, num_frames, channels, height * width).permute(0, 3, 1, 2)
        x = x.reshape(batch * height * width, num_frames, channels)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        x = self.proj_out(x)
        x = x.reshape(batch, height * width, num_frames, channels).permute(0, 2, 3, 1)
        return x.reshape(bf, channels, height, width) + hidden_states


class MotionModule(nn.Module):
    """One AnimateDiff ``VanillaTemporalModule``: holds ``temporal_transformer`` (key prefix)."""

    def __init__(self, channels: int, config: MotionModuleConfig, norm_num_groups: int) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, config, norm_num_groups)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B*F, C, H, W) -> (B*F, C, H, W); mixes information across the F frames of each sample."""
        return self.temporal_transformer(hidden_states, num_frames)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fresh initialisation: PyTorch defaults, sinusoidal tables, zero output projection (identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.LayerNorm | nn.GroupNorm | PositionalEncoding):
                module.reset_parameters()
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)


def positional_table_length(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Frame capacity of the positional tables in a motion-module state dict (None if it has none)."""
    for key, value in state_dict.items():
        if key.endswith("pos_encoder.pe"):
            return int(value.shape[1])
    return None


def is_positional_table(key: str) -> bool:
    """Whether ``key`` names a (deterministic) positional table buffer."""
    return key.endswith("pos_encoder.pe")
