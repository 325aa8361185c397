"""audio2lmk.encoders.phoneme: PocketSphinx phones (its English model ships in the wheel) and the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lmk.data import ClipData, collate_windows, make_window
from audio2lmk.encoders import PhonemeAudioEncoder, build_audio_encoder
from audio2lmk.encoders.phoneme import PHONE_IDS, PHONES, decode_phones, phone_frames
from common.audio import load_audio
from tests.conftest import shared_file


def tiny_phoneme(**kwargs) -> PhonemeAudioEncoder:
    config = {"type": "phoneme", "phone_dim": 8, "n_mels": 0, "hidden_size": 16, "num_layers": 1}
    config.update(num_heads=2, ffn_dim=32, **kwargs)
    torch.manual_seed(0)
    return build_audio_encoder(config)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(shared_file("speech", "en_24k_mono.wav"), 16000, silence_dbfs=None)[: 16000 * 4]


def test_phones_of_english_speech_and_of_silence(speech) -> None:
    phones = decode_phones(speech)
    assert phones.shape == (phone_frames(len(speech)),) and phones.dtype == np.int64
    spoken = {PHONES[i] for i in np.unique(phones)}
    # Four seconds of English speech: many different phones, vowels and consonants, and some silence.
    assert len(spoken) >= 15 and {"AH", "N", "T"} & spoken and "SIL" in spoken
    assert (phones > 0).mean() > 0.5
    assert not decode_phones(np.zeros(8000, np.float32)).any()
    assert decode_phones(np.zeros(0, np.float32)).shape == (1,)
    # Deterministic: the same audio gives the same phones.
    np.testing.assert_array_equal(decode_phones(speech), phones)


def test_encoder_decodes_or_takes_phones_and_round_trips(speech) -> None:
    encoder = tiny_phoneme().eval()
    audio = torch.from_numpy(speech[None, :32000].copy())
    phones = torch.from_numpy(decode_phones(speech[:32000]))[None]
    with torch.no_grad():
        decoded = encoder(audio, 60)
        given = encoder.encode(audio, 60, phones)
    assert decoded.shape == (1, 60, 16)
    torch.testing.assert_close(decoded, given)
    # Different phones give different features: the phones are what it reads (no mel here).
    with torch.no_grad():
        silent = encoder.encode(audio, 60, torch.zeros_like(phones))
    assert not torch.allclose(silent, given)
    rebuilt = build_audio_encoder(encoder.to_config())
    assert rebuilt.to_config() == encoder.to_config() and isinstance(rebuilt, PhonemeAudioEncoder)
    with pytest.raises(ValueError, match="phones must be"):
        encoder(audio, 60, phones=phones[:, :-1])
    with_mel = tiny_phoneme(n_mels=10)
    assert with_mel.front[0].in_channels == 18 and with_mel(audio, 60).shape == (1, 60, 16)


def test_windows_carry_the_clips_phones_on_their_grid() -> None:
    fps, frames = 30.0, 90
    audio = np.zeros(frames * 16000 // 30, np.float32)
    phones = np.arange(phone_frames(len(audio))) % len(PHONES)
    clip = ClipData(
        id="c",
        speaker="s",
        fps=fps,
        offsets=np.zeros((frames, 468, 3), np.float32),
        reference_mesh=np.zeros((468, 3), np.float32),
        neutral=0,
        pose=np.zeros((frames, 6)),
        audio=audio,
        phones=phones,
    )
    window = make_window(clip, 30, 15)
    assert window["phones"].shape == (phone_frames(len(window["audio"])),)
    # Frame 30 starts at 1 s: phone frame 100.
    np.testing.assert_array_equal(window["phones"][:10], phones[100:110])
    tail = make_window(clip, 80, 15)  # runs past the clip: silence there
    assert tail["phones"][-1] == PHONE_IDS["SIL"]
    batch = collate_windows([{**window, "style": 0, "clip": 0}, {**tail, "style": 0, "clip": 0}])
    assert batch["phones"].shape == (2, window["phones"].shape[0]) and batch["phones"].dtype == torch.int64
