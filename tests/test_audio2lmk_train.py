"""audio2lmk training: the Lightning module, every experiment end to end (tiny), resuming, sweeps,
export, evaluation and an overfit check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audio2lmk.data import Audio2LmkDataModule, collate_windows, make_window
from audio2lmk.evaluate import evaluate, format_table
from audio2lmk.inference import load_audio2lmk
from audio2lmk.models import Audio2MeshModel, Audio2PoseModel
from audio2lmk.module import Audio2LmkModule, masked_l1, velocity_l1
from audio2lmk.train import train
from common.errors import UserError
from tests.audio2lmk_corpus import (
    EXPERIMENTS,
    TINY_MEL,
    composed,
    save_tiny_wav2vec2,
    tiny_corpus_index,
    tiny_model_overrides,
    tiny_overrides,
)
from tests.audio2lmk_tiny import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, face_model):
    return tiny_corpus_index(tmp_path_factory, face_model)


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("tiny_wav2vec2"))


def run_train(experiment, index, run_dir, *extra, wav2vec2_dir=None):
    overrides = tiny_overrides(index, run_dir) + tiny_model_overrides(experiment, wav2vec2_dir) + list(extra)
    with composed(experiment, overrides, run_dir) as cfg:
        return train(cfg)


def tiny_module(**kwargs) -> Audio2LmkModule:
    mesh = Audio2MeshModel(encoder=dict(TINY_MEL), head_hidden_dims=(32,), head_activation="gelu")
    pose = Audio2PoseModel(
        encoder=dict(TINY_MEL),
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        ffn_dim=32,
        dropout=0.0,
        num_styles=2,
    )
    options = {
        "mesh_model": mesh,
        "pose_model": pose,
        "optimizer": lambda params: torch.optim.Adam(params, 3e-3),
    }
    options.update(kwargs)
    return Audio2LmkModule(**options)


def test_masked_losses_ignore_padding():
    pred = torch.zeros(2, 4, 3)
    target = torch.ones(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    target[0, 2:] = 100.0
    assert masked_l1(pred, target, mask) == pytest.approx(1.0)
    ramp = torch.arange(4.0)[None, :, None].expand(2, 4, 3)
    assert velocity_l1(ramp, torch.zeros_like(ramp), mask) == pytest.approx(1.0)
    assert velocity_l1(pred[:, :1], target[:, :1], mask[:, :1]) == 0.0


def test_module_heads_together_or_alone(tiny_index):
    dm = Audio2LmkDataModule(index=str(tiny_index), val_speakers=["feifeili"], window_frames=15, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    both = tiny_module(velocity_weight=0.5, lip_weight=1.0)
    loss, parts, preds = both._losses(batch)
    assert set(parts) == {"mesh_l1", "lip_l1", "mesh_velocity_l1", "pose_l1", "pose_velocity_l1"}
    assert preds["offsets"].shape == (2, 15, 468, 3) and preds["pose"].shape == (2, 15, 6)
    loss.backward()
    mesh_only = tiny_module(pose_model=None)
    assert set(mesh_only._losses(batch)[1]) == {"mesh_l1"}
    pose_only = tiny_module(mesh_model=None)
    assert set(pose_only._losses(batch)[1]) == {"pose_l1"}
    with pytest.raises(UserError, match="nothing to train"):
        Audio2LmkModule(mesh_model=None, pose_model=None)


def test_overfit_one_clip_cuts_the_loss_tenfold(tiny_index):
    """A few hundred steps on one clip's windows: the training loss (mesh + pose) falls >= 10x."""
    dm = Audio2LmkDataModule(index=str(tiny_index), val_speakers=["feifeili"])
    dm.setup("fit")
    clip = dm.train_dataset().store[0]
    batch = collate_windows([{**make_window(clip, s, 20), "style": 0, "clip": 0} for s in (0, 20, 40)])
    torch.manual_seed(0)
    module = tiny_module(pose_weight=0.1)
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(300):
        loss = module._losses(batch)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= losses[0] / 10, (losses[0], losses[-1])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_fast_dev_run(experiment, tiny_index, tiny_wav2vec2, tmp_path):
    """Every experiment config trains (tiny sizes); wav2vec2 ones load a tiny saved checkpoint."""
    metrics, export = run_train(
        experiment, tiny_index, tmp_path, "trainer.fast_dev_run=true", wav2vec2_dir=tiny_wav2vec2
    )
    assert export is None
    assert np.isfinite(metrics["train/loss"])
    for name in ("val/loss", "val/lve_mm", "val/mve_mm", "val/mouth_corr", "val/pose_l1"):
        assert np.isfinite(metrics[name]), name


