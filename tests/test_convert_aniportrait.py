"""AniPortrait checkpoint conversion: key mapping, strictness both ways, identical outputs.

The reference modules below re-create the attribute names and shapes of AniPortrait's
``Audio2MeshModel`` / ``Audio2PoseModel`` (``src/audio_models/``) from torch/transformers parts,
with tiny sizes, and compute what AniPortrait's ``infer`` computes: wav2vec2 CNN features
resampled to the frame count before the transformer; for the pose, a full re-run of
``nn.TransformerDecoder`` over the growing prefix for every frame, with the ALiBi causal mask
(``period=1``) and the one-to-one audio alignment mask.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from audio2lmk.convert import (
    convert_aniportrait_audio2mesh,
    convert_aniportrait_audio2pose,
    infer_wav2vec2_config,
    load_checkpoint,
)
from audio2lmk.models.audio2pose import Audio2PoseModel
from common.errors import UserError
from tests.audio2lmk_tiny import (
    one_torch_thread,  # noqa: F401
    randomize_,
    speechlike,
    tiny_wav2vec2_config,
)

HEADS = 8  # AniPortrait hard-codes 8 decoder heads
LATENT = 16
TABLE = 600


def _normalised(audio: torch.Tensor) -> torch.Tensor:
    """AniPortrait's input: Wav2Vec2FeatureExtractor(do_normalize=True) on the 16 kHz waveform."""
    from transformers import Wav2Vec2FeatureExtractor

    values = Wav2Vec2FeatureExtractor(do_normalize=True)(audio[0].numpy(), sampling_rate=16000).input_values
    return torch.tensor(np.asarray(values), dtype=torch.float32).reshape(1, -1)


def _wav2vec2_frames(w2v, audio: torch.Tensor, seq_len: int) -> torch.Tensor:
    features = w2v.feature_extractor(audio)  # (B, C, L)
    features = F.interpolate(features, size=seq_len, align_corners=True, mode="linear").transpose(1, 2)
    hidden, _ = w2v.feature_projection(features)
    return w2v.encoder(hidden).last_hidden_state


class ReferenceMesh(nn.Module):
    """AniPortrait's Audio2MeshModel layout: audio_encoder, in_fn, out_fn."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import Wav2Vec2Model

        self.audio_encoder = Wav2Vec2Model(config)
        self.in_fn = nn.Linear(config.hidden_size, 8)
        self.out_fn = nn.Linear(8, 1404)

    def infer(self, audio: torch.Tensor, seq_len: int) -> torch.Tensor:
        return self.out_fn(self.in_fn(_wav2vec2_frames(self.audio_encoder, audio, seq_len)))


class _Table(nn.Module):
    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        position = torch.arange(length).float()[:, None]
        frequency = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
        table = torch.zeros(length, dim)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
        self.register_buffer("pe", table[None])


class ReferencePose(nn.Module):
    """AniPortrait's Audio2PoseModel layout: audio_encoder, pose_map, in_fn, PPE, transformer_decoder,
    pose_map_r, id_embed."""

    def __init__(self, config, num_layers: int = 2, num_styles: int = 10) -> None:
        super().__init__()
        from transformers import Wav2Vec2Model

        self.audio_encoder = Wav2Vec2Model(config)
        self.pose_map = nn.Linear(6, LATENT)
        self.in_fn = nn.Linear(config.hidden_size, LATENT)
        self.PPE = _Table(LATENT, TABLE)
        layer = nn.TransformerDecoderLayer(LATENT, HEADS, dim_feedforward=2 * LATENT, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=num_layers)
        self.pose_map_r = nn.Linear(LATENT, 6)
        self.id_embed = nn.Embedding(num_styles, LATENT)

    @staticmethod
    def alibi_mask(length: int) -> torch.Tensor:
        slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(HEADS)])  # 8 heads: 1/2 .. 1/256
        distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]
        mask = -slopes[:, None, None] * distance.float()
        return mask.masked_fill(distance < 0, float("-inf"))

    def infer(self, audio: torch.Tensor, seq_len: int, style: int) -> torch.Tensor:
        memory = self.in_fn(_wav2vec2_frames(self.audio_encoder, audio, seq_len))
        style_embedding = self.id_embed(torch.tensor([style]))[:, None]
        pose_emb = self.pose_map(torch.zeros(1, 1, 6))
        mask = self.alibi_mask(seq_len)
        memory_mask = ~torch.eye(seq_len, dtype=torch.bool)  # True: not attended
        for _ in range(seq_len):
            length = pose_emb.shape[1]
            inputs = pose_emb + self.PPE.pe[:, :length] + style_embedding
            out = self.transformer_decoder(
                inputs, memory, tgt_mask=mask[:, :length, :length], memory_mask=memory_mask[:length]
            )
            out = self.pose_map_r(out)
            pose_emb = torch.cat([pose_emb, self.pose_map(out[:, -1:])], dim=1)
        return out


def _old_weight_norm_names(state: dict) -> dict:
    """Rename the positional convolution's weight norm as transformers 4.30 / torch 2.0 saved it."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        renamed[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return renamed


