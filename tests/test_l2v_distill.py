"""Distillation (``stage=distill``, lmk2video/distillation.py): the consistency-distillation math, which
parameters train (full or LoRA), the exported student folder (its own scheduler and recommended sampling),
resuming, generate's defaults for a student, and the experiments through ``lmk2video.train``."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from common.errors import UserError
from lmk2video.distillation import (
    DistillationModule,
    DistillSettings,
    boundary_scalings,
    predicted_x0_eps,
    solver_timesteps,
)
from lmk2video.module import trainable_names
from lmk2video.pipeline import LandmarkVideoPipeline
from lmk2video.rendering import SamplerOptions
from tests.conftest import PROJECT_ROOT
from tests.l2v_models import single_thread, tiny_pipeline
from tests.test_l2v_module import batch, one_step
from tests.test_l2v_train import composed, data_overrides, losses


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def student(**distill) -> DistillationModule:
    return DistillationModule(
        tiny_pipeline(motion=True),
        distill={"solver_steps": 10, "steps": 2, **distill},
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
    )


# ------------------------------------------------------------------------------------------- math


def test_solver_grid_is_the_lcm_schedulers_and_the_boundary_condition_holds() -> None:
    grid = solver_timesteps(1000, 50)
    assert grid[0] == 19 and grid[-1] == 999 and len(grid) == 50
    # The exported scheduler samples on the same grid.
    scheduler = diffusers.LCMScheduler(original_inference_steps=50, prediction_type="v_prediction")
    scheduler.set_timesteps(4)
    assert set(scheduler.timesteps.tolist()) <= set(grid.tolist())
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[2] < 1e-6 and c_out[2] == pytest.approx(1, abs=1e-6)
    assert ((c_skip**2 + c_out**2 * 0) <= 1).all()


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon", "sample"])
def test_x0_and_noise_are_recovered_from_each_prediction_type(kind) -> None:
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    alphas = torch.tensor([0.9, 0.2]).view(2, 1, 1)
    x_t = alphas.sqrt() * x0 + (1 - alphas).sqrt() * eps
    output = {
        "v_prediction": alphas.sqrt() * eps - (1 - alphas).sqrt() * x0,
        "epsilon": eps,
        "sample": x0,
    }[kind]
    got_x0, got_eps = predicted_x0_eps(output, x_t, alphas, kind)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)
    with pytest.raises(UserError, match="prediction_type"):
        predicted_x0_eps(output, x_t, alphas, "flow")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scheduler": "ddim"}, "lcm or tcd"),
        ({"steps": 0}, "distill.steps"),
        ({"steps": 8, "solver_steps": 4}, "at most distill.solver_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"huber_c": 0}, "positive"),
    ],
)
def test_bad_settings_are_one_clear_error(values, message) -> None:
    with pytest.raises(UserError, match=message):
        DistillSettings(**values)


def test_solver_steps_must_divide_the_schedule() -> None:
    with pytest.raises(UserError, match="must divide"):
        student(solver_steps=7, steps=2)


# ------------------------------------------------------------------------------------------- training


def test_full_student_trains_alone_and_the_loss_is_seeded() -> None:
    m = student()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    names = set(trainable_names(m))
    assert names == {f"denoising_unet.{n}" for n, _ in m.denoising_unet.named_parameters()}
    # The teacher starts as the student's copy and is frozen.
    for name, param in m.teacher_unet.named_parameters():
        assert torch.equal(param, before[f"denoising_unet.{name}"]) and not param.requires_grad
    item = batch(frames=3)
    first, details = m.compute_loss(item, torch.Generator().manual_seed(5))
    again, _ = m.compute_loss(item, torch.Generator().manual_seed(5))
    other, _ = m.compute_loss(item, torch.Generator().manual_seed(6))
    assert torch.isfinite(first) and first > 0 and first == again and other != first
    assert details["mse"].shape == (2,) and set(details["timesteps"].tolist()) <= set(range(99, 1000, 100))
    one_step(m, frames=3)
    changed = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= names
    assert not any(n.startswith(("teacher_unet.", "reference_unet.", "pose_guider.")) for n in changed)
    assert not m.teacher_unet.training and not m.reference_unet.training and not m.pose_guider.training


def test_lora_student_trains_adapters_and_exports_merged_weights(tmp_path) -> None:
    m = student(lora_rank=4)
    names = trainable_names(m)
    assert names and all("lora_" in n and n.startswith("denoising_unet.") for n in names)
    # Before training the adapters add nothing: the merged export is the teacher.
    m.export(tmp_path / "untrained")
    untrained = LandmarkVideoPipeline.from_pretrained(tmp_path / "untrained")
    teacher = m.teacher_unet.state_dict()
    assert set(untrained.denoising_unet.state_dict()) == set(teacher)
    for key, value in untrained.denoising_unet.state_dict().items():
        torch.testing.assert_close(value, teacher[key], rtol=0, atol=1e-6)
    one_step(m, frames=3)
    m.export(tmp_path / "trained")
    trained = LandmarkVideoPipeline.from_pretrained(tmp_path / "trained").denoising_unet.state_dict()
    moved = [k for k in teacher if not torch.allclose(trained[k], teacher[k], atol=1e-7)]
    assert moved and all(k.endswith(".weight") for k in moved)
    # The live student keeps its adapters (the export merged a copy).
    assert any("lora_" in n for n, _ in m.denoising_unet.named_parameters())


@pytest.mark.parametrize(("name", "cls"), [("lcm", "LCMScheduler"), ("tcd", "TCDScheduler")])
def test_export_carries_its_scheduler_and_recommended_sampling(tmp_path, name, cls, caplog) -> None:
    m = student(scheduler=name, steps=3)
    m.export(tmp_path / "student")
    config = json.loads((tmp_path / "student" / "scheduler" / "scheduler_config.json").read_text())
    teacher = dict(tiny_pipeline().scheduler.config)
    assert config["_class_name"] == cls and config["original_inference_steps"] == 10
    for key in ("prediction_type", "rescale_betas_zero_snr", "beta_schedule", "num_train_timesteps"):
        assert config[key] == teacher[key], key
    index = json.loads((tmp_path / "student" / "model_index.json").read_text())
    assert index["sampling"] == {"steps": 3, "cfg": 1.0} and index["distilled"] is True
    pipe = LandmarkVideoPipeline.from_pretrained(tmp_path / "student")
    assert type(pipe.scheduler).__name__ == cls
    options = SamplerOptions().fit(pipe, strict=False)
    assert (options.steps, options.cfg) == (3, 1.0)
    assert SamplerOptions(steps=5, cfg=2.0).fit(pipe, strict=False).steps == 5
    with caplog.at_level(logging.WARNING):
        pipe.use_scheduler(name)  # a consistency sampler on a distilled model: no warning
    assert not [r for r in caplog.records if "not distilled" in r.getMessage()]
    # An undistilled model keeps AniPortrait's 25 steps with guidance 3.5.
    options = SamplerOptions().fit(tiny_pipeline(), strict=False)
    assert (options.steps, options.cfg) == (25, 3.5)


def test_bad_recommended_sampling_in_a_folder_is_refused(tmp_path) -> None:
    tiny_pipeline(motion=False).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model_index.json"
    index = json.loads(path.read_text())
    path.write_text(json.dumps({**index, "sampling": {"steps": 0}}))
    with pytest.raises(UserError, match=r"model_index\.json: sampling\.steps=0"):
        LandmarkVideoPipeline.from_pretrained(tmp_path / "m")


# ------------------------------------------------------------------------------------------- through train


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "model"
    tiny_pipeline(motion=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def index(tmp_path_factory, face_model) -> Path:
    from tests.l2v_corpus import corpus_index

    return corpus_index(tmp_path_factory, face_model)


def distill_overrides(index: Path, teacher: Path) -> list[str]:
    return [
        "experiment=tiny_distill",
        f"teacher={teacher}",
        *data_overrides(index),
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.val_check_interval=100",
        "data.samples_per_epoch=6",
    ]


def test_tiny_distill_exports_a_student_and_resumes_exactly(index, teacher, tmp_path) -> None:
    from lmk2video.train import run

    with composed([*distill_overrides(index, teacher), f"export_dir={tmp_path / 'a.export'}"],
                  tmp_path / "a") as cfg:  # fmt: skip
        run(cfg)
    exported = tmp_path / "a.export"
    config = json.loads((exported / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "LCMScheduler"
    pipe = LandmarkVideoPipeline.from_pretrained(exported)
    assert pipe.config.distilled and pipe.sampling_defaults == {"steps": 2, "cfg": 1.0}
    # Reference UNet and pose guider are the teacher's; the denoising UNet moved.
    source = LandmarkVideoPipeline.from_pretrained(teacher)
    for name in ("reference_unet", "pose_guider"):
        for key, value in getattr(source, name).state_dict().items():
            assert torch.equal(getattr(pipe, name).state_dict()[key], value), key
    moved = [
        k
        for k, v in source.denoising_unet.state_dict().items()
        if not torch.equal(pipe.denoising_unet.state_dict()[k], v)
    ]
    assert moved
    # Checkpoints leave the teacher out; a resumed run continues with the same losses and weights.
    checkpoint = tmp_path / "a" / "checkpoints" / "step0000002.ckpt"
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")["state_dict"]
    assert not any(k.startswith(("teacher_unet.", "vae.", "image_encoder.")) for k in state)
    assert "_ema.num_updates" in state
    with composed([*distill_overrides(index, teacher), f"ckpt_path={checkpoint}",
                   f"export_dir={tmp_path / 'b.export'}"], tmp_path / "b") as cfg:  # fmt: skip
        run(cfg)
    uninterrupted, resumed = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(resumed) == sorted(uninterrupted)[2:]
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-7), step
    b = LandmarkVideoPipeline.from_pretrained(tmp_path / "b.export")
    for key, value in pipe.denoising_unet.state_dict().items():
        torch.testing.assert_close(b.denoising_unet.state_dict()[key], value, rtol=1e-5, atol=1e-7)
    # Resuming with another teacher is refused.
    other = tmp_path / "other_teacher"
    tiny_pipeline(motion=True, seed=7).save_pretrained(other)
    overrides = [
        o if not o.startswith("teacher=") else f"teacher={other}" for o in distill_overrides(index, teacher)
    ]
    with (
        composed([*overrides, f"ckpt_path={checkpoint}"], tmp_path / "c") as cfg,
        pytest.raises(UserError, match="another teacher"),
    ):
        run(cfg)


def test_generate_samples_a_student_with_its_own_scheduler_and_steps(
    index, teacher, tmp_path, face_model
) -> None:
    """``generate model=STUDENT`` without sampler options: the student's LCM scheduler, its 2 steps, no
    guidance (one UNet pass per step). Through the CLI, as users run it."""
    import cv2

    from common.index import load_index
    from common.lmkfile import LandmarkSequence
    from common.video import read_frames
    from tests.l2v_corpus import VAL_SPEAKER

    DistillationModule(tiny_pipeline(motion=True), distill={"solver_steps": 10, "steps": 2}).export(
        tmp_path / "student"
    )
    clip = next(c for c in load_index(index) if c.speaker == VAL_SPEAKER)
    cv2.imwrite(
        str(tmp_path / "portrait.png"), cv2.cvtColor(read_frames(clip.video, [0])[0], cv2.COLOR_RGB2BGR)
    )
    LandmarkSequence.load(clip.landmarks).select(slice(1, 4)).save(tmp_path / "talk.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    env["TALKING_PORTRAIT_FACE_MODEL"] = str(face_model)
    result = subprocess.run(
        [sys.executable, "-m", "lmk2video.generate", "model=student", "reference=portrait.png",
         "landmarks=talk.npz", "out=talk.mp4", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sampler: LCMScheduler, 2 steps, no guidance" in result.stderr
    frames = read_frames(tmp_path / "talk.mp4", [0, 1, 2])
    assert frames.shape == (3, 64, 64, 3) and np.std(frames) > 0


def test_distillation_refusals_are_clear(index, teacher, tmp_path) -> None:
    from lmk2video.train import run

    cases = [
        (["experiment=tiny_distill", *data_overrides(index)], "teacher=DIR"),
        (["experiment=tiny_stage1", f"teacher={teacher}", *data_overrides(index)], "is for stage=distill"),
        (
            ["experiment=tiny_distill", f"teacher={tmp_path / 'none'}", *data_overrides(index)],
            "does not exist",
        ),
    ]
    for number, (overrides, message) in enumerate(cases):
        with composed(overrides, tmp_path / f"r{number}") as cfg, pytest.raises(UserError, match=message):
            run(cfg)


def test_sample_distill_experiment_builds_on_the_shipped_model_and_steps(tmp_path) -> None:
    """experiment=sample_distill (the sample-scale run) builds on models/sample/lmk2video; one loss."""
    from lmk2video.train import build

    with composed(["experiment=sample_distill"], tmp_path) as cfg:
        module, _ = build(cfg)
    assert isinstance(module, DistillationModule) and module.distill_settings.steps == 4
    loss, _ = module.compute_loss(batch(frames=1, batch_size=2), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
