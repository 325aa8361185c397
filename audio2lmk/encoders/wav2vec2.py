"""wav2vec 2.0 encoder with AniPortrait's frame-rate convention.

Pipeline for a clip of ``N`` samples and ``T`` video frames:

1. optional zero-mean / unit-variance normalisation of each waveform (what
   ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does for ``wav2vec2-base-960h``);
2. the CNN feature encoder (50 Hz for the base architecture);
3. linear resampling of the CNN features to ``T`` frames (``align_corners=True``) *before* the
   transformer, as AniPortrait does, so its checkpoints see what they were trained on;
4. ``feature_projection`` and, in training mode, the model's SpecAugment masking;
5. the transformer encoder (windowed for long clips, see :mod:`audio2lmk.encoders.base`);
   its last hidden state is the output, ``(B, T, hidden_size)``.

Clips shorter than the CNN's receptive field (400 samples for the base architecture) are
zero-padded to it so that even one video frame gives one feature vector.

Long clips, memory and speed. The CNN runs on sample chunks of ``cnn_chunk_seconds`` (2 s: small
enough for its 512-channel activations to stay in the CPU caches, which also makes it about a
quarter faster than one pass over a minute of audio). This is exact: every
CNN layer is local except the ``GroupNorm`` of the first layer in the ``group`` architecture (the
base models), which normalises each channel over the whole clip; its per-channel statistics are
gathered in a first pass over the chunks, then applied in a second pass. The transformer runs on
windows of ``window_seconds`` with ``context_seconds`` either side (clips up to
``window + 2 * context`` seconds, 40 s by default, are encoded in one pass, identical to
AniPortrait's whole-clip encoding).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from audio2lmk.encoders.base import AudioEncoder, resample_to_frames, run_windowed
from common.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base-960h"
"""The wav2vec2 checkpoint AniPortrait's models were trained on; the default for real use."""