@pytest.fixture
def mesh_reference() -> ReferenceMesh:
    torch.manual_seed(0)
    return randomize_(ReferenceMesh(tiny_wav2vec2_config()), seed=1, scale=0.2).eval()


@pytest.fixture
def pose_reference() -> ReferencePose:
    torch.manual_seed(0)
    return randomize_(ReferencePose(tiny_wav2vec2_config()), seed=2, scale=0.2).eval()  # PPE.pe is a buffer


@pytest.mark.parametrize("old_names", [True, False], ids=["weight_g_v", "parametrizations"])
def test_audio2mesh_conversion_matches_aniportrait(mesh_reference, old_names):
    state = mesh_reference.state_dict()
    if old_names:
        state = _old_weight_norm_names(state)
        assert "audio_encoder.encoder.pos_conv_embed.conv.weight_g" in state
    model = convert_aniportrait_audio2mesh(state, wav2vec2_config={"num_attention_heads": 2})
    assert model.config.head_hidden_dims == (8,) and model.config.head_activation is None
    audio = speechlike(int(1.3 * 16000), seed=3)
    frames = model.num_frames(audio.shape[1])
    with torch.no_grad():
        expected = mesh_reference.infer(_normalised(audio), frames).reshape(1, frames, 468, 3)
        torch.testing.assert_close(model(audio), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("old_names", [True, False], ids=["weight_g_v", "parametrizations"])
def test_audio2pose_conversion_matches_aniportrait(pose_reference, old_names):
    state = pose_reference.state_dict()
    assert "PPE.pe" in state  # a persistent buffer: part of AniPortrait's file
    if old_names:
        state = _old_weight_norm_names(state)
    model = convert_aniportrait_audio2pose(state, wav2vec2_config={"num_attention_heads": 2})
    config = model.config
    assert (config.positional_encoding, config.attention_span, config.cross_attention_window) == (
        "sinusoidal",
        600,
        0,
    )
    assert (config.hidden_size, config.num_layers, config.ffn_dim, config.num_styles) == (LATENT, 2, 32, 10)
    audio = speechlike(int(0.7 * 16000), seed=4)
    frames = model.num_frames(audio.shape[1])
    with torch.no_grad():
        expected = pose_reference.infer(_normalised(audio), frames, style=7)
    for use_cache in (True, False):
        torch.testing.assert_close(
            model.generate(audio, style=7, use_cache=use_cache), expected, atol=1e-5, rtol=0
        )


def test_converted_model_round_trips_through_save_pretrained(tmp_path, pose_reference):
    model = convert_aniportrait_audio2pose(
        pose_reference.state_dict(), wav2vec2_config={"num_attention_heads": 2}
    )
    model.save_pretrained(tmp_path / "a2p")
    loaded = Audio2PoseModel.from_pretrained(tmp_path / "a2p")
    audio = speechlike(8000, seed=5)
    torch.testing.assert_close(
        loaded.generate(audio, seed=1), model.generate(audio, seed=1), atol=1e-6, rtol=0
    )


def test_strict_both_ways_with_aniportrait_names(pose_reference, mesh_reference):
    heads = {"num_attention_heads": 2}
    state = pose_reference.state_dict()
    del state["transformer_decoder.layers.1.norm3.bias"]
    state["transformer_decoder.layers.0.extra.weight"] = torch.zeros(2)
    with pytest.raises(UserError) as info:
        convert_aniportrait_audio2pose(state, wav2vec2_config=heads)
    message = str(info.value)
    assert "missing 1 keys: transformer_decoder.layers.1.norm3.bias" in message
    assert "unexpected 1 keys: transformer_decoder.layers.0.extra.weight" in message

    state = mesh_reference.state_dict()
    del state["audio_encoder.encoder.layers.1.attention.k_proj.bias"]
    with pytest.raises(
        UserError, match=r"missing 1 keys: audio_encoder\.encoder\.layers\.1\.attention\.k_proj\.bias"
    ):
        convert_aniportrait_audio2mesh(state, wav2vec2_config=heads)

    state = mesh_reference.state_dict()
    state["out_fn.weight"] = torch.zeros(1404, 9)
    with pytest.raises(
        UserError, match=r"shape mismatches: head\.1\.weight \(checkpoint \(1404, 9\), model \(1404, 8\)\)"
    ):
        convert_aniportrait_audio2mesh(state, wav2vec2_config=heads)


def test_wrong_files_and_tables(tmp_path, pose_reference, mesh_reference):
    with pytest.raises(UserError, match=r"lacks in_fn\.weight; is it AniPortrait's audio2mesh\.pt"):
        convert_aniportrait_audio2mesh({"x": torch.zeros(1)})
    with pytest.raises(UserError, match=r"lacks pose_map\.weight; is it AniPortrait's audio2pose\.pt"):
        convert_aniportrait_audio2pose(mesh_reference.state_dict())
    state = pose_reference.state_dict()
    state["PPE.pe"] = state["PPE.pe"] + 0.01
    with pytest.raises(UserError, match=r"PPE\.pe is not the sinusoidal table"):
        convert_aniportrait_audio2pose(state, wav2vec2_config={"num_attention_heads": 2})
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "audio2pose.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"cannot read checkpoint .*junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_checkpoint_file_and_encoder_from_a_pretrained_folder(tmp_path, mesh_reference):
    """A file without audio_encoder.* weights takes them from `wav2vec2=` (AniPortrait's non-strict load)."""
    mesh_reference.audio_encoder.save_pretrained(tmp_path / "w2v")
    head_only = {k: v for k, v in mesh_reference.state_dict().items() if not k.startswith("audio_encoder.")}
    torch.save(head_only, tmp_path / "audio2mesh.pt")
    with pytest.raises(UserError, match=r"has no audio_encoder\.\* .*wav2vec2=NAME_OR_FOLDER"):
        convert_aniportrait_audio2mesh(tmp_path / "audio2mesh.pt")
    model = convert_aniportrait_audio2mesh(tmp_path / "audio2mesh.pt", wav2vec2=str(tmp_path / "w2v"))
    audio = speechlike(9000, seed=6)
    frames = model.num_frames(audio.shape[1])
    with torch.no_grad():
        expected = mesh_reference.infer(_normalised(audio), frames).reshape(1, frames, 468, 3)
        torch.testing.assert_close(model(audio), expected, atol=1e-5, rtol=1e-4)
    torch.save(mesh_reference.state_dict(), tmp_path / "full.pt")
    with pytest.raises(UserError, match="carries its own wav2vec2 weights"):
        convert_aniportrait_audio2mesh(tmp_path / "full.pt", wav2vec2=str(tmp_path / "w2v"))


def test_infer_wav2vec2_config_from_shapes():
    from transformers import Wav2Vec2Model

    config = tiny_wav2vec2_config(conv_bias=True, feat_extract_norm="layer", mask_time_prob=0.0)
    state = Wav2Vec2Model(config).state_dict()
    inferred = infer_wav2vec2_config(state, {"num_attention_heads": 2})
    for name in ("hidden_size", "num_hidden_layers", "intermediate_size", "conv_bias", "feat_extract_norm"):
        assert getattr(inferred, name) == getattr(config, name), name
    assert list(inferred.conv_dim) == list(config.conv_dim)
    assert list(inferred.conv_kernel) == list(config.conv_kernel)
    assert inferred.num_conv_pos_embedding_groups == 2 and inferred.mask_time_prob == 0.0
    with pytest.raises(UserError, match="not divisible by 12 heads"):
        infer_wav2vec2_config(state)


def test_cli_writes_an_inference_folder(tmp_path, mesh_reference, pose_reference, capsys):
    """python -m audio2lmk.convert aniportrait: both files -> a folder audio2lmk.infer loads, strict."""
    import json

    from audio2lmk.convert import ANIPORTRAIT_POSE_POSTPROCESS, main
    from audio2lmk.inference import audio_to_landmarks, load_audio2lmk
    from common.lmkfile import LandmarkSequence

    torch.save(mesh_reference.state_dict(), tmp_path / "audio2mesh.pt")
    torch.save(_old_weight_norm_names(pose_reference.state_dict()), tmp_path / "audio2pose.pt")
    (tmp_path / "w2v.json").write_text(json.dumps({"num_attention_heads": 2}))
    out = tmp_path / "model"
    args = ["aniportrait", "--audio2mesh", str(tmp_path / "audio2mesh.pt"), "--audio2pose",
            str(tmp_path / "audio2pose.pt"), "--wav2vec2-config", str(tmp_path / "w2v.json"), "-o", str(out)]  # fmt: skip
    assert main(args) == 0 and "wrote" in capsys.readouterr().out

    loaded = load_audio2lmk(out)
    assert loaded.pose_postprocess == ANIPORTRAIT_POSE_POSTPROCESS and loaded.fps == 30.0
    expected = convert_aniportrait_audio2mesh(
        mesh_reference.state_dict(), wav2vec2_config={"num_attention_heads": 2}
    )
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(loaded.mesh_model.state_dict()[key], value, atol=0, rtol=0)
    assert loaded.pose_model.config.num_styles == 10
    reference = LandmarkSequence(
        mesh=np.zeros((1, 468, 3), np.float32),
        pose=np.zeros((1, 6), np.float32),
        fps=30.0,
        image_size=(64, 64),
    )
    seq = audio_to_landmarks(loaded, speechlike(8000, seed=3)[0].numpy(), reference, style=3, seed=0)
    assert seq.num_frames == 15 and np.isfinite(seq.mesh).all()

    with pytest.raises(SystemExit) as again:  # the folder exists
        main(args)
    assert again.value.code == 2
    with pytest.raises(SystemExit) as nothing:
        main(["aniportrait", "-o", str(tmp_path / "none")])
    assert nothing.value.code == 2 and not (tmp_path / "none").exists()
    assert "--audio2mesh FILE" in capsys.readouterr().err


def test_from_hub_converts_what_it_downloads_offline(
    tmp_path, mesh_reference, pose_reference, capsys, monkeypatch
):
    """--from-hub: both files and wav2vec2's config come from a hub cache (offline); the result equals
    converting the files by hand; a file without wav2vec2 weights also fetches wav2vec2's weights."""
    from audio2lmk.convert import ANIPORTRAIT_REPO, WAV2VEC2_REPO, main
    from audio2lmk.inference import load_audio2lmk
    from tests.hub_cache import put_in_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    for name, reference in (("audio2mesh", mesh_reference), ("audio2pose", pose_reference)):
        torch.save(reference.state_dict(), tmp_path / f"{name}.pt")
        put_in_hub_cache(cache, ANIPORTRAIT_REPO, f"{name}.pt", tmp_path / f"{name}.pt")
    mesh_reference.audio_encoder.save_pretrained(tmp_path / "w2v")  # config.json: 2 attention heads
    put_in_hub_cache(cache, WAV2VEC2_REPO, "config.json", tmp_path / "w2v" / "config.json")

    out = tmp_path / "model"
    assert main(["aniportrait", "--from-hub", "-o", str(out), "--cache-dir", str(cache)]) == 0
    loaded = load_audio2lmk(out)
    expected = convert_aniportrait_audio2mesh(
        mesh_reference.state_dict(), wav2vec2_config=mesh_reference.audio_encoder.config.to_dict()
    )
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(loaded.mesh_model.state_dict()[key], value, atol=0, rtol=0)
    assert loaded.pose_model is not None and loaded.pose_model.config.num_styles == 10

    # Files without audio_encoder.* weights: wav2vec2's weights are needed, and missing from the cache.
    for name, reference in (("audio2mesh", mesh_reference), ("audio2pose", pose_reference)):
        head = {k: v for k, v in reference.state_dict().items() if not k.startswith("audio_encoder.")}
        torch.save(head, tmp_path / f"{name}.pt")
        put_in_hub_cache(cache, ANIPORTRAIT_REPO, f"{name}.pt", tmp_path / f"{name}.pt")
    second = tmp_path / "second"
    with pytest.raises(SystemExit) as exit_info:
        main(["aniportrait", "--from-hub", "-o", str(second), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not second.exists()
    assert f"preprocessor_config.json of {WAV2VEC2_REPO}@" in err and "HF_HUB_OFFLINE" in err
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "w2v")
    for name in ("preprocessor_config.json", "model.safetensors"):
        put_in_hub_cache(cache, WAV2VEC2_REPO, name, tmp_path / "w2v" / name)
    assert main(["aniportrait", "--from-hub", "-o", str(second), "--cache-dir", str(cache)]) == 0
    rebuilt = load_audio2lmk(second).mesh_model.state_dict()
    for key, value in expected.state_dict().items():  # the encoder now comes from the wav2vec2 weights
        torch.testing.assert_close(rebuilt[key], value, atol=0, rtol=0)

    with pytest.raises(SystemExit) as mixed:
        main(["aniportrait", "--from-hub", "--audio2mesh", "x.pt", "-o", str(second)])
    assert mixed.value.code == 2 and "drop --audio2mesh" in capsys.readouterr().err
