"""Tiny configurations and seeded inputs shared by the audio2lmk model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread (and do not fight other processes for the cores).

    Autouse in every test module that imports it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_wav2vec2_config(**overrides):
    """A wav2vec2 architecture with the base model's CNN strides/kernels and tiny widths."""
    from transformers import Wav2Vec2Config

    kwargs = {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "conv_dim": (8, 8, 8, 8, 8, 8, 8),
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2,
        "layerdrop": 0.0,
    }
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def tiny_wav2vec2_encoder(**kwargs) -> dict:
    """Encoder config for the models: tiny random wav2vec2."""
    config = kwargs.pop("config", None) or tiny_wav2vec2_config()
    return {"type": "wav2vec2", "config": config.to_dict(), **kwargs}


def tiny_mel_encoder(**kwargs) -> dict:
    """Encoder config for the models: tiny log-mel encoder."""
    config = {
        "type": "mel",
        "n_mels": 16,
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "ffn_dim": 32,
        "pos_conv_kernel": 5,
    }
    config.update(kwargs)
    return config


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Overwrite every parameter with seeded Gaussian noise (zero-initialised heads included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module


def speechlike(num_samples: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """``(batch, num_samples)`` float32 noise with a slow amplitude envelope, seeded."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000.0
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6.28, (batch, 1)))
    audio = 0.3 * envelope * rng.standard_normal((batch, num_samples))
    return torch.from_numpy(audio.astype(np.float32))


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "pcm_s16le") -> Path:
    """Encode ``samples`` (C, N) float in [-1, 1] with PyAV (mono or stereo)."""
    import av

    samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if samples.shape[1]:
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