def test_train_export_resume_and_evaluate(tiny_index, tmp_path):
    """4 steps straight vs 2 steps (one epoch; same 4-step LR schedule) + resume to 4: same weights;
    the export loads and evaluates."""
    common = ["trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2", "logger=csv"]
    straight, _ = run_train(
        "mel_small", tiny_index, tmp_path / "a", *common, f"export_dir={tmp_path / 'm_a'}"
    )
    first_steps = [*common, "trainer.max_epochs=1"]
    run_train("mel_small", tiny_index, tmp_path / "b", *first_steps)
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2
    run_train(
        "mel_small",
        tiny_index,
        tmp_path / "c",
        *common,
        f"ckpt_path={ckpt}",
        f"export_dir={tmp_path / 'm_c'}",
    )
    assert torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    for part in ("audio2mesh", "audio2pose"):
        a = load_file(tmp_path / "m_a" / part / "diffusion_pytorch_model.safetensors")
        c = load_file(tmp_path / "m_c" / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == c.keys()
        for key in a:
            torch.testing.assert_close(a[key], c[key], msg=f"{part} {key}")
    assert (tmp_path / "a" / "csv" / "metrics.csv").is_file()
    # mel_small validates and exports the EMA of the weights (EMAWeightAveraging): the checkpoint's
    # state_dict is the average, the raw weights are kept for resuming, and the export is the average.
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    assert "current_model_state" in last and "averaging_state" in last
    exported = load_file(tmp_path / "m_a" / "audio2mesh" / "diffusion_pytorch_model.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, last["state_dict"][f"mesh_model.{key}"], msg=key)
    assert any(
        not torch.equal(last["state_dict"][k], last["current_model_state"][k])
        for k in last["state_dict"]
        if k.startswith("mesh_model.")
    )

    info = json.loads((tmp_path / "m_a" / "audio2lmk.json").read_text())
    assert info["styles"] == ["Obama", "andrew"] and info["data"]["val_speakers"] == ["feifeili"]
    assert info["fps"] == 30.0 and info["metrics"]["val/lve_mm"] == pytest.approx(straight["val/lve_mm"])
    loaded = load_audio2lmk(tmp_path / "m_a")
    report = evaluate(loaded, tiny_index, ["feifeili"], loudness_context=[0, 1])
    assert set(report["results"]) == {"model", "still", "loudness", "loudness_ctx1"}
    assert report["results"]["still"]["mouth_corr"] == 0.0
    assert all(np.isfinite(v) for r in report["results"].values() for v in r.values())
    assert "loudness" in format_table(report)

    with pytest.raises(UserError, match="no such checkpoint"):
        run_train("mel_small", tiny_index, tmp_path / "d", f"ckpt_path={tmp_path / 'nope.ckpt'}")


def test_config_errors(tiny_index, tmp_path):
    with pytest.raises(UserError, match="fps"):
        run_train(
            "mel_small", tiny_index, tmp_path / "a", "trainer.fast_dev_run=true", "model.mesh_model.fps=25"
        )
    with pytest.raises(UserError, match="num_styles"):
        run_train(
            "mel_small",
            tiny_index,
            tmp_path / "b",
            "trainer.fast_dev_run=true",
            "model.pose_model.num_styles=1",
        )
    with pytest.raises(UserError, match="num_threads=0"):
        run_train("mel_small", tiny_index, tmp_path / "c", "trainer.fast_dev_run=true", "num_threads=0")


def test_sweep_runs_two_jobs(tiny_index, tmp_path):
    overrides = tiny_overrides(tiny_index, tmp_path) + tiny_model_overrides("mel_small")
    cmd = [
        sys.executable, "-m", "audio2lmk.train", "-m", "experiment=mel_small", *overrides,
        "trainer.fast_dev_run=true", "model.lip_weight=0,1", "hydra/job_logging=disabled",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if (p / ".hydra" / "overrides.yaml").is_file())
    assert jobs == ["0", "1"]
    assert "model.lip_weight=1" in (tmp_path / "1" / ".hydra" / "overrides.yaml").read_text()
