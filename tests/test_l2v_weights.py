"""Saving and loading the lmk2video UNets: round trips, diffusers folders, AnimateDiff checkpoints, strictness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.weights import load_checkpoint
from lmk2video.models.denoising_unet import DenoisingUNet
from lmk2video.models.motion_module import sinusoidal_table
from lmk2video.models.reference_unet import ReferenceUNet
from tests.l2v_tiny import (
    TINY_MOTION,
    TINY_UNET,
    animatediff_checkpoint_shapes,
    assert_weights_equal,
    fold,
    random_state_dict,
    randomize_,
    tiny_denoising_config,
    unfold,
    video_inputs,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _mm_shapes() -> dict[str, tuple[int, ...]]:
    return animatediff_checkpoint_shapes(
        TINY_UNET["block_out_channels"], TINY_UNET["layers_per_block"], TINY_MOTION["max_position"]
    )


@pytest.fixture
def sd_unet(tmp_path: Path) -> tuple[Path, UNet2DConditionModel]:
    """A tiny diffusers UNet2DConditionModel saved as an SD pipeline folder (``root/unet``)."""
    unet = randomize_(UNet2DConditionModel(**TINY_UNET), seed=21).eval()
    unet.save_pretrained(tmp_path / "sd" / "unet")
    return tmp_path / "sd", unet


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = randomize_(DenoisingUNet(**tiny_denoising_config(motion=True)), seed=4).eval()
    model.save_pretrained(tmp_path / "denoiser")
    loaded = DenoisingUNet.from_pretrained(tmp_path / "denoiser").eval()
    assert loaded.config.motion_module == model.config.motion_module
    assert_weights_equal(loaded, model.state_dict())
    sample, timesteps, context = video_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(sample, timesteps, context).sample, model(sample, timesteps, context).sample
        )

    ref = randomize_(ReferenceUNet(**TINY_UNET), seed=5)
    ref.save_pretrained(tmp_path / "reference")
    ref_loaded = ReferenceUNet.from_pretrained(tmp_path / "reference")
    assert ref_loaded.conv_out.__class__.__name__ == "Identity"
    assert ref_loaded.state_dict().keys() == ref.state_dict().keys()
    assert_weights_equal(ref_loaded, ref.state_dict())


def test_from_pretrained_is_strict(tmp_path: Path) -> None:
    model = DenoisingUNet(**tiny_denoising_config(motion=True))
    model.save_pretrained(tmp_path / "extra")
    _edit_weights(tmp_path / "extra", lambda s: s.update({"up_blocks.0.surplus.weight": torch.zeros(2)}))
    with pytest.raises(UserError, match=r"1 unexpected keys: up_blocks\.0\.surplus\.weight"):
        DenoisingUNet.from_pretrained(tmp_path / "extra")

    model.save_pretrained(tmp_path / "missing")
    _edit_weights(tmp_path / "missing", lambda s: s.pop("mid_block.resnets.1.conv2.weight"))
    with pytest.raises(UserError, match=r"1 missing keys: mid_block\.resnets\.1\.conv2\.weight"):
        DenoisingUNet.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["pipeline", "unet", "bin"])
def test_from_pretrained_2d_equals_the_diffusers_unet(sd_unet, tmp_path: Path, layout: str) -> None:
    root, unet = sd_unet
    path = root if layout == "pipeline" else root / "unet"
    if layout == "bin":
        path = tmp_path / "bin_unet"
        shutil.copy(root / "unet" / "config.json", path.mkdir() or path / "config.json")
        torch.save(unet.state_dict(), path / "diffusion_pytorch_model.bin")
    model = DenoisingUNet.from_pretrained_2d(path, **{"motion_module": dict(TINY_MOTION)}).eval()
    assert model.has_motion_modules
    for name, tensor in model.motion_module_state_dict().items():  # freshly initialised, not left empty
        assert torch.isfinite(tensor).all(), name
        if ".proj_out." in name:
            assert not tensor.any(), name
        elif name.endswith(".pe"):
            torch.testing.assert_close(
                tensor, sinusoidal_table(tensor.shape[1], tensor.shape[2]), rtol=0, atol=0
            )
        elif name.endswith(".weight") and tensor.ndim == 2:
            assert 0 < tensor.std() < 1, name
    assert_weights_equal(model, unet.state_dict())
    sample, timesteps, context = video_inputs()
    frames = sample.shape[2]
    with torch.no_grad():
        ours = model(sample, timesteps, context).sample  # fresh motion modules are the identity
        theirs = unet(
            fold(sample), timesteps.repeat_interleave(frames), context.repeat_interleave(frames, 0)
        ).sample
    torch.testing.assert_close(ours, unfold(theirs, 2), rtol=1e-5, atol=1e-5)


def test_from_pretrained_2d_defaults_to_animatediff_v2_motion_modules(sd_unet) -> None:
    root, _ = sd_unet
    model = DenoisingUNet.from_pretrained_2d(root, motion_module={"num_attention_heads": 2})
    assert model.config.motion_module["max_position"] == 32
    assert model.config.motion_module["mid_block"] is True
    assert not DenoisingUNet.from_pretrained_2d(root, motion_module=None).has_motion_modules
    with pytest.raises(UserError, match=r"unknown DenoisingUNet config overrides \['block_channels'\]"):
        DenoisingUNet.from_pretrained_2d(root, block_channels=(1,))
    with pytest.raises(UserError, match=r"unknown motion_module config keys \['heads'\]"):
        DenoisingUNet.from_pretrained_2d(root, motion_module={"heads": 2})


def test_from_pretrained_2d_is_strict(sd_unet) -> None:
    root, _ = sd_unet
    folder = root / "unet"
    _edit_weights(folder, lambda s: s.pop("down_blocks.1.attentions.0.proj_in.weight"))
    with pytest.raises(
        UserError, match=r"1 missing keys: down_blocks\.1\.attentions\.0\.proj_in\.weight"
    ) as err:
        DenoisingUNet.from_pretrained_2d(root, motion_module=dict(TINY_MOTION))
    assert str(folder) in str(err.value)
    _edit_weights(
        folder, lambda s: s.update({"down_blocks.1.attentions.0.proj_in.weight": torch.zeros(16, 16, 1, 1)})
    )
    _edit_weights(folder, lambda s: s.update({"lora.weight": torch.zeros(1)}))
    with pytest.raises(UserError, match=r"1 unexpected keys: lora\.weight"):
        DenoisingUNet.from_pretrained_2d(root, motion_module=dict(TINY_MOTION))


def test_from_pretrained_2d_refuses_unsupported_unets(sd_unet, tmp_path: Path) -> None:
    root, _ = sd_unet
    config = json.loads((root / "unet" / "config.json").read_text())
    config["addition_embed_type"] = "text_time"
    (root / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="unsupported UNet settings addition_embed_type='text_time'"):
        DenoisingUNet.from_pretrained_2d(root)
    with pytest.raises(UserError, match="not a diffusers UNet folder"):
        DenoisingUNet.from_pretrained_2d(tmp_path)


def test_reference_unet_from_pretrained_2d_drops_only_the_output_head(sd_unet) -> None:
    root, unet = sd_unet
    ref = ReferenceUNet.from_pretrained_2d(root)
    expected = {
        k: v for k, v in unet.state_dict().items() if not k.startswith(("conv_norm_out.", "conv_out."))
    }
    assert ref.state_dict().keys() == expected.keys()
    assert_weights_equal(ref, expected)
    _edit_weights(root / "unet", lambda s: s.pop("time_embedding.linear_1.bias"))
    with pytest.raises(UserError, match=r"missing keys: time_embedding\.linear_1\.bias"):
        ReferenceUNet.from_pretrained_2d(root)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_load_animatediff_motion_modules(tmp_path: Path, suffix: str) -> None:
    state = random_state_dict(_mm_shapes(), seed=8)
    path = tmp_path / f"mm{suffix}"
    if suffix == ".ckpt":  # training checkpoints nest the weights and carry metadata
        torch.save({"state_dict": state, "global_step": 1000}, path)
    else:
        save_file(state, str(path))
    model = DenoisingUNet(**tiny_denoising_config(motion=True))
    before = {k: v.clone() for k, v in model.state_dict().items() if ".motion_modules." not in k}
    model.load_motion_modules(path)
    loaded = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    for key, value in before.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_motion_module_loading_is_strict(tmp_path: Path) -> None:
    model = DenoisingUNet(**tiny_denoising_config(motion=True))
    state = random_state_dict(_mm_shapes(), seed=8)
    dropped = "up_blocks.1.motion_modules.2.temporal_transformer.proj_out.weight"
    torch.save({k: v for k, v in state.items() if k != dropped}, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=f"1 missing keys: {dropped.replace('.', '[.]')}"):
        model.load_motion_modules(tmp_path / "missing.pth")
    torch.save({**state, "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"1 unexpected keys: down_blocks\.0\.resnets\.0\.conv1\.weight"):
        model.load_motion_modules(tmp_path / "extra.pth")
    no_mid = {k: v for k, v in state.items() if not k.startswith("mid_block.")}  # AnimateDiff v1 layout
    torch.save(no_mid, tmp_path / "v1.pth")
    with pytest.raises(UserError, match=r"26 missing keys: mid_block\.motion_modules\.0"):  # all but 2 tables
        model.load_motion_modules(tmp_path / "v1.pth")
    longer = {k: (torch.zeros(1, 24, v.shape[2]) if k.endswith(".pe") else v) for k, v in state.items()}
    torch.save(longer, tmp_path / "pe24.pth")
    with pytest.raises(UserError, match=r"positional tables for 24 frames .* set max_position=24"):
        model.load_motion_modules(tmp_path / "pe24.pth")
    with pytest.raises(UserError, match="has none"):
        DenoisingUNet(**tiny_denoising_config(motion=False)).load_motion_modules(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="does not exist"):
        model.load_motion_modules(tmp_path / "nope.ckpt")


def test_positional_tables_are_optional(tmp_path: Path) -> None:
    model = DenoisingUNet(**tiny_denoising_config(motion=True))
    tables = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".pe")}
    state = {k: v for k, v in random_state_dict(_mm_shapes(), seed=8).items() if not k.endswith(".pe")}
    torch.save(state, tmp_path / "no_pe.pth")
    model.load_motion_modules(tmp_path / "no_pe.pth")
    assert_weights_equal(model, tables)


def test_save_motion_modules_round_trip(tmp_path: Path) -> None:
    model = randomize_(DenoisingUNet(**tiny_denoising_config(motion=True)), seed=3, only="motion_modules")
    model.save_motion_modules(tmp_path / "mm.safetensors")
    model.save_motion_modules(tmp_path / "mm.pth")
    for name in ("mm.safetensors", "mm.pth"):
        state = load_checkpoint(tmp_path / name)
        assert {k: tuple(v.shape) for k, v in state.items()} == _mm_shapes()
        fresh = DenoisingUNet(**tiny_denoising_config(motion=True))
        fresh.load_motion_modules(tmp_path / name)
        assert_weights_equal(fresh, model.motion_module_state_dict())


def test_unreadable_checkpoints_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"cannot read checkpoint .*junk\.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(UserError, match="unknown extension"):
        load_checkpoint(tmp_path / "weights.npz")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        load_checkpoint(tmp_path / "list.pth")


def test_plain_from_pretrained_on_a_stable_diffusion_folder_points_to_from_pretrained_2d(sd_unet) -> None:
    root, _ = sd_unet
    with pytest.raises(
        UserError, match=r"missing keys: .*motion_modules.*use DenoisingUNet\.from_pretrained_2d"
    ):
        DenoisingUNet.from_pretrained(root / "unet", motion_module=dict(TINY_MOTION))
    with pytest.raises(
        UserError, match=r"unexpected keys: conv_norm_out\.bias.*use ReferenceUNet\.from_pretrained_2d"
    ):
        ReferenceUNet.from_pretrained(root / "unet")
