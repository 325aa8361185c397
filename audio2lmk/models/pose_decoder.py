"""Transformer decoder blocks for Audio2Pose: ALiBi causal self-attention with a sliding KV cache,
banded cross-attention to per-frame audio features.

Self-attention. Query frame ``i`` attends to frames ``j`` with ``0 <= i - j < span`` and adds the
ALiBi bias ``-slope_h * (i - j)`` (slopes of Press et al.; the same as AniPortrait's
``init_biased_mask`` with ``period=1``). The bias depends only on the distance, so frame ``i``'s
attention is the same function of its last ``span`` inputs at any absolute position: decoding
runs continuously at any length with a cache of at most ``span`` keys/values per layer (constant
memory, linear time). ``span=None`` attends to the whole prefix (cost then grows quadratically).

Cross-attention. Frame ``i`` attends to audio frames ``j`` with ``|i - j| <= window`` and bias
``-slope_h * |i - j|``. ``window=0`` is AniPortrait's alignment mask (``enc_dec_mask``): each
frame sees only its own audio frame, so the attention weight is exactly 1 and the output is the
projected value of that frame. Keys/values of the audio are computed once per clip.

Layer layout is PyTorch's ``nn.TransformerDecoderLayer`` with ``norm_first=False`` (post-norm),
which AniPortrait uses: ``x = norm(x + drop(self_attn(x)))``, then the same for cross-attention
and the feed-forward block ``ffn_out(drop(act(ffn_in(x))))``.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.activations import get_activation
from torch import nn
from torch.nn import functional as F


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes ``(num_heads,)``: a geometric sequence starting at ``2**(-8 / n)``.

    For a head count that is not a power of two, the slopes of the next lower power of two are
    followed by every other slope of the next higher one (ALiBi's published recipe, also
    AniPortrait's).
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        lower = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(lower) + alibi_slopes(2 * lower).tolist()[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def causal_alibi_bias(
    slopes: torch.Tensor, num_queries: int, num_keys: int, span: int | None, query_offset: int = 0
) -> torch.Tensor:
    """Additive self-attention bias ``(H, Lq, Lk)``: ALiBi inside the causal span, ``-inf`` outside.

    Query ``i`` sits at position ``query_offset + i``, key ``j`` at position ``j``.
    """
    q = torch.arange(num_queries, device=slopes.device)[:, None] + query_offset
    k = torch.arange(num_keys, device=slopes.device)[None, :]
    distance = (q - k).to(slopes.dtype)
    allowed = distance >= 0
    if span is not None:
        allowed &= distance < span
    bias = -slopes[:, None, None] * distance
    return bias.masked_fill(~allowed, float("-inf"))


def band_bias(slopes: torch.Tensor, num_queries: int, num_keys: int, window: int) -> torch.Tensor:
    """Additive cross-attention bias ``(H, Lq, Lk)``: ``-slope * |i - j|`` for ``|i - j| <= window``."""
    q = torch.arange(num_queries, device=slopes.device)[:, None]
    k = torch.arange(num_keys, device=slopes.device)[None, :]
    distance = (q - k).abs().to(slopes.dtype)
    bias = -slopes[:, None, None] * distance
    return bias.masked_fill(distance > window, float("-inf"))


class KVCache:
    """Keys and values of the last ``span`` frames of one layer, in a buffer of fixed capacity.

    Appending is amortised O(1): when the buffer is full, its last ``span - 1`` entries move to the
    front (one copy every ``capacity - span + 1`` steps); a buffer smaller than the span (or any
    buffer when the span is unbounded) doubles instead.
    """

    def __init__(self, span: int | None, capacity: int) -> None:
        self.span = span
        self.capacity = max(1, capacity)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one frame's ``(B, H, 1, Dh)`` key/value; return the visible ``(B, H, L, Dh)`` window."""
        if self.keys is None or self.values is None:
            shape = (*key.shape[:2], self.capacity, key.shape[-1])
            self.keys, self.values = key.new_empty(shape), value.new_empty(shape)
        if self.length == self.capacity:
            if self.span is None or self.capacity < self.span:  # grow the buffer
                self.keys = torch.cat([self.keys, torch.empty_like(self.keys)], dim=2)
                self.values = torch.cat([self.values, torch.empty_like(self.values)], dim=2)
                self.capacity *= 2
            else:  # keep the last span - 1 frames, which the new frame's window still sees
                keep = self.span - 1
                self.keys[:, :, :keep] = self.keys[:, :, self.length - keep :].clone()
                self.values[:, :, :keep] = self.values[:, :, self.length - keep :].clone()
                self.length = keep
        self.keys[:, :, self.length] = key[:, :, 0]
        self.values[:, :, self.length] = value[:, :, 0]
        self.length += 1
        start = 0 if self.span is None else max(0, self.length - self.span)
        return self.keys[:, :, start : self.length], self.values[:, :, start : self.length]


