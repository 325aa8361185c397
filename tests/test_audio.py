"""common.audio: decoding any container/codec/rate/layout to 16 kHz mono float32, and clear errors."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest

from common.audio import SAMPLE_RATE, load_audio, num_frames_for
from common.errors import EXIT_USER_ERROR, UserError, exit_on_user_error
from tests.audio2lmk_tiny import write_audio
from tests.conftest import shared_file

SPEECH = [
    "en_16k_stereo.wav",
    "en_24k_mono.wav",
    "en_24k_mono.mp3",
    "en_44k_stereo.wav",
    "ja_48k_stereo.wav",
    "zh_24k_mono.wav",
    "zh_24k_mono.m4a",
]


def _stream_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


@pytest.mark.parametrize("name", SPEECH)
def test_shared_speech_every_format(name):
    path = shared_file("speech", name)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Same duration as the container says (AAC may add up to two priming/padding frames).
    assert abs(audio.size / SAMPLE_RATE - _stream_seconds(path)) < 0.1
    assert 0.05 < np.abs(audio).max() <= 1.5
    assert abs(float(audio.mean())) < 0.05


@pytest.mark.parametrize(
    ("lossless", "lossy"), [("en_24k_mono.wav", "en_24k_mono.mp3"), ("zh_24k_mono.wav", "zh_24k_mono.m4a")]
)
def test_lossy_codecs_decode_aligned_with_the_wav(lossless, lossy):
    reference = load_audio(shared_file("speech", lossless))
    decoded = load_audio(shared_file("speech", lossy))
    n = min(reference.size, decoded.size)
    assert np.corrcoef(reference[:n], decoded[:n])[0, 1] > 0.99  # same samples, no time shift


def test_stereo_is_averaged_and_resampled(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate  # one second
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, right]), rate)
    audio = load_audio(path)
    assert audio.size == SAMPLE_RATE
    u = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    expected = 0.5 * (0.5 * np.sin(2 * np.pi * 440 * u) + 0.25 * np.sin(2 * np.pi * 1000 * u))
    inner = slice(200, -200)  # away from the resampler's edge transients
    assert np.abs(audio[inner] - expected[inner]).max() < 5e-3


@pytest.mark.parametrize(("codec", "suffix"), [("flac", ".flac"), ("pcm_f32le", ".wav"), ("aac", ".m4a")])
def test_generated_formats_48k(tmp_path, codec, suffix):
    rate = 48000
    t = np.arange(rate // 2) / rate
    tone = 0.4 * np.sin(2 * np.pi * 300 * t)
    audio = load_audio(write_audio(tmp_path / f"tone{suffix}", tone[None], rate, codec))
    assert abs(audio.size - SAMPLE_RATE // 2) <= 2048  # AAC adds priming/padding
    spectrum = np.abs(np.fft.rfft(audio[: SAMPLE_RATE // 2]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / (SAMPLE_RATE // 2) - 300) <= 2


def test_missing_folder_empty_and_garbage_files(tmp_path):
    with pytest.raises(UserError, match=r"nope\.wav does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(UserError, match="is a folder"):
        load_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.wav is empty"):
        load_audio(empty)
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"cannot read audio from .*garbage\.mp3.*ffmpeg"):
        load_audio(garbage)


def test_header_only_wav_has_no_samples(tmp_path):
    path = tmp_path / "nosamples.wav"
    with wave.open(str(path), "wb") as out:  # a valid WAV header with zero frames
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
    with pytest.raises(UserError, match=r"nosamples\.wav contains no audio samples"):
        load_audio(path)


def test_silent_and_quiet_audio(tmp_path):
    silent = write_audio(tmp_path / "silent.wav", np.zeros((1, SAMPLE_RATE)), SAMPLE_RATE)
    with pytest.raises(UserError, match=r"silent\.wav is silent"):
        load_audio(silent)
    dither = np.random.default_rng(0).uniform(-2e-4, 2e-4, (1, SAMPLE_RATE))  # about -74 dBFS
    quiet = write_audio(tmp_path / "quiet.wav", dither, SAMPLE_RATE)
    with pytest.raises(UserError, match="is silent"):
        load_audio(quiet)
    assert load_audio(quiet, silence_dbfs=None).size == SAMPLE_RATE


def test_too_short_for_one_frame(tmp_path):
    ten_ms = write_audio(tmp_path / "short.wav", 0.5 * np.ones((1, 160)), SAMPLE_RATE)
    with pytest.raises(UserError, match=r"short\.wav is too short: 0\.010 s, at least 0\.033 s"):
        load_audio(ten_ms, min_duration=1 / 30)
    assert load_audio(ten_ms, min_duration=0.005).size == 160


def test_non_finite_samples(tmp_path):
    samples = np.full((1, 1600), 0.1, dtype=np.float32)
    samples[0, 800] = np.nan
    path = write_audio(tmp_path / "nan.wav", samples, SAMPLE_RATE, codec="pcm_f32le")
    with pytest.raises(UserError, match=r"nan\.wav contains NaN"):
        load_audio(path)


def test_video_without_sound_is_a_user_error():
    with pytest.raises(UserError, match="has no audio stream"):
        load_audio(shared_file("talking", "KristiNoem.mp4"))


def test_cli_wrapper_exits_2_on_bad_audio(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")

    @exit_on_user_error
    def cli() -> None:
        load_audio(bad)

    with pytest.raises(SystemExit) as info:
        cli()
    assert info.value.code == EXIT_USER_ERROR
    assert "bad.wav" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("samples", "fps", "frames"),
    [
        (0, 30, 0),
        (1, 30, 1),
        (533, 30, 1),
        (534, 30, 2),
        (16000, 30, 30),
        (16001, 30, 31),
        (16000, 25, 25),
        (640, 25, 1),
        (132800, 30, 249),  # float arithmetic would give 250
    ],
)
def test_num_frames_for(samples, fps, frames):
    assert num_frames_for(samples, fps) == frames


def test_num_frames_for_ntsc_rate():
    assert num_frames_for(16000 * 1001, 30000 / 1001) == 30000
