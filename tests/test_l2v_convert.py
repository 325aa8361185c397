"""``python -m lmk2video.convert aniportrait``: key mappings, strictness, atomic output, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from common.errors import UserError
from lmk2video.convert import (
    REPORT_NAME,
    convert_aniportrait,
    convert_aniportrait_denoising_unet,
    convert_aniportrait_motion_module,
    convert_aniportrait_reference_unet,
    main,
)
from lmk2video.models.denoising_unet import DenoisingUNet
from lmk2video.models.reference_unet import ReferenceUNet
from tests.l2v_tiny import (
    TINY_MOTION,
    TINY_UNET,
    animatediff_checkpoint_shapes,
    assert_weights_equal,
    random_state_dict,
    randomize_,
    video_inputs,
)

HEAD = ("conv_norm_out.", "conv_out.")
TINY_POSE_GUIDER = {"num_attention_heads": 2, "norm_num_groups": 4}


def _aniportrait_unet_state_dicts(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts named and shaped like AniPortrait's UNet files for the tiny architecture.

    AniPortrait's UNet3DConditionModel (stage 1, saved as denoising_unet.pth) has exactly diffusers'
    UNet2DConditionModel keys (InflatedConv3d is an nn.Conv2d, Transformer3DModel keeps the 2D names, no
    temporal attention); its reference UNet copy deletes conv_norm_out/conv_out; motion_module.pth holds
    the AnimateDiff-layout keys of the stage-2 UNet.
    """
    denoising = randomize_(UNet2DConditionModel(**TINY_UNET), seed).state_dict()
    reference = randomize_(UNet2DConditionModel(**TINY_UNET), seed + 1).state_dict()
    reference = {k: v for k, v in reference.items() if not k.startswith(HEAD)}
    motion = random_state_dict(
        animatediff_checkpoint_shapes(
            TINY_UNET["block_out_channels"], TINY_UNET["layers_per_block"], TINY_MOTION["max_position"]
        ),
        seed + 2,
    )
    return {"denoising_unet": denoising, "reference_unet": reference, "motion_module": motion}


def _aniportrait_release(seed: int) -> tuple[dict[str, dict[str, torch.Tensor]], torch.nn.Module]:
    """The four AniPortrait state dicts for the tiny architecture, and the pose guider they hold."""
    from lmk2video.models.pose_guider import PoseGuider, convert_to_aniportrait_pose_guider

    states = _aniportrait_unet_state_dicts(seed)
    guider = PoseGuider(
        unet_block_out_channels=TINY_UNET["block_out_channels"],
        block_out_channels=(16, 32, 64, 128),
        norm_num_groups=TINY_POSE_GUIDER["norm_num_groups"],
        num_attention_heads=TINY_POSE_GUIDER["num_attention_heads"],
        attention_head_dim=4,
        reference_attention=True,
        architecture="aniportrait",
    )
    randomize_(guider, seed=seed + 7)
    states["pose_guider"] = convert_to_aniportrait_pose_guider(guider.state_dict())
    return states, guider