class AlibiSelfAttention(nn.Module):
    """Multi-head causal self-attention with ALiBi bias; packed ``to_qkv`` like ``nn.MultiheadAttention``."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.to_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.to_out = nn.Linear(hidden_size, hidden_size)
        nn.init.xavier_uniform_(self.to_qkv.weight)
        nn.init.zeros_(self.to_qkv.bias)
        nn.init.zeros_(self.to_out.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x`` (B, L, D); ``bias`` (H, L, L), or with ``cache`` (H, 1, cached length) for one step."""
        q, k, v = (self._heads(t) for t in self.to_qkv(x).chunk(3, dim=-1))
        if cache is not None:
            k, v = cache.append(k, v)
            bias = bias[..., -k.shape[2] :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
        )
        return self.to_out(out.transpose(1, 2).flatten(2))


class BandCrossAttention(nn.Module):
    """Multi-head attention from pose frames to audio frames within ``window`` frames."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.to_q = nn.Linear(hidden_size, hidden_size)
        self.to_kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.to_out = nn.Linear(hidden_size, hidden_size)
        nn.init.xavier_uniform_(self.to_q.weight)
        nn.init.xavier_uniform_(self.to_kv.weight)
        for linear in (self.to_q, self.to_kv, self.to_out):
            nn.init.zeros_(linear.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, H, S, Dh)`` of the audio features ``memory`` (B, S, D)."""
        k, v = self.to_kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def aligned(self, memory: torch.Tensor) -> torch.Tensor:
        """Output ``(B, S, D)`` for every frame when each attends only to its own audio frame.

        With one visible key the attention weight is exactly 1, so the output is the projected
        value of that frame whatever the query: what :meth:`forward` gives with ``window=0`` (in
        eval mode; training applies dropout to the weight), without the query and key work.
        """
        value = self.to_kv(memory).chunk(2, dim=-1)[1]
        return self.to_out(value)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` (B, L, D) against ``memory_kv`` (B, H, S, Dh) with ``bias`` (H, L, S)."""
        k, v = memory_kv
        q = self._heads(self.to_q(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
        )
        return self.to_out(out.transpose(1, 2).flatten(2))


class PoseDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, cross-attention, feed-forward (each + residual)."""

    def __init__(
        self, hidden_size: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.self_attn = AlibiSelfAttention(hidden_size, num_heads, dropout)
        self.cross_attn = BandCrossAttention(hidden_size, num_heads, dropout)
        self.ffn_in = nn.Linear(hidden_size, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, hidden_size)
        self.activation = get_activation(activation)
        self.norm_self = nn.LayerNorm(hidden_size)
        self.norm_cross = nn.LayerNorm(hidden_size)
        self.norm_ffn = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cross_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B, L, D) -> (B, L, D). With ``cache``, ``x`` is one new frame (L = 1).

        Cross-attention attends to ``memory_kv`` with ``cross_bias``, or, for aligned attention in
        inference, takes its precomputed output ``cross_out`` (B, L, D) (:meth:`BandCrossAttention.aligned`).
        """
        x = self.norm_self(x + self.dropout(self.self_attn(x, self_bias, cache)))
        if cross_out is None:
            if memory_kv is None or cross_bias is None:
                raise ValueError("give memory_kv and cross_bias, or cross_out")
            cross_out = self.cross_attn(x, memory_kv, cross_bias)
        x = self.norm_cross(x + self.dropout(cross_out))
        ffn = self.ffn_out(self.dropout(self.activation(self.ffn_in(x))))
        return self.norm_ffn(x + self.dropout(ffn))
