"""``python -m lmk2video.init``: model folders from experiments, pretrained loading, strict folder loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from common.config import CONF_DIR, seed_everything
from common.errors import UserError
from lmk2video.building import build_pipeline
from lmk2video.init import run
from lmk2video.models.denoising_unet import DenoisingUNet
from lmk2video.pipeline import LandmarkVideoPipeline
from tests.conftest import PROJECT_ROOT
from tests.l2v_models import single_thread, tiny_model_config
from tests.l2v_tiny import assert_weights_equal, randomize_
from tests.test_configs import compose_resolved

NETWORKS = ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def init_config(experiment: str, out: Path, *overrides: str):
    return compose_resolved(
        CONF_DIR / "lmk2video", "init", [f"experiment={experiment}", f"out={out}", *overrides]
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init") / "tiny_stage2"
    run(init_config("tiny_stage2", out))
    return out


def test_tiny_experiments_write_folders_that_load_strictly(tiny_folder, tmp_path) -> None:
    stage2 = LandmarkVideoPipeline.from_pretrained(tiny_folder)
    assert stage2.denoising_unet.has_motion_modules and stage2.max_context_frames == 16
    assert (stage2.config.width, stage2.config.height, stage2.config.landmark_style) == (64, 64, "default")
    scheduler = stage2.scheduler.config
    assert type(stage2.scheduler).__name__ == "DDIMScheduler"
    assert (scheduler.prediction_type, scheduler.rescale_betas_zero_snr, scheduler.timestep_spacing) == (
        "v_prediction",
        True,
        "trailing",
    )
    # The seed makes the random initialisation repeatable.
    seed_everything(0)
    rebuilt = build_pipeline(tiny_model_config(motion=True))
    for name in NETWORKS:
        assert_weights_equal(getattr(stage2, name), getattr(rebuilt, name).state_dict())
    # Both UNets start from the same 2-D weights; the pose guider's outputs start at zero.
    assert_weights_equal(stage2.denoising_unet, stage2.reference_unet.state_dict())
    assert all(
        torch.count_nonzero(p) == 0
        for n, p in stage2.pose_guider.named_parameters()
        if n.startswith("zero_convs")
    )

    stage1_dir = tmp_path / "stage1"
    run(init_config("tiny_stage1", stage1_dir))
    stage1 = LandmarkVideoPipeline.from_pretrained(stage1_dir)
    assert not stage1.denoising_unet.has_motion_modules and stage1.max_context_frames is None


def test_existing_folder_needs_overwrite(tiny_folder, tmp_path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        run(init_config("tiny_stage1", out))
    assert (out / "keep.txt").exists()
    run(init_config("tiny_stage1", out, "overwrite=true"))
    assert not (out / "keep.txt").exists() and (out / "model_index.json").is_file()


def _damaged(tiny_folder: Path, tmp_path: Path, damage) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_folder, folder)
    damage(folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "denoising_unet" / "diffusion_pytorch_model.safetensors").unlink(), "denoising_unet"),
        (lambda f: (f / "image_encoder" / "model.safetensors").unlink(), "image_encoder"),
        (lambda f: shutil.rmtree(f / "vae"), "lacks the vae/ folder"),
        (lambda f: (f / "model_index.json").unlink(), "no model_index.json"),
        (
            lambda f: _edit_json(f / "pose_guider" / "config.json", block_out_channels=[4, 8, 8, 16]),
            "pose_guider",
        ),
        (lambda f: _edit_json(f / "vae" / "config.json", latent_channels=8), "vae"),
        (lambda f: _edit_json(f / "image_encoder" / "config.json", projection_dim=12), "image_encoder"),
        (lambda f: _edit_json(f / "model_index.json", pose_guider=["os", "system"]), "expected lmk2video"),
        (
            lambda f: _edit_json(f / "model_index.json", scheduler=["diffusers", "UNet2DModel"]),
            "not a diffusers",
        ),
        (
            lambda f: _edit_json(f / "model_index.json", _class_name="StableDiffusionPipeline"),
            "not a Landmark",
        ),
        (lambda f: _edit_json(f / "model_index.json", width=60), "width=60"),
        (lambda f: _edit_json(f / "model_index.json", landmark_style="sketch"), "unknown drawing style"),
        (lambda f: (f / "denoising_unet" / "config.json").write_text("{not json"), "denoising_unet"),
    ],
)
def test_damaged_folders_are_refused_with_one_clear_error(tiny_folder, tmp_path, damage, message) -> None:
    folder = _damaged(tiny_folder, tmp_path, damage)
    with pytest.raises(UserError, match=message) as err:
        LandmarkVideoPipeline.from_pretrained(folder)
    assert str(folder) in str(err.value)
    assert "\n" not in str(err.value)


def test_mismatched_components_are_refused(tiny_folder, tmp_path) -> None:
    """A pose guider built for another UNet loads on its own but does not fit the pipeline."""
    from lmk2video.models.pose_guider import PoseGuider

    def replace_guider(folder: Path) -> None:
        config = tiny_model_config()["pose_guider"]
        shutil.rmtree(folder / "pose_guider")
        PoseGuider(**config, unet_block_out_channels=(8, 16, 32)).save_pretrained(folder / "pose_guider")

    folder = _damaged(tiny_folder, tmp_path, replace_guider)
    with pytest.raises(UserError, match="pose_guider unet_block_out_channels"):
        LandmarkVideoPipeline.from_pretrained(folder)
    with pytest.raises(UserError, match="does not exist"):
        LandmarkVideoPipeline.from_pretrained(tmp_path / "nowhere")


def test_pretrained_sd15_vae_clip_and_animatediff_weights_are_loaded(tmp_path) -> None:
    config = tiny_model_config(motion=True)
    unet2d = randomize_(UNet2DConditionModel(**config["unet"]), 1)
    unet2d.save_pretrained(tmp_path / "sd15" / "unet")
    vae = AutoencoderKL(**config["vae"])
    vae.save_pretrained(tmp_path / "sd15" / "vae")
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"]))
    encoder.save_pretrained(tmp_path / "variations" / "image_encoder")
    motion_source = DenoisingUNet(**config["unet"], motion_module=config["motion_module"])
    randomize_(motion_source, 2, only="motion_modules")
    motion_source.save_motion_modules(tmp_path / "mm.ckpt")

    config["pretrained"] = {
        "sd15_path": "sd15",
        "image_encoder_path": "variations",
        "motion_module_path": "mm.ckpt",
    }
    pipe = build_pipeline(config, work_dir=tmp_path)
    head = ("conv_norm_out.", "conv_out.")
    unet_state = unet2d.state_dict()
    assert_weights_equal(pipe.reference_unet, {k: v for k, v in unet_state.items() if not k.startswith(head)})
    assert_weights_equal(pipe.denoising_unet, unet_state)
    assert_weights_equal(pipe.denoising_unet, motion_source.motion_module_state_dict())
    assert_weights_equal(pipe.vae, vae.state_dict())
    assert_weights_equal(pipe.image_encoder, encoder.state_dict())
    assert pipe.feature_extractor.crop_size == {"height": 32, "width": 32}

    stage1 = dict(config, motion_module=None, pretrained={"sd15_path": "sd15", "vae_path": "sd15/vae"})
    assert not build_pipeline(stage1, work_dir=tmp_path).denoising_unet.has_motion_modules
    with pytest.raises(UserError, match="motion_module is null"):
        build_pipeline(dict(stage1, pretrained={"motion_module_path": "mm.ckpt"}), work_dir=tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        build_pipeline(dict(config, pretrained={"sd15_path": "missing"}), work_dir=tmp_path)
    with pytest.raises(UserError, match=r"unknown model\.pretrained keys"):
        build_pipeline(dict(config, pretrained={"unet_path": "sd15"}), work_dir=tmp_path)
    (tmp_path / "sd15" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="has no diffusion_pytorch_model"):
        build_pipeline(config, work_dir=tmp_path)


def test_cli_needs_out_and_exits_2(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmk2video.init",
            "experiment=tiny_stage1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "out=DIR is required" in errors[0]
