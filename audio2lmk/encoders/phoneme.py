"""Phoneme encoder: English phones decoded offline by PocketSphinx, embedded and contextualised.

A speaker-independent front end for small corpora: what the mouth does depends mostly on which phone
is spoken, not on the voice. For a clip of ``N`` samples and ``T`` video frames:

1. phones at 100 Hz (:func:`decode_phones`): PocketSphinx's phone-loop ("allphone") search with the
   English acoustic model and phone language model that ship inside the ``pocketsphinx`` wheel (no
   download), one id of :data:`PHONES` per 10 ms, ``N // 160 + 1`` of them (the log-mel frame grid);
   training passes the phones of the whole clip, decoded once by the data module (``data.phones: true``),
   instead (inference decodes the whole clip too, so both see the same context);
2. an embedding of each phone (``phone_dim``), optionally concatenated with the scaled log-mel
   spectrogram of :class:`~audio2lmk.encoders.mel.MelAudioEncoder` (``n_mels > 0``: loudness and
   emphasis, which phones lack);
3. then the mel encoder's steps (:meth:`MelAudioEncoder.encode_inputs`): two 1-D convolutions, resampling to ``T`` frames, a convolutional
   positional embedding and a transformer run in windows. Output ``(B, T, hidden_size)``.

Other languages are decoded as the nearest English phones (see docs/audio2lmk-ablations.md).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from audio2lmk.encoders.mel import MelAudioEncoder
from common.errors import UserError

# Silence first (id 0: padding and the ends of a clip), the 39 phones of the CMU dictionary, then
# everything the decoder labels as noise or unknown speech.
PHONES = (
    "SIL",
    *[
        "AA",
        "AE",
        "AH",
        "AO",
        "AW",
        "AY",
        "B",
        "CH",
        "D",
        "DH",
        "EH",
        "ER",
        "EY",
        "F",
        "G",
        "HH",
        "IH",
        "IY",
        "JH",
        "K",
        "L",
        "M",
        "N",
        "NG",
        "OW",
        "OY",
        "P",
        "R",
        "S",
        "SH",
        "T",
        "TH",
        "UH",
        "UW",
        "V",
        "W",
        "Y",
        "Z",
        "ZH",
    ],
    "NOISE",
)
PHONE_IDS = {name: i for i, name in enumerate(PHONES)}
HOP = 160  # samples per phone frame (10 ms at 16 kHz)


def phone_frames(num_samples: int) -> int:
    """Phone frames of ``num_samples`` samples: the log-mel frame count (``N // 160 + 1``)."""
    return int(num_samples) // HOP + 1


def _decoder():
    """A new decoder (0.25 s): one per clip, since a decoder's noise estimate carries over between clips."""
    try:
        import pocketsphinx
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise UserError(
            "the phoneme encoder needs pocketsphinx (pip install pocketsphinx): it is a dependency of "
            "talking-portrait, reinstall the package"
        ) from err
    model = pocketsphinx.get_model_path()
    return pocketsphinx.Decoder(
        hmm=os.path.join(model, "en-us", "en-us"),
        allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
        lw=2.0,
        pip=0.3,
        beam=1e-10,
        pbeam=1e-10,
        samprate=16000,
        # Cepstral mean normalisation over each whole clip: the same audio always gives the same phones
        # (live normalisation would carry the previous clip's mean into the next).
        cmn="batch",
        loglevel="FATAL",
    )


def decode_phones(audio: np.ndarray) -> np.ndarray:
    """Phone ids (``phone_frames(len(audio))``,) int64 of a 16 kHz mono float waveform (-1..1)."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    out = np.zeros(phone_frames(len(samples)), dtype=np.int64)
    if not len(samples) or not np.any(samples):
        return out
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    for segment in decoder.seg():
        phone = PHONE_IDS.get(segment.word, PHONE_IDS["NOISE"] if segment.word.startswith("+") else 0)
        out[max(segment.start_frame, 0) : max(segment.end_frame + 1, 0)] = phone
    return out


class PhonemeAudioEncoder(MelAudioEncoder):
    """Phone embedding (+ optional log-mel) + conv + transformer encoder; see the module docstring.

    ``phone_dim``: embedding size; ``n_mels``: log-mel bins concatenated to it (0: phones only). The
    other arguments are :class:`MelAudioEncoder`'s.
    """

    uses_phones = True

    def __init__(self, phone_dim: int = 32, n_mels: int = 0, hidden_size: int = 128, **kwargs) -> None:
        if phone_dim < 1 or n_mels < 0:
            raise ValueError(f"phone_dim must be >= 1 and n_mels >= 0, got {phone_dim} and {n_mels}")
        super().__init__(n_mels=max(n_mels, 1), hidden_size=hidden_size, **kwargs)
        self.use_mel = n_mels > 0
        self.phone_dim = int(phone_dim)
        if not self.use_mel:
            self.n_mels = 0
        self.phone_embedding = nn.Embedding(len(PHONES), self.phone_dim)
        first = self.front[0]
        self.front[0] = nn.Conv1d(
            self.n_mels + self.phone_dim, hidden_size, first.kernel_size[0], padding=first.padding[0]
        )

    def to_config(self) -> dict:
        config = super().to_config()
        config.update(type="phoneme", phone_dim=self.phone_dim, n_mels=self.n_mels)
        return config

    def phones_for(self, audio: torch.Tensor) -> torch.Tensor:
        """Decode ``audio`` (B, N) into phone ids ``(B, N // 160 + 1)`` (:func:`decode_phones`)."""
        rows = [decode_phones(row) for row in audio.detach().float().cpu().numpy()]
        return torch.from_numpy(np.stack(rows)).to(audio.device)

    def forward(
        self, audio: torch.Tensor, num_frames: int, phones: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``audio`` (B, N) float 16 kHz (and its phones (B, N // 160 + 1), else decoded) -> (B, T, D)."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, N), got shape {tuple(audio.shape)}")
        expected = (audio.shape[0], phone_frames(audio.shape[1]))
        if phones is None:
            phones = self.phones_for(audio)
        elif tuple(phones.shape) != expected:
            raise ValueError(
                f"phones must be {expected} for audio {tuple(audio.shape)}, got {tuple(phones.shape)}"
            )
        inputs = self.phone_embedding(phones.long()).transpose(1, 2).to(self.front[0].weight.dtype)
        if self.use_mel:
            inputs = torch.cat([self.mel_inputs(audio), inputs], dim=1)
        return self.encode_inputs(inputs, audio.shape[1], num_frames)
