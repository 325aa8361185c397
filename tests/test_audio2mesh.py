"""Audio2MeshModel: shapes, zero-initialised head, save/load round trips, strict loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from audio2lmk.models.audio2mesh import Audio2MeshModel
from common.errors import UserError
from tests.audio2lmk_tiny import (
    one_torch_thread,  # noqa: F401
    randomize_,
    speechlike,
    tiny_mel_encoder,
    tiny_wav2vec2_config,
    tiny_wav2vec2_encoder,
)


def _public(config) -> dict:
    """A config as JSON would store it, without diffusers' private bookkeeping keys."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def _tiny(encoder: dict, **kwargs) -> Audio2MeshModel:
    torch.manual_seed(0)
    return Audio2MeshModel(encoder=encoder, head_hidden_dims=(8,), **kwargs).eval()


@pytest.mark.parametrize("encoder", [tiny_wav2vec2_encoder(), tiny_mel_encoder()], ids=["wav2vec2", "mel"])
def test_untrained_model_returns_the_reference_mesh(encoder):
    model = _tiny(encoder)
    audio = speechlike(16000 + 1, batch=2)
    reference = torch.randn(468, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offsets = model(audio)
        mesh = model(audio, reference_mesh=reference)
        per_item = model(audio, num_frames=7, reference_mesh=reference.expand(2, 468, 3))
    assert offsets.shape == (2, 31, 468, 3)  # ceil(16001 / 16000 * 30) frames
    assert torch.count_nonzero(offsets) == 0
    torch.testing.assert_close(mesh, reference.expand(2, 31, 468, 3))
    assert per_item.shape == (2, 7, 468, 3)


@pytest.mark.parametrize("encoder", [tiny_wav2vec2_encoder(), tiny_mel_encoder()], ids=["wav2vec2", "mel"])
def test_save_load_round_trip(tmp_path, encoder):
    model = randomize_(_tiny(encoder, head_activation="gelu"))
    audio = speechlike(12000)
    with torch.no_grad():
        expected = model(audio)
    model.save_pretrained(tmp_path / "a2m")
    assert {p.name for p in (tmp_path / "a2m").iterdir()} == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
    }
    loaded = Audio2MeshModel.from_pretrained(tmp_path / "a2m").eval()
    assert _public(loaded.config) == _public(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), expected, rtol=0, atol=0)
    if encoder["type"] == "wav2vec2":  # the freeze is part of the config, so it survives reloading
        assert not any(p.requires_grad for p in loaded.audio_encoder.model.feature_extractor.parameters())


def test_pretrained_wav2vec2_folder_is_not_needed_after_saving(tmp_path, monkeypatch):
    from transformers import Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(tmp_path / "w2v")
    model = Audio2MeshModel(
        encoder={"type": "wav2vec2", "pretrained": str(tmp_path / "w2v")}, head_hidden_dims=(8,)
    )
    randomize_(model).eval()
    model.save_pretrained(tmp_path / "a2m")
    saved = json.loads((tmp_path / "a2m" / "config.json").read_text())
    assert saved["encoder"]["type"] == "wav2vec2" and "pretrained" not in saved["encoder"]
    assert saved["encoder"]["config"]["hidden_size"] == 16
    for item in (tmp_path / "w2v").iterdir():
        item.unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = Audio2MeshModel.from_pretrained(tmp_path / "a2m").eval()
    audio = speechlike(8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), model(audio), rtol=0, atol=0)


def test_strict_loading_lists_the_keys(tmp_path):
    model = _tiny(tiny_mel_encoder())
    model.save_pretrained(tmp_path / "a2m")
    weights = tmp_path / "a2m" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["head.7.weight"] = torch.zeros(1)
    del state["head.0.bias"]
    save_file(state, weights)
    with pytest.raises(UserError, match=r"1 missing keys: head\.0\.bias; 1 unexpected keys: head\.7\.weight"):
        Audio2MeshModel.from_pretrained(tmp_path / "a2m")
    state = load_file(weights)
    state["head.0.bias"], state["head.0.weight"] = torch.zeros(8), torch.zeros(8, 3)
    del state["head.7.weight"]
    save_file(state, weights)
    with pytest.raises(UserError, match=r"head\.0\.weight \(checkpoint \(8, 3\), model \(8, 16\)\)"):
        Audio2MeshModel.from_pretrained(tmp_path / "a2m")
    with pytest.raises(UserError, match="cannot load Audio2MeshModel from"):
        Audio2MeshModel.from_pretrained(tmp_path / "nowhere")


def test_training_step_updates_head_and_transformer_not_cnn():
    model = _tiny(tiny_wav2vec2_encoder()).train()
    target = torch.randn(1, 15, 468, 3, generator=torch.Generator().manual_seed(0))
    loss = (model(speechlike(8000), 15) - target).square().mean()
    loss.backward()
    assert model.head[-1].weight.grad.abs().sum() > 0
    assert model.audio_encoder.model.encoder.layers[0].attention.q_proj.weight.grad is not None
    assert all(p.grad is None for p in model.audio_encoder.model.feature_extractor.parameters())


def test_num_frames_follows_fps():
    model = Audio2MeshModel(encoder=tiny_mel_encoder(), head_hidden_dims=(8,), fps=25)
    assert model.num_frames(16000) == 25 and model.num_frames(16001) == 26
