"""audio2lmk.encoders: wav2vec2 (AniPortrait's frame-rate convention) and log-mel, tiny configs."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from audio2lmk.encoders import (
    MelAudioEncoder,
    Wav2Vec2AudioEncoder,
    build_audio_encoder,
    run_windowed,
)
from common.audio import num_frames_for
from common.errors import UserError
from tests.audio2lmk_tiny import (
    one_torch_thread,  # noqa: F401
    speechlike,
    tiny_mel_encoder,
    tiny_wav2vec2_config,
    tiny_wav2vec2_encoder,
)


def _reference_wav2vec2(model, audio: torch.Tensor, frames: int) -> torch.Tensor:
    """AniPortrait's encoder: normalise, CNN, linear resample to the frame count, projection, encoder."""
    audio = (audio - audio.mean(1, keepdim=True)) / torch.sqrt(
        audio.var(1, unbiased=False, keepdim=True) + 1e-7
    )
    features = model.feature_extractor(audio)
    features = F.interpolate(features, size=frames, mode="linear", align_corners=True).transpose(1, 2)
    hidden, _ = model.feature_projection(features)
    return model.encoder(hidden).last_hidden_state


@pytest.fixture
def wav2vec2() -> Wav2Vec2AudioEncoder:
    torch.manual_seed(0)
    return build_audio_encoder(tiny_wav2vec2_encoder()).eval()


