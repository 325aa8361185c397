"""Audio2Pose: speech -> per-frame head pose, an autoregressive transformer decoder.

Each frame's input is the previous frame's pose (the initial pose, zeros by default, before the
first frame) embedded by ``pose_in``, plus an optional sinusoidal position code, plus a learned
style embedding (one of ``num_styles``). A stack of :class:`~audio2lmk.models.pose_decoder.
PoseDecoderLayer` (ALiBi causal self-attention, cross-attention to the per-frame audio features)
and ``pose_out`` give the frame's pose: 6 numbers, XYZ Euler degrees + translation, relative to
the first frame of the training clips (AniPortrait's convention; ``common.geometry.
relative_to_absolute`` places them on a reference pose).

Training uses :meth:`Audio2PoseModel.forward` with teacher forcing (:func:`shift_poses`);
inference uses :meth:`Audio2PoseModel.generate`, which decodes frame by frame with a key/value
cache. Both compute the same function: each layer's frame ``i`` attends to that layer's frames
``i - attention_span + 1 .. i`` and to the audio frames within ``cross_attention_window`` of
``i`` (so the output depends on the last ``num_layers * (attention_span - 1) + 1`` inputs).
Decoding is continuous over the whole clip (no chunks, no restarts): the ALiBi bias depends only
on distances, and each layer's cache keeps its last ``attention_span`` keys/values, so the cost
per frame is constant and the total time linear in length.

Positional encoding. ``"none"`` (default): ALiBi alone, which makes every frame the same function
of its window at any position - the setting for training our own models. ``"sinusoidal"``:
AniPortrait's ``PositionalEncoding`` added to the inputs, evaluated by its formula at the absolute
frame index. Its released checkpoint tabulated 600 positions (and was trained on clips of a few
seconds); beyond that the formula extrapolates smoothly (no crash, no seam), but those positions
are outside what the checkpoint was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from audio2lmk.encoders import DEFAULT_WAV2VEC2, build_audio_encoder
from audio2lmk.models.pose_decoder import (
    KVCache,
    PoseDecoderLayer,
    alibi_slopes,
    band_bias,
    causal_alibi_bias,
)
from common.audio import num_frames_for
from common.weights import StrictLoadMixin

POSITIONAL_ENCODINGS = ("none", "sinusoidal")


def shift_poses(poses: torch.Tensor, initial_pose: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forcing inputs: ``poses`` (B, T, P) shifted right by one frame, ``initial_pose`` first.

    ``initial_pose`` is ``(P,)`` or ``(B, P)``; default zeros (AniPortrait's start).
    """
    first = torch.zeros_like(poses[:, :1])
    if initial_pose is not None:
        first = first + initial_pose.to(poses).reshape(-1, 1, poses.shape[-1])
    return torch.cat([first, poses[:, :-1]], dim=1)


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal codes ``(L, dim)`` at integer ``positions`` (L,), computed in float32 exactly like
    AniPortrait's ``PositionalEncoding`` table (sin on even channels, cos on odd)."""
    div = torch.exp(torch.arange(0, dim, 2, device=positions.device).float() * -(math.log(10000.0) / dim))
    angles = positions.float()[:, None] * div
    table = torch.zeros(positions.shape[0], dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class Audio2PoseModel(StrictLoadMixin, ModelMixin, ConfigMixin):
    """Audio encoder + autoregressive pose decoder.

    Args:
        encoder: audio encoder config (see :class:`~audio2lmk.models.audio2mesh.Audio2MeshModel`).
        hidden_size: decoder width ``D`` (AniPortrait: 512).
        num_layers: decoder layers (8).
        num_heads: attention heads (8).
        ffn_dim: feed-forward width (``2 * hidden_size`` = 1024).
        dropout: dropout of attention weights, residual branches and the feed-forward block (0.1).
        activation: feed-forward activation (``"relu"``).
        pose_dim: pose numbers per frame (6).
        num_styles: learned style embeddings (100).
        positional_encoding: ``"none"`` (ALiBi only) or ``"sinusoidal"`` (AniPortrait).
        attention_span: frames each frame attends to, itself included; ``None`` = the whole
            prefix. AniPortrait's biased mask covers 600 frames.
        cross_attention_window: audio frames either side each frame attends to; 0 = its own
            audio frame only (AniPortrait's alignment mask).
        fps: video frame rate; sets the default frame count of an audio clip.
    """

    @register_to_config
    def __init__(
        self,
        encoder: Mapping[str, Any] | None = None,
        hidden_size: int = 512,
        num_layers: int = 8,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pose_dim: int = 6,
        num_styles: int = 100,
        positional_encoding: str = "none",
        attention_span: int | None = 600,
        cross_attention_window: int = 0,
        fps: float = 30.0,
    ) -> None:
        super().__init__()
        if positional_encoding not in POSITIONAL_ENCODINGS:
            raise ValueError(
                f"positional_encoding must be one of {POSITIONAL_ENCODINGS}, got {positional_encoding!r}"
            )
        if attention_span is not None and attention_span < 1:
            raise ValueError(f"attention_span must be >= 1 or None, got {attention_span}")
        if cross_attention_window < 0:
            raise ValueError(f"cross_attention_window must be >= 0, got {cross_attention_window}")
        self.audio_encoder = build_audio_encoder(
            encoder if encoder is not None else {"type": "wav2vec2", "pretrained": DEFAULT_WAV2VEC2}
        )
        self.register_to_config(encoder=self.audio_encoder.to_config())
        self.audio_proj = nn.Linear(self.audio_encoder.output_dim, hidden_size)
        self.pose_in = nn.Linear(pose_dim, hidden_size)
        self.style_embedding = nn.Embedding(num_styles, hidden_size)
        self.layers = nn.ModuleList(
            PoseDecoderLayer(hidden_size, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers)
        )
        self.pose_out = nn.Linear(hidden_size, pose_dim)
        self.register_buffer("alibi_slopes", alibi_slopes(num_heads), persistent=False)

    # ------------------------------------------------------------------ pieces

    def num_frames(self, num_samples: int) -> int:
        """Frames covered by ``num_samples`` 16 kHz samples at the model's fps (rounded up)."""
        return num_frames_for(num_samples, self.config.fps, self.audio_encoder.sample_rate)

    def freeze_feature_encoder(self) -> None:
        """Freeze the audio encoder's frame-local front end (wav2vec2's CNN)."""
        self.audio_encoder.freeze_feature_encoder()

    def encode_audio(
        self, audio: torch.Tensor, num_frames: int | None = None, phones: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Audio ``(B, N)`` 16 kHz (and its phone ids, if known) -> decoder memory ``(B, T, hidden_size)``."""
        frames = self.num_frames(audio.shape[1]) if num_frames is None else int(num_frames)
        return self.audio_proj(self.audio_encoder.encode(audio, frames, phones))

    def draw_style(self, batch_size: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Style ids ``(batch_size,)`` drawn uniformly from ``generator`` (the seed decides the style)."""
        device = generator.device if generator is not None else torch.device("cpu")
        ids = torch.randint(self.config.num_styles, (batch_size,), generator=generator, device=device)
        return ids.to(self.device)

    def _style_ids(self, style: Any, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        if style is None:
            return self.draw_style(batch_size, generator)
        ids = torch.as_tensor(style, dtype=torch.long, device=self.device).reshape(-1)
        if ids.numel() == 1:
            ids = ids.expand(batch_size)
        if ids.numel() != batch_size:
            raise ValueError(f"got {ids.numel()} style ids for a batch of {batch_size}")
        if (ids < 0).any() or (ids >= self.config.num_styles).any():
            raise ValueError(f"style ids must lie in [0, {self.config.num_styles}), got {ids.tolist()}")
        return ids

    def _inputs(self, pose_prev: torch.Tensor, style_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Decoder inputs ``(B, L, D)`` for previous poses ``(B, L, P)`` starting at frame ``offset``."""
        x = self.pose_in(pose_prev) + self.style_embedding(style_ids)[:, None]
        if self.config.positional_encoding == "sinusoidal":
            positions = torch.arange(offset, offset + pose_prev.shape[1], device=x.device)
            x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        return x

    # ------------------------------------------------------------------ full-sequence decoding

    def decode(
        self,
        memory: torch.Tensor,
        pose_prev: torch.Tensor,
        style_ids: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """All frames at once: memory ``(B, S, D)``, previous poses ``(B, L, P)`` (L <= S), style ids
        ``(B,)`` -> poses ``(B, L, P)``. Causal: frame ``i`` uses ``pose_prev[:, : i + 1]``.

        ``memory_kv``: the layers' projected memory (``cross_attn.project_memory``), if precomputed.
        """
        length, frames = pose_prev.shape[1], memory.shape[1]
        if length > frames:
            raise ValueError(f"{length} pose frames but only {frames} audio frames")
        self_bias = causal_alibi_bias(self.alibi_slopes, length, length, self.config.attention_span)
        cross_bias = band_bias(self.alibi_slopes, length, frames, self.config.cross_attention_window)
        if memory_kv is None:
            memory_kv = [layer.cross_attn.project_memory(memory) for layer in self.layers]
        x = self._inputs(pose_prev, style_ids)
        for layer, kv in zip(self.layers, memory_kv):
            x = layer(x, self_bias, kv, cross_bias)
        return self.pose_out(x)

    def forward(
        self,
        audio: torch.Tensor,
        pose_prev: torch.Tensor,
        style_ids: torch.Tensor,
        phones: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced training pass.

        Args:
            audio: ``(B, N)`` 16 kHz waveforms covering the ``T`` frames.
            pose_prev: ``(B, T, P)`` previous-frame poses, ``shift_poses(target, initial_pose)``.
            style_ids: ``(B,)`` long style ids (e.g. one per training speaker or clip).
            phones: the audio's phone ids for a phoneme encoder, if known.

        Returns:
            ``(B, T, P)`` predicted poses.
        """
        memory = self.encode_audio(audio, pose_prev.shape[1], phones)
        return self.decode(memory, pose_prev, style_ids.to(memory.device))

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        audio: torch.Tensor | None = None,
        *,
        memory: torch.Tensor | None = None,
        num_frames: int | None = None,
        style: int | Sequence[int] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        initial_pose: torch.Tensor | None = None,
        use_cache: bool = True,
        phones: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate poses autoregressively for a whole clip, any length from one frame up.

        Args:
            audio: ``(B, N)`` 16 kHz waveforms (or give ``memory`` from :meth:`encode_audio`).
            memory: precomputed ``(B, T, D)`` decoder memory.
            num_frames: frames to generate from ``audio``; default :meth:`num_frames` of ``N``.
            style: style id(s); ``None`` draws one per batch item from ``generator``/``seed``.
            generator, seed: randomness for the style draw (``seed`` builds a CPU generator).
            initial_pose: ``(P,)`` or ``(B, P)`` pose before the first frame; default zeros.
            use_cache: decode with the key/value cache (linear time). ``False`` recomputes the
                whole prefix for every frame (quadratic; the reference the cache must equal).
            phones: the audio's phone ids for a phoneme encoder, if known.

        Returns:
            ``(B, T, P)`` poses. Dropout is off during generation whatever the module's mode.
        """
        if (audio is None) == (memory is None):
            raise ValueError("give exactly one of `audio` or `memory`")
        was_training = self.training
        self.eval()
        try:
            if memory is None:
                memory = self.encode_audio(audio, num_frames, phones)
            if seed is not None:
                generator = torch.Generator().manual_seed(int(seed))
            batch, frames = memory.shape[0], memory.shape[1]
            if frames < 1:
                raise ValueError("nothing to generate: the audio covers no video frame")
            style_ids = self._style_ids(style, batch, generator)
            prev = torch.zeros(batch, 1, self.config.pose_dim, device=memory.device, dtype=memory.dtype)
            if initial_pose is not None:
                prev = prev + initial_pose.to(prev).reshape(-1, 1, self.config.pose_dim)
            if use_cache:
                return self._generate_cached(memory, style_ids, prev, frames)
            return self._generate_recomputed(memory, style_ids, prev, frames)
        finally:
            self.train(was_training)

    def _generate_cached(
        self, memory: torch.Tensor, style_ids: torch.Tensor, prev: torch.Tensor, frames: int
    ) -> torch.Tensor:
        span, window = self.config.attention_span, self.config.cross_attention_window
        capacity = frames if span is None or frames <= 2 * span else 2 * span
        caches = [KVCache(span, capacity) for _ in self.layers]
        slopes = self.alibi_slopes[:, None, None]
        # Self-attention bias of the visible keys, oldest first (distances n-1 .. 0; sliced per step).
        longest = frames if span is None else min(span, frames)
        self_bias = -slopes * torch.arange(longest - 1, -1, -1, device=memory.device, dtype=slopes.dtype)
        if window == 0:  # aligned: the cross-attention output of every frame, computed at once
            cross = [layer.cross_attn.aligned(memory) for layer in self.layers]
        else:
            cross = [layer.cross_attn.project_memory(memory) for layer in self.layers]
            # Cross-attention bias for audio offsets -window .. window.
            offsets = torch.arange(-window, window + 1, device=memory.device)
            cross_bias = -slopes * offsets.abs().to(slopes.dtype)
        outputs = []
        for t in range(frames):
            x = self._inputs(prev, style_ids, offset=t)
            if window == 0:
                for layer, cache, out in zip(self.layers, caches, cross):
                    x = layer(x, self_bias, cache=cache, cross_out=out[:, t : t + 1])
            else:
                lo, hi = max(0, t - window), min(frames, t + window + 1)
                step_bias = cross_bias[..., lo - t + window : hi - t + window]
                for layer, cache, (k, v) in zip(self.layers, caches, cross):
                    x = layer(x, self_bias, (k[:, :, lo:hi], v[:, :, lo:hi]), step_bias, cache)
            prev = self.pose_out(x)
            outputs.append(prev)
        return torch.cat(outputs, dim=1)

    def _generate_recomputed(
        self, memory: torch.Tensor, style_ids: torch.Tensor, prev: torch.Tensor, frames: int
    ) -> torch.Tensor:
        pose_prev = prev
        memory_kv = [layer.cross_attn.project_memory(memory) for layer in self.layers]
        outputs = []
        for t in range(frames):
            out = self.decode(memory, pose_prev, style_ids, memory_kv)[:, -1:]
            outputs.append(out)
            if t + 1 < frames:
                pose_prev = torch.cat([pose_prev, out], dim=1)
        return torch.cat(outputs, dim=1)
