"""Audio encoders chosen by config: ``{"type": "wav2vec2" | "mel", ...kwargs}``.

``phoneme``: :class:`PhonemeAudioEncoder` (English phones from PocketSphinx). Every encoder maps 16 kHz mono waveforms ``(B, N)`` to per-video-frame features ``(B, T, D)``;
see :mod:`audio2lmk.encoders.base`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audio2lmk.encoders.base import AudioEncoder, resample_to_frames, run_windowed
from audio2lmk.encoders.mel import MelAudioEncoder
from audio2lmk.encoders.phoneme import PhonemeAudioEncoder
from audio2lmk.encoders.wav2vec2 import DEFAULT_WAV2VEC2, Wav2Vec2AudioEncoder

ENCODER_TYPES: dict[str, type[AudioEncoder]] = {
    "wav2vec2": Wav2Vec2AudioEncoder,
    "mel": MelAudioEncoder,
    "phoneme": PhonemeAudioEncoder,
}

__all__ = [
    "DEFAULT_WAV2VEC2",
    "ENCODER_TYPES",
    "AudioEncoder",
    "MelAudioEncoder",
    "PhonemeAudioEncoder",
    "Wav2Vec2AudioEncoder",
    "build_audio_encoder",
    "resample_to_frames",
    "run_windowed",
]


def build_audio_encoder(config: Mapping[str, Any]) -> AudioEncoder:
    """Build an encoder from ``{"type": NAME, **kwargs}`` (an OmegaConf node works too).

    ``wav2vec2``: :class:`Wav2Vec2AudioEncoder` (``pretrained=NAME_OR_FOLDER`` or ``config={...}``);
    ``mel``: :class:`MelAudioEncoder`; ``phoneme``: :class:`PhonemeAudioEncoder`.
    """
    kwargs = _plain(config)
    if not isinstance(kwargs, dict) or "type" not in kwargs:
        raise ValueError(f"an encoder config needs a `type` ({', '.join(ENCODER_TYPES)}), got {config!r}")
    kind = kwargs.pop("type")
    if kind not in ENCODER_TYPES:
        raise ValueError(f"unknown audio encoder type {kind!r}; choose one of {', '.join(ENCODER_TYPES)}")
    return ENCODER_TYPES[kind](**kwargs)


def _plain(value: Any) -> Any:
    """Deep-convert mappings/sequences (OmegaConf containers, FrozenDict) into dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value