@pytest.mark.parametrize("seconds", [0.5, 1.3])
@pytest.mark.parametrize("fps", [25, 30])
def test_wav2vec2_matches_aniportrait_convention(wav2vec2, seconds, fps):
    audio = speechlike(int(seconds * 16000), batch=2)
    frames = num_frames_for(audio.shape[1], fps)
    with torch.no_grad():
        out = wav2vec2(audio, frames)
        ref = _reference_wav2vec2(wav2vec2.model, audio, frames)
    assert out.shape == (2, frames, 16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_wav2vec2_chunked_cnn_is_exact(norm):
    torch.manual_seed(0)
    config = tiny_wav2vec2_config(feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    whole = build_audio_encoder(tiny_wav2vec2_encoder(config=config)).eval()
    chunked = build_audio_encoder(tiny_wav2vec2_encoder(config=config, cnn_chunk_seconds=0.05)).eval()
    chunked.load_state_dict(whole.state_dict())
    audio = speechlike(16000 + 123, batch=2, seed=1)
    with torch.no_grad():
        a, b = whole.cnn_features(audio), chunked.cnn_features(audio)
        assert a.shape == b.shape == (2, 50, 8)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(whole(audio, 30), chunked(audio, 30), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_samples", [1, 100, 399, 534, 640])
def test_wav2vec2_shorter_than_receptive_field(wav2vec2, num_samples):
    audio = speechlike(num_samples)
    with torch.no_grad():
        out = wav2vec2(audio, 1)
    assert out.shape == (1, 1, 16) and torch.isfinite(out).all()


def test_wav2vec2_windowing_of_long_clips(wav2vec2):
    """One pass up to window + 2 * context; beyond, windows that keep `context` frames either side."""
    audio = speechlike(4 * 16000, seed=2)
    frames = num_frames_for(audio.shape[1], 30)
    with torch.no_grad():
        whole = wav2vec2(audio, frames)
        wav2vec2.window_seconds, wav2vec2.context_seconds = 1.0, 0.5
        windowed = wav2vec2(audio, frames)
    assert windowed.shape == whole.shape == (1, 120, 16)
    assert torch.isfinite(windowed).all()
    # The tiny model's attention is global, so windowed output is close but not equal.
    assert not torch.equal(windowed, whole)


def test_run_windowed_is_exact_for_local_functions():
    """A function whose receptive field fits in the context gives exactly the same result windowed."""
    conv = torch.nn.Conv1d(3, 3, 5, padding=2, bias=False)

    def local(x: torch.Tensor) -> torch.Tensor:
        return conv(x.transpose(1, 2)).transpose(1, 2)

    x = torch.randn(2, 97, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for window, context in [(10, 2), (32, 3), (97, 0), (1, 2), (48, 2)]:
            torch.testing.assert_close(run_windowed(local, x, window, context), local(x))
        # Too little context is not exact near the window borders.
        assert not torch.allclose(run_windowed(local, x, 10, 1), local(x))


def test_wav2vec2_freezes_only_the_cnn(wav2vec2):
    cnn = list(wav2vec2.model.feature_extractor.parameters())
    assert cnn and not any(p.requires_grad for p in cnn)
    rest = [p for n, p in wav2vec2.named_parameters() if "feature_extractor" not in n]
    assert all(p.requires_grad for p in rest)
    wav2vec2.train()
    torch.manual_seed(0)
    wav2vec2(speechlike(8000), 15).square().mean().backward()
    assert wav2vec2.model.feature_projection.projection.weight.grad is not None
    assert all(p.grad is None for p in cnn)


def test_wav2vec2_from_pretrained_folder(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    source = Wav2Vec2Model(tiny_wav2vec2_config()).eval()
    source.save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path / "w2v")
    encoder = Wav2Vec2AudioEncoder(pretrained=str(tmp_path / "w2v")).eval()
    assert encoder.normalize is False  # read from preprocessor_config.json
    for key, value in source.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[key], value, rtol=0, atol=0)
    config = encoder.to_config()
    assert "pretrained" not in config and config["source"] == str(tmp_path / "w2v")
    rebuilt = build_audio_encoder(config).eval()  # architecture only, no files needed
    rebuilt.load_state_dict(encoder.state_dict())
    audio = speechlike(8000)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(audio, 15), encoder(audio, 15))


def test_wav2vec2_pretrained_errors(tmp_path):
    with pytest.raises(UserError, match="cannot load wav2vec2 weights from"):
        Wav2Vec2AudioEncoder(pretrained=str(tmp_path / "missing"))
    from safetensors.torch import load_file, save_file
    from transformers import Wav2Vec2Model

    Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(tmp_path / "w2v")
    weights = tmp_path / "w2v" / "model.safetensors"
    state = load_file(weights)
    del state["feature_projection.projection.weight"]
    save_file(state, weights)
    with pytest.raises(UserError, match=r"lacks 1 encoder weights: feature_projection\.projection\.weight"):
        Wav2Vec2AudioEncoder(pretrained=str(tmp_path / "w2v"))
    with pytest.raises(ValueError, match="exactly one"):
        Wav2Vec2AudioEncoder()


def test_mel_encoder_shapes_and_gain():
    torch.manual_seed(0)
    encoder = build_audio_encoder(tiny_mel_encoder()).eval()
    assert isinstance(encoder, MelAudioEncoder) and encoder.output_dim == 16
    audio = speechlike(16000 + 77, batch=2)
    with torch.no_grad():
        out = encoder(audio, 31)
        one = encoder(audio[:, :534], 1)
        assert out.shape == (2, 31, 16) and one.shape == (2, 1, 16)
        assert not torch.allclose(out, encoder(3.0 * audio, 31), atol=1e-3)  # level matters by default
        normalising = build_audio_encoder(tiny_mel_encoder(normalize=True)).eval()
        normalising.load_state_dict(encoder.state_dict())
        torch.testing.assert_close(normalising(audio, 31), normalising(3.0 * audio, 31), atol=1e-4, rtol=1e-4)


def test_mel_features_are_frame_local():
    """A frame's log-mel does not depend on the rest of the clip (training crops = whole clips)."""
    encoder = build_audio_encoder(tiny_mel_encoder())
    audio = speechlike(32000, seed=3)
    whole = encoder.log_mel(audio)
    crop = encoder.log_mel(audio[:, 8000:24000])  # hop 160: frame k of the crop is frame k + 50
    torch.testing.assert_close(crop[..., 2:-2], whole[..., 52:149], atol=1e-5, rtol=1e-5)
    silence = encoder.log_mel(torch.zeros(1, 1600))
    assert torch.allclose(silence, torch.tensor(-1.5))


def test_mel_spectrogram_peaks_at_the_tone():
    encoder = MelAudioEncoder(n_mels=40, hidden_size=8, num_layers=1, num_heads=2, ffn_dim=16)
    t = torch.arange(16000) / 16000
    for freq in (300.0, 2000.0):
        log_mel = encoder.log_mel(torch.sin(2 * torch.pi * freq * t)[None])
        assert log_mel.shape == (1, 40, 101)
        peak_bin = int(log_mel[0, :, 50].argmax())
        centers = encoder.mel_filters.argmax(dim=1) * 16000 / encoder.n_fft  # Hz of each filter's peak
        assert abs(float(centers[peak_bin]) - freq) < 0.15 * freq


def test_mel_windowing_and_training_step():
    torch.manual_seed(0)
    encoder = build_audio_encoder(tiny_mel_encoder(window_seconds=0.5, context_seconds=0.25))
    audio = speechlike(3 * 16000)
    with torch.no_grad():
        out = encoder.eval()(audio, 90)
    assert out.shape == (1, 90, 16) and torch.isfinite(out).all()
    encoder.train()
    encoder(audio, 90).square().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_encoder_config_round_trip_and_errors():
    for config in (tiny_mel_encoder(), tiny_wav2vec2_encoder(window_seconds=12.0)):
        encoder = build_audio_encoder(config)
        rebuilt = build_audio_encoder(encoder.to_config())
        assert rebuilt.to_config() == encoder.to_config()
        assert type(rebuilt) is type(encoder)
    with pytest.raises(ValueError, match="unknown audio encoder type 'hubert'"):
        build_audio_encoder({"type": "hubert"})
    with pytest.raises(ValueError, match="needs a `type`"):
        build_audio_encoder({"hidden_size": 3})
