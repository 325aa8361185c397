"""Log-mel front end + small convolution/transformer encoder, trained from scratch.

No pretrained weights: the encoder for small data sets and CPU training. For a clip of ``N``
samples and ``T`` video frames:

1. optional (``normalize=True``) zero-mean / unit-variance normalisation of each waveform, for gain
   invariance; off by default, so that a quiet pause stays quiet in a training crop;
2. log-mel spectrogram: ``torch.stft`` (Hann window ``win_length``, hop ``hop_length`` = 10 ms by
   default) -> power -> a Slaney mel filterbank (``transformers.audio_utils.mel_filter_bank``) ->
   ``log10`` of at least ``1e-10``, scaled as ``(x + 4) / 4`` (about -1.5 for digital silence, 1 to 2
   for loud speech at full scale);
3. two 1-D convolutions with GELU at the mel frame rate (100 Hz);
4. linear resampling to ``T`` frames (``align_corners=True``, the same convention as wav2vec2);
5. a depthwise convolutional positional embedding (relative, so windows are translation
   invariant), LayerNorm, and a pre-norm ``nn.TransformerEncoder`` run in windows for long clips
   (:mod:`audio2lmk.encoders.base`); a final LayerNorm. Output ``(B, T, hidden_size)``.

Steps 2-4 are frame-local (a frame's features do not depend on the rest of the clip, so training
crops and whole clips agree); they run over the whole clip (about 1 kB of memory per 10 ms for the
default sizes).
"""

from __future__ import annotations

import torch
from torch import nn

from audio2lmk.encoders.base import AudioEncoder, resample_to_frames, run_windowed


class MelAudioEncoder(AudioEncoder):
    """Log-mel + conv + transformer audio encoder. All sizes are in samples, bins or channels."""

    def __init__(
        self,
        n_mels: int = 80,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float = 8000.0,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        ffn_dim: int = 1024,
        conv_kernel: int = 3,
        pos_conv_kernel: int = 15,
        dropout: float = 0.1,
        normalize: bool = False,
        window_seconds: float = 30.0,
        context_seconds: float = 5.0,
    ) -> None:
        super().__init__(window_seconds=window_seconds, context_seconds=context_seconds)
        from transformers.audio_utils import mel_filter_bank

        if conv_kernel % 2 == 0 or pos_conv_kernel % 2 == 0:
            raise ValueError(f"conv kernels must be odd, got {conv_kernel} and {pos_conv_kernel}")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft})")
        self.n_mels, self.n_fft, self.win_length, self.hop_length = n_mels, n_fft, win_length, hop_length
        self.f_min, self.f_max = float(f_min), float(f_max)
        self.hidden_size, self.num_layers, self.num_heads, self.ffn_dim = (
            hidden_size,
            num_layers,
            num_heads,
            ffn_dim,
        )
        self.conv_kernel, self.pos_conv_kernel, self.dropout_p = conv_kernel, pos_conv_kernel, dropout
        self.normalize = bool(normalize)
        self.output_dim = hidden_size

        filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=f_min,
            max_frequency=f_max,
            sampling_rate=self.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        # Deterministic from the config: not saved with the weights.
        self.register_buffer("mel_filters", torch.tensor(filters.T, dtype=torch.float32), persistent=False)
        self.register_buffer("stft_window", torch.hann_window(win_length), persistent=False)

        pad = conv_kernel // 2
        self.front = nn.Sequential(
            nn.Conv1d(n_mels, hidden_size, conv_kernel, padding=pad),
            nn.GELU(),
            nn.Conv1d(hidden_size, hidden_size, conv_kernel, padding=pad),
            nn.GELU(),
        )
        self.pos_conv = nn.Conv1d(
            hidden_size, hidden_size, pos_conv_kernel, padding=pos_conv_kernel // 2, groups=hidden_size
        )
        self.input_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, ffn_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden_size)

    def to_config(self) -> dict:
        return {
            "type": "mel",
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "conv_kernel": self.conv_kernel,
            "pos_conv_kernel": self.pos_conv_kernel,
            "dropout": self.dropout_p,
            "normalize": self.normalize,
            "window_seconds": self.window_seconds,
            "context_seconds": self.context_seconds,
        }

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` waveform -> ``(B, n_mels, N // hop_length + 1)`` scaled log-mel spectrogram."""
        spec = torch.stft(
            audio.float(),
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.stft_window.float(),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        mel = self.mel_filters.float() @ spec.abs().square()
        return (torch.log10(mel.clamp_min(1e-10)) + 4.0) / 4.0

    def forward(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``audio`` (B, N) float 16 kHz -> ``(B, num_frames, hidden_size)``."""
        return self.encode_inputs(self.mel_inputs(audio), audio.shape[1], num_frames)

    def mel_inputs(self, audio: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: ``audio`` (B, N) -> the scaled log-mel ``(B, n_mels, N // hop_length + 1)`` in the
        front end's dtype (normalised first when ``normalize``)."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, N), got shape {tuple(audio.shape)}")
        if self.normalize:
            mean = audio.mean(dim=1, keepdim=True)
            var = audio.var(dim=1, unbiased=False, keepdim=True)
            audio = (audio - mean) / torch.sqrt(var + 1e-7)
        return self.log_mel(audio).to(self.front[0].weight.dtype)

    def encode_inputs(self, inputs: torch.Tensor, num_samples: int, num_frames: int) -> torch.Tensor:
        """Steps 3-5: front-end inputs ``(B, C, L)`` on the hop grid of a clip of ``num_samples`` samples ->
        ``(B, num_frames, hidden_size)`` (convolutions, resampling to the frames, the windowed transformer)."""
        hidden = resample_to_frames(self.front(inputs).transpose(1, 2), num_frames)
        window, context = self.window_frames(num_samples, num_frames)
        return run_windowed(self._transformer, hidden, window, context)

    def _transformer(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + nn.functional.gelu(self.pos_conv(hidden.transpose(1, 2))).transpose(1, 2)
        hidden = self.dropout(self.input_norm(hidden))
        return self.final_norm(self.transformer(hidden))