def _write_source(folder: Path, states: dict[str, dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, state in states.items():
        torch.save(state, folder / f"{name}.pth")
    return folder


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    config = {"unet": TINY_UNET, "motion_module": TINY_MOTION, "pose_guider": TINY_POSE_GUIDER}
    path.write_text(json.dumps(config))
    return path


def test_unet_key_mappings() -> None:
    states = _aniportrait_unet_state_dicts()
    stray = {
        **states["denoising_unet"],
        "down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": torch.ones(8),
    }
    denoising = convert_aniportrait_denoising_unet(stray, states["motion_module"])
    assert denoising.keys() == states["denoising_unet"].keys() | states["motion_module"].keys()
    assert (
        denoising["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"]
        is (states["motion_module"]["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"])
    )
    assert all(denoising[k] is v for k, v in states["denoising_unet"].items())
    with torch.device("meta"):
        model = DenoisingUNet(**TINY_UNET, motion_module=TINY_MOTION)
    assert {k: tuple(v.shape) for k, v in denoising.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }

    full_reference = randomize_(UNet2DConditionModel(**TINY_UNET), 5).state_dict()
    assert (
        convert_aniportrait_reference_unet(full_reference).keys()
        == ReferenceUNet(**TINY_UNET).state_dict().keys()
    )
    with pytest.raises(UserError, match=r"not motion-module keys: conv_in\.weight"):
        convert_aniportrait_motion_module({**states["motion_module"], "conv_in.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "denoising_unet",
            lambda s: s.update({"mid_block.extra.weight": torch.zeros(1)}),
            r"1 unexpected keys: mid_block\.extra\.weight",
        ),
        ("denoising_unet", lambda s: s.pop("conv_in.bias"), r"1 missing keys: conv_in\.bias"),
        (
            "motion_module",
            lambda s: s.pop("mid_block.motion_modules.0.temporal_transformer.proj_in.bias"),
            r"missing keys: mid_block\.motion_modules\.0\.temporal_transformer\.proj_in\.bias",
        ),
        (
            "reference_unet",
            lambda s: s.pop("up_blocks.1.attentions.0.proj_in.weight"),
            r"missing keys: up_blocks\.1\.attentions\.0\.proj_in\.weight",
        ),
        (
            "reference_unet",
            lambda s: s.update({"conv_in.weight": torch.zeros(8, 4, 1, 1)}),
            r"shape mismatches: conv_in\.weight \(checkpoint \(8, 4, 1, 1\), model \(8, 4, 3, 3\)\)",
        ),
    ],
    ids=["extra-2d-key", "missing-2d-key", "missing-motion-key", "missing-reference-key", "wrong-shape"],
)
def test_conversion_is_strict_and_writes_nothing_on_error(
    tmp_path: Path, file: str, edit, message: str
) -> None:
    states = _aniportrait_unet_state_dicts()
    edit(states[file])
    src = _write_source(tmp_path / "src", states)
    torch.save({"unused": torch.zeros(1)}, src / "pose_guider.pth")  # never reached: the UNets fail first
    dst = tmp_path / "out" / "converted"
    with pytest.raises(UserError, match=message) as err:
        convert_aniportrait(src, dst, json.loads(_tiny_config(tmp_path).read_text()))
    assert f"{file}.pth" in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_cli_reports_bad_input_with_exit_code_2(tmp_path: Path, capsys) -> None:
    src = _write_source(tmp_path / "src", {"denoising_unet": {"a": torch.zeros(1)}})
    dst = tmp_path / "converted"
    with pytest.raises(SystemExit) as exit_info:
        main(["aniportrait", str(src), str(dst)])
    assert exit_info.value.code == 2
    assert "lacks reference_unet.pth, pose_guider.pth, motion_module.pth" in capsys.readouterr().err
    assert not dst.exists()

    dst.mkdir()
    _write_source(src, _aniportrait_unet_state_dicts())
    torch.save({"a": torch.zeros(1)}, src / "pose_guider.pth")
    with pytest.raises(SystemExit):
        main(["aniportrait", str(src), str(dst)])
    assert "already exists; choose another output folder or pass --overwrite" in capsys.readouterr().err

    (tmp_path / "bad.json").write_text('{"vae": {}}')
    with pytest.raises(SystemExit):
        main(["aniportrait", str(src), str(tmp_path / "new"), "--config", str(tmp_path / "bad.json")])
    assert "optional sections unet, motion_module, pose_guider" in capsys.readouterr().err


def test_round_trip_through_the_cli(tmp_path: Path, capsys) -> None:
    from lmk2video.models.pose_guider import PoseGuider

    states, guider = _aniportrait_release(seed=0)
    src = _write_source(tmp_path / "src", states)
    dst = tmp_path / "converted"
    config = _tiny_config(tmp_path)

    assert main(["aniportrait", str(src), str(dst), "--config", str(config)]) == 0
    assert "wrote" in capsys.readouterr().out
    denoiser = DenoisingUNet.from_pretrained(dst / "denoising_unet").eval()
    reference = ReferenceUNet.from_pretrained(dst / "reference_unet").eval()
    loaded_guider = PoseGuider.from_pretrained(dst / "pose_guider").eval()
    assert_weights_equal(denoiser, {**states["denoising_unet"], **states["motion_module"]})
    assert_weights_equal(reference, states["reference_unet"])
    assert_weights_equal(loaded_guider, guider.state_dict())

    report = (dst / REPORT_NAME).read_text()
    for key in states["denoising_unet"]:
        assert f"  {key} <- denoising_unet.pth:{key}\n" in report
    for key in states["motion_module"]:
        assert f"  {key} <- motion_module.pth:{key}\n" in report
    for key in states["reference_unet"]:
        assert f"  {key} <- reference_unet.pth:{key}\n" in report
    assert "(computed by the converter)" not in report

    # The converted parts work together: reference bank + pose residuals + motion modules.
    sample, timesteps, context = video_inputs(batch=1, frames=2)
    landmarks = torch.rand(1, 3, 2, 64, 64) * 2 - 1
    with torch.no_grad():
        bank = reference.compute_reference_hidden_states(torch.randn(1, 4, 8, 8), context)
        pose = loaded_guider(landmarks, landmarks[:, :, 0])
        out = denoiser(
            sample,
            timesteps,
            context,
            reference_hidden_states=bank,
            down_block_res_samples=pose.down_block_res_samples,
            mid_block_res_sample=pose.mid_block_res_sample,
        ).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()

    assert main(["aniportrait", str(src), str(dst), "--config", str(config), "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == [
        "conversion_report.txt",
        "denoising_unet",
        "pose_guider",
        "reference_unet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "src", "tiny.json"]


def test_complete_model_folder_loads_in_the_generation_pipeline(tmp_path: Path) -> None:
    """--vae and --image-encoder make DST a complete model folder with AniPortrait's scheduler and style."""
    from lmk2video.pipeline import load_pipeline
    from tests.l2v_models import tiny_pipeline

    parts = tiny_pipeline(motion=False)
    parts.vae.save_pretrained(tmp_path / "vae")
    parts.image_encoder.save_pretrained(tmp_path / "image_encoder")
    states, guider = _aniportrait_release(seed=3)
    src = _write_source(tmp_path / "src", states)
    dst = tmp_path / "model"
    config = str(_tiny_config(tmp_path))

    with pytest.raises(SystemExit) as exit_info:
        main(["aniportrait", str(src), str(dst), "--config", config, "--vae", str(tmp_path / "vae")])
    assert exit_info.value.code == 2 and not dst.exists()

    args = ["--vae", str(tmp_path / "vae"), "--image-encoder", str(tmp_path / "image_encoder")]
    assert main(["aniportrait", str(src), str(dst), "--config", config, *args]) == 0
    pipe = load_pipeline(dst, device="cpu", dtype=torch.float32)
    assert pipe.config.landmark_style == "aniportrait"
    assert (pipe.config.width, pipe.config.height) == (512, 512)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert (
        pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.timestep_spacing == "trailing"
    )
    assert_weights_equal(pipe.denoising_unet, {**states["denoising_unet"], **states["motion_module"]})
    assert_weights_equal(pipe.reference_unet, states["reference_unet"])
    assert_weights_equal(pipe.pose_guider, guider.state_dict())
    assert_weights_equal(pipe.vae, parts.vae.state_dict())
    assert "vae: " in (dst / REPORT_NAME).read_text()


def test_from_hub_converts_what_it_downloads_offline(tmp_path: Path, capsys, monkeypatch) -> None:
    """--from-hub: the files come from a hub cache (HF_HUB_OFFLINE=1, as with no network); a missing file
    is one error naming the repository and the file, and nothing is written."""
    import os
    import subprocess
    import sys

    from common import hub
    from lmk2video.convert import (
        ANIPORTRAIT_REPO,
        IMAGE_ENCODER_REPO,
        VAE_REPO,
        download_aniportrait,
    )
    from lmk2video.pipeline import load_pipeline
    from tests.hub_cache import put_folder_in_hub_cache
    from tests.l2v_models import tiny_pipeline

    parts = tiny_pipeline(motion=False)
    parts.vae.save_pretrained(tmp_path / "vae", safe_serialization=False)  # the .bin alternative
    parts.image_encoder.save_pretrained(tmp_path / "image_encoder")
    states, guider = _aniportrait_release(seed=5)
    src = _write_source(tmp_path / "src", states)
    cache = tmp_path / "hub"
    put_folder_in_hub_cache(cache, ANIPORTRAIT_REPO, src)
    put_folder_in_hub_cache(cache, VAE_REPO, tmp_path / "vae")
    put_folder_in_hub_cache(cache, IMAGE_ENCODER_REPO, tmp_path / "image_encoder", prefix="image_encoder/")
    config = str(_tiny_config(tmp_path))

    dst = tmp_path / "aniportrait"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [
        sys.executable,
        "-m",
        "lmk2video.convert",
        "aniportrait",
        "--from-hub",
        str(dst),
        "--config",
        config,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pipe = load_pipeline(dst, device="cpu", dtype=torch.float32)
    assert pipe.config.landmark_style == "aniportrait"
    assert_weights_equal(pipe.denoising_unet, {**states["denoising_unet"], **states["motion_module"]})
    assert_weights_equal(pipe.reference_unet, states["reference_unet"])
    assert_weights_equal(pipe.pose_guider, guider.state_dict())
    assert_weights_equal(pipe.vae, parts.vae.state_dict())
    assert_weights_equal(pipe.image_encoder, parts.image_encoder.state_dict())
    report = (dst / REPORT_NAME).read_text()
    assert f"models--{VAE_REPO.replace('/', '--')}/snapshots/{hub.REVISIONS[VAE_REPO]}" in report

    # The same cache, read in this process: the files are where download_aniportrait says.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    found = download_aniportrait(cache_dir=cache)
    assert sorted(p.name for p in found["src"].iterdir()) == sorted(f"{n}.pth" for n in states)
    assert (found["image_encoder"] / "config.json").is_file()

    # A file the cache lacks: one error naming the repository, revision and file; DST is not created.
    (found["src"] / "motion_module.pth").unlink()
    out = tmp_path / "second"
    with pytest.raises(SystemExit) as exit_info:
        main(["aniportrait", "--from-hub", str(out), "--config", config, "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not out.exists()
    assert f"motion_module.pth of {ANIPORTRAIT_REPO}@main is not in the hub cache" in err
    assert "HF_HUB_OFFLINE" in err and err.count("error:") == 1

    # Bad option combinations are refused before anything is downloaded.
    for argv, message in (
        (["aniportrait", "--from-hub", str(src), str(out)], "--from-hub takes only DST"),
        (["aniportrait", str(src), str(out), "--revision", "x/y=main"], "go with --from-hub"),
        (["aniportrait", "--from-hub", str(out), "--revision", "nonsense"], "expected REPO=REVISION"),
        (["aniportrait", "--from-hub", str(dst)], "already exists"),
        (["aniportrait", str(out)], "pass SRC and DST"),
    ):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert refused.value.code == 2 and message in capsys.readouterr().err, argv
    assert not out.exists()