class Wav2Vec2AudioEncoder(AudioEncoder):
    """transformers ``Wav2Vec2Model`` as a per-frame audio encoder.

    Args:
        pretrained: hub name or local folder of a wav2vec2 checkpoint whose weights are loaded
            (e.g. ``facebook/wav2vec2-base-960h``). Its architecture is then recorded in
            :meth:`to_config`, so a model saved with this encoder reloads offline.
        config: a ``Wav2Vec2Config`` or its dict: build the architecture with random weights
            (tests, and reloading saved models, whose weights come from the model's own file).
        normalize: normalise each waveform to zero mean and unit variance. With ``pretrained``, the
            checkpoint's ``preprocessor_config.json`` decides when it has one.
        freeze_feature_encoder: freeze the CNN feature encoder (AniPortrait trains everything else).
        window_seconds, context_seconds: transformer windowing for long clips.
        cnn_chunk_seconds: sample chunk length of the CNN pass (memory and cache locality).
        source: where the weights originally came from (informational, kept in the config).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: Any = None,
        normalize: bool = True,
        freeze_feature_encoder: bool = True,
        window_seconds: float = 30.0,
        context_seconds: float = 5.0,
        cnn_chunk_seconds: float = 2.0,
        source: str | None = None,
    ) -> None:
        super().__init__(window_seconds=window_seconds, context_seconds=context_seconds)
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        if (pretrained is None) == (config is None):
            raise ValueError("give exactly one of `pretrained` (load weights) or `config` (random weights)")
        if pretrained is not None:
            self.model = _load_pretrained(str(pretrained))
            normalize = _pretrained_normalize(str(pretrained), default=normalize)
            source = str(pretrained)
        else:
            if isinstance(config, dict):
                config = Wav2Vec2Config.from_dict(dict(config))
            if not isinstance(config, Wav2Vec2Config):
                raise TypeError(f"config must be a Wav2Vec2Config or dict, got {type(config).__name__}")
            self.model = Wav2Vec2Model(config)
        if self.model.config.add_adapter:
            raise ValueError("wav2vec2 adapters change the frame rate and are not supported")
        self.normalize = bool(normalize)
        self.source = source
        self.cnn_chunk_seconds = float(cnn_chunk_seconds)
        self.output_dim = int(self.model.config.hidden_size)
        kernels, strides = self.model.config.conv_kernel, self.model.config.conv_stride
        # Receptive field and hop of the whole CNN, in samples.
        self.receptive_field = 1 + sum((k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels))
        self.hop = math.prod(strides)
        self._frozen_cnn = False
        if freeze_feature_encoder:
            self.freeze_feature_encoder()

    def to_config(self) -> dict:
        return {
            "type": "wav2vec2",
            "config": self.model.config.to_diff_dict(),
            "normalize": self.normalize,
            "freeze_feature_encoder": self._frozen_cnn,
            "window_seconds": self.window_seconds,
            "context_seconds": self.context_seconds,
            "cnn_chunk_seconds": self.cnn_chunk_seconds,
            "source": self.source,
        }

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN feature encoder (no gradients, as AniPortrait trains)."""
        self.model.freeze_feature_encoder()
        self._frozen_cnn = True

    def forward(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``audio`` (B, N) float 16 kHz -> ``(B, num_frames, hidden_size)``."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, N), got shape {tuple(audio.shape)}")
        audio = audio.to(self.model.dtype)
        if self.normalize:
            mean = audio.mean(dim=1, keepdim=True)
            var = audio.var(dim=1, unbiased=False, keepdim=True)
            audio = (audio - mean) / torch.sqrt(var + 1e-7)
        if audio.shape[1] < self.receptive_field:
            audio = nn.functional.pad(audio, (0, self.receptive_field - audio.shape[1]))
        features = self.cnn_features(audio)
        features = resample_to_frames(features, num_frames)
        hidden, _ = self.model.feature_projection(features)
        if self.training:
            hidden = self.model._mask_hidden_states(hidden)
        window, context = self.window_frames(audio.shape[1], num_frames)
        return run_windowed(self._transformer, hidden, window, context)

    def _transformer(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(hidden).last_hidden_state

    def cnn_features(self, audio: torch.Tensor) -> torch.Tensor:
        """CNN features ``(B, L, conv_dim[-1])`` of (normalised) audio ``(B, N)``, exact in chunks."""
        chunk = max(1, round(self.cnn_chunk_seconds * self.sample_rate / self.hop)) * self.hop
        grad = torch.is_grad_enabled() and not self._frozen_cnn
        with torch.set_grad_enabled(grad):
            if audio.shape[1] <= chunk + self.receptive_field:
                return self.model.feature_extractor(audio).transpose(1, 2)
            return self._chunked_cnn(audio, chunk).transpose(1, 2)

    def _chunked_cnn(self, audio: torch.Tensor, chunk: int) -> torch.Tensor:
        layers = self.model.feature_extractor.conv_layers
        first = layers[0]
        total = (audio.shape[1] - self.receptive_field) // self.hop + 1
        per_chunk = chunk // self.hop
        norm_stats = None
        if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm):
            norm_stats = self._first_layer_stats(audio, chunk)
        outputs = []
        for k0 in range(0, total, per_chunk):
            k1 = min(total, k0 + per_chunk)
            piece = audio[:, k0 * self.hop : (k1 - 1) * self.hop + self.receptive_field]
            hidden = piece[:, None]
            if norm_stats is None:
                hidden = first(hidden)
            else:
                mean, inv_std = norm_stats
                hidden = first.conv(hidden)
                hidden = (hidden - mean) * inv_std
                hidden = hidden * first.layer_norm.weight[:, None] + first.layer_norm.bias[:, None]
                hidden = first.activation(hidden)
            for layer in layers[1:]:
                hidden = layer(hidden)
            outputs.append(hidden)
        return torch.cat(outputs, dim=2)

    def _first_layer_stats(self, audio: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and 1/std of the first conv layer's output over the whole clip."""
        conv = self.model.feature_extractor.conv_layers[0].conv
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        total = (audio.shape[1] - kernel) // stride + 1
        per_chunk = max(1, chunk // stride)
        sum1 = torch.zeros(audio.shape[0], conv.out_channels, 1, dtype=torch.float64, device=audio.device)
        sum2 = torch.zeros_like(sum1)
        for j0 in range(0, total, per_chunk):
            j1 = min(total, j0 + per_chunk)
            out = conv(audio[:, None, j0 * stride : (j1 - 1) * stride + kernel]).double()
            sum1 += out.sum(dim=2, keepdim=True)
            sum2 += out.square().sum(dim=2, keepdim=True)
        mean = sum1 / total
        var = (sum2 / total - mean.square()).clamp_min(0.0)
        eps = self.model.feature_extractor.conv_layers[0].layer_norm.eps
        inv_std = torch.rsqrt(var + eps)
        return mean.to(audio.dtype), inv_std.to(audio.dtype)


def _load_pretrained(name_or_path: str):
    """``Wav2Vec2Model.from_pretrained`` with strict checks: no missing encoder weights."""
    from transformers import Wav2Vec2Model

    try:
        model, info = Wav2Vec2Model.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot load wav2vec2 weights from {name_or_path!r}: {err}; pass a local folder with "
            "config.json and model weights, or a hub name (e.g. facebook/wav2vec2-base-960h) on a "
            "machine that can download it"
        ) from None
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise UserError(
            f"wav2vec2 checkpoint {name_or_path!r} lacks {len(missing)} encoder weights: "
            f"{', '.join(missing)}; pass a complete wav2vec2 checkpoint"
        )
    unused = sorted(info.get("unexpected_keys", []))
    if unused:
        # Task heads of e.g. Wav2Vec2ForCTC (lm_head.*) or pre-training (quantizer.*) are not used.
        log.info("ignored %d head weights of %s: %s", len(unused), name_or_path, ", ".join(unused))
    return model


def _pretrained_normalize(name_or_path: str, default: bool) -> bool:
    """``do_normalize`` of the checkpoint's feature extractor, or ``default`` when it has none."""
    from transformers import Wav2Vec2FeatureExtractor

    try:
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        return default
    return bool(getattr(extractor, "do_normalize", default))
