"""``python -m lmk2video.train``: both tiny experiments end to end through the CLI, export -> generate, stage 2
from a stage-1 export, resuming, EMA through checkpoints, clear refusals, and DDP on CPU (slow)."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from common.config import CONF_DIR
from common.errors import UserError
from common.index import load_index
from common.lmkfile import LandmarkSequence
from common.video import read_frames
from lmk2video.pipeline import LandmarkVideoPipeline
from lmk2video.train import run
from tests.conftest import PROJECT_ROOT
from tests.l2v_corpus import VAL_SPEAKER, corpus_index
from tests.l2v_models import single_thread
from tests.l2v_tiny import assert_weights_equal


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def index(tmp_path_factory, face_model) -> Path:
    return corpus_index(tmp_path_factory, face_model)


def data_overrides(index: Path) -> list[str]:
    """The experiments' own data group (source_dir + cache_dir, prepared on first use) pointed at the test
    corpus (40 frames of two shared clips, already prepared), so the CLI takes the same route as on the
    full shared clips without preparing all of them."""
    root = index.parent.parent
    return [
        f"data.source_dir={root / 'videos'}",
        f"data.cache_dir={root / 'data'}",
        f"data.val_speakers=[{VAL_SPEAKER}]",
    ]


def cli(*args: str, cwd: Path = PROJECT_ROOT, face_model: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT), "WANDB_MODE": "offline"}
    if face_model is not None:
        env["TALKING_PORTRAIT_FACE_MODEL"] = str(face_model)
    return subprocess.run(
        [sys.executable, "-m", "lmk2video.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@contextlib.contextmanager
def composed(overrides: list[str], run_dir: Path) -> Iterator:
    """``conf/lmk2video/train.yaml`` composed in-process with Hydra's runtime set (as ``@hydra.main`` does)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR / "lmk2video"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(PROJECT_ROOT)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            yield cfg
        finally:
            GlobalHydra.instance().clear()


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss per logged step from a run's CSV log."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, index, face_model) -> dict[str, Path]:
    """One fast_dev_run of tiny_stage1 through the CLI from the project root, exported."""
    work = tmp_path_factory.mktemp("stage1")
    result = cli(
        "experiment=tiny_stage1",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *data_overrides(index),
        f"hydra.run.dir={work / 'run'}",
        f"export_dir={work / 'export'}",
        face_model=face_model,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"run": work / "run", "export": work / "export", "work": work}


def test_tiny_stage1_fast_dev_run_validates_renders_and_exports(stage1, index) -> None:
    log = (stage1["run"] / "train.log").read_text()
    assert "metrics:" in log and "train/loss=" in log and "val/loss=" in log
    # Validation rendered the held-out excerpt through generate's path: reference | landmarks | result.
    videos = sorted((stage1["run"] / "media").glob("val_step*.mp4"))
    assert len(videos) == 1
    frames = read_frames(videos[0], [0, 1, 2, 3])
    assert frames.shape == (4, 64, 3 * 64, 3)
    # The export is a model folder that loads strictly, with the experiment's architecture; the trained
    # networks moved away from the initialisation (lmk2video.init with the same seed), the frozen ones did not.
    exported = LandmarkVideoPipeline.from_pretrained(stage1["export"])
    assert not exported.denoising_unet.has_motion_modules
    init_dir = stage1["work"] / "init"
    result = subprocess.run(
        [sys.executable, "-m", "lmk2video.init", "experiment=tiny_stage1", f"out={init_dir}",
         f"hydra.run.dir={stage1['work'] / 'init_run'}"],
        cwd=PROJECT_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    start = LandmarkVideoPipeline.from_pretrained(init_dir)
    for name in ("vae", "image_encoder"):
        assert_weights_equal(getattr(exported, name), getattr(start, name).state_dict())
    for name in ("denoising_unet", "reference_unet", "pose_guider"):
        before, after = getattr(start, name).state_dict(), getattr(exported, name).state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), name


def test_export_renders_through_generate(stage1, index, face_model) -> None:
    """The exported folder is what ``python -m lmk2video.generate model=DIR`` loads: a portrait, 3 landmark
    frames. (Through the CLI: in the test process, after many other tests, MediaPipe here was killed by a
    SIGPROF nobody in Python armed.)"""
    import cv2

    clip = next(c for c in load_index(index) if c.speaker == VAL_SPEAKER)
    work = stage1["work"]
    cv2.imwrite(str(work / "portrait.png"), cv2.cvtColor(read_frames(clip.video, [0])[0], cv2.COLOR_RGB2BGR))
    LandmarkSequence.load(clip.landmarks).select(slice(1, 4)).save(work / "talk.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    env["TALKING_PORTRAIT_FACE_MODEL"] = str(face_model)
    result = subprocess.run(
        [sys.executable, "-m", "lmk2video.generate", f"model={stage1['export']}", "reference=portrait.png",
         "landmarks=talk.npz", "out=talk.mp4", "steps=2", "progress=false", f"hydra.run.dir={work / 'gen'}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    frames = read_frames(work / "talk.mp4", [0, 1, 2])
    assert frames.shape == (3, 64, 64, 3) and frames.std() > 0


def test_tiny_stage2_fast_dev_run_from_the_stage1_export_trains_motion_modules_only(
    stage1, index, face_model, tmp_path
) -> None:
    result = cli(
        "-m",
        "experiment=tiny_stage2",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"init_from={stage1['export']}",
        *data_overrides(index),
        # A one-point multirun: the sweep route (-m), one job folder per point.
        "seed=3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweep.subdir=job${hydra.job.num}",
        f"export_dir={tmp_path / 'export'}",
        face_model=face_model,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "sweep" / "job0" / "media").glob("val_step*.mp4"))) == 1
    stage2 = LandmarkVideoPipeline.from_pretrained(tmp_path / "export")
    start = LandmarkVideoPipeline.from_pretrained(stage1["export"])
    assert stage2.denoising_unet.has_motion_modules
    # Everything but the motion modules is the stage-1 model, unchanged.
    for name in ("vae", "image_encoder", "reference_unet", "pose_guider"):
        assert_weights_equal(getattr(stage2, name), getattr(start, name).state_dict())
    two_d = dict(stage2.denoising_unet.named_2d_parameters())
    for name, param in start.denoising_unet.named_parameters():
        assert torch.equal(two_d[name], param), name


def resume_overrides(index: Path) -> list[str]:
    return [
        "experiment=tiny_stage1",
        *data_overrides(index),
        "ema_decay=0.9",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "data.samples_per_epoch=6",  # 3 batches an epoch: the resumed run crosses an epoch boundary
    ]


def test_resumed_run_continues_with_the_losses_and_weights_of_an_uninterrupted_one(index, tmp_path) -> None:
    with composed([*resume_overrides(index), "trainer.max_steps=5", f"export_dir={tmp_path / 'a.export'}"],
                  tmp_path / "a") as cfg:  # fmt: skip
        run(cfg)
    checkpoint = tmp_path / "a" / "checkpoints" / "step0000002.ckpt"
    assert checkpoint.is_file()
    # The checkpoint holds the EMA and leaves the frozen VAE and image encoder out.
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")["state_dict"]
    assert state["_ema.num_updates"] == 2
    assert not any(k.startswith(("vae.", "image_encoder.")) for k in state)
    with composed([*resume_overrides(index), "trainer.max_steps=5", f"ckpt_path={checkpoint}",
                   f"export_dir={tmp_path / 'b.export'}"], tmp_path / "b") as cfg:  # fmt: skip
        run(cfg)
    uninterrupted, resumed = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(uninterrupted) == 5 and sorted(resumed) == sorted(uninterrupted)[2:]
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-7), step
    # Same final weights (the EMA ones are exported), so the same optimizer state and EMA were restored.
    a = LandmarkVideoPipeline.from_pretrained(tmp_path / "a.export")
    b = LandmarkVideoPipeline.from_pretrained(tmp_path / "b.export")
    for name in ("denoising_unet", "reference_unet", "pose_guider"):
        for key, value in getattr(a, name).state_dict().items():
            torch.testing.assert_close(getattr(b, name).state_dict()[key], value, rtol=1e-5, atol=1e-7)


def test_validation_video_goes_to_wandb_offline(index, face_model, tmp_path) -> None:
    """Validation every N steps logs loss, the landmark-following scores and the video (csv path, wandb
    video); wandb runs offline. (A subprocess: wandb's service does not belong in the test process.)"""
    result = cli(
        "experiment=tiny_stage1",
        *data_overrides(index),
        "logger=csv_wandb",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "val.frames=2",
        f"val.face_model={face_model}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"val/loss", "val/video", "val/face_detection_rate"} <= logged
    video = next(row["val/video"] for row in rows if row.get("val/video"))
    assert Path(video).name == "val_step0000002.mp4" and Path(video).is_file()
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("files/media/videos/val/video_*.mp4"))
    assert list(offline[0].glob("run-*.wandb"))


def test_bf16_mixed_precision_trains_validates_and_exports_float32(index, tmp_path) -> None:
    overrides = [
        "experiment=tiny_stage1",
        *data_overrides(index),
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "val.frames=2",
        f"export_dir={tmp_path / 'export'}",
    ]
    with composed(overrides, tmp_path / "run") as cfg:
        metric = run(cfg)
    assert metric is not None and np.isfinite(metric)
    assert (tmp_path / "run" / "media" / "val_step0000002.mp4").is_file()
    exported = LandmarkVideoPipeline.from_pretrained(tmp_path / "export")
    assert {p.dtype for p in exported.denoising_unet.parameters()} == {torch.float32}


def test_fsdp_and_ddp_trainer_configs_instantiate(tmp_path) -> None:
    """The GPU trainer groups compose with an experiment and build their strategies (no GPU needed for that)."""
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import FSDPStrategy

    with composed(["experiment=sd15_stage1", "trainer=fsdp", "trainer.num_nodes=2"], tmp_path) as cfg:
        strategy = instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, FSDPStrategy) and cfg.trainer.precision == "bf16-mixed"
        assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == -1
    with composed(["experiment=sd15_stage2"], tmp_path) as cfg:
        assert (cfg.trainer.strategy, cfg.trainer.accelerator, cfg.stage) == ("ddp", "gpu", 2)
        assert cfg.gradient_checkpointing and cfg.data.num_frames == 16


def test_refusals_are_clear_before_training(index, tmp_path) -> None:
    (tmp_path / "taken").mkdir()
    base = ["experiment=tiny_stage1", *data_overrides(index)]
    cases = [
        ([*base, f"export_dir={tmp_path / 'taken'}"], "overwrite=true"),
        ([*base, f"ckpt_path={tmp_path / 'missing.ckpt'}"], r"missing\.ckpt does not exist"),
        ([*base, "stage=2"], "has none"),
        (["experiment=tiny_stage1", "data.source_dir=null"], r"data\.index=DIR"),
    ]
    for number, (overrides, message) in enumerate(cases):
        with composed(overrides, tmp_path / f"r{number}") as cfg, pytest.raises(UserError, match=message):
            run(cfg)
    assert not (tmp_path / "r0" / "checkpoints").exists()


@pytest.mark.slow
def test_two_process_ddp_on_cpu(index, face_model, tmp_path) -> None:
    """trainer=ddp_cpu: two gloo processes (ddp_spawn), each its own share of samples; rank 0 exports."""
    result = cli(
        "experiment=tiny_stage1",
        "trainer=ddp_cpu",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "val.frames=2",
        "ema_decay=0.9",
        *data_overrides(index),
        f"hydra.run.dir={tmp_path / 'run'}",
        f"export_dir={tmp_path / 'export'}",
        face_model=face_model,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/loss=" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "run" / "media").glob("val_step*.mp4"))) == 1
    # The launching process got the trained weights back from rank 0 with their EMA, and exported the EMA.
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["global_step"] == 2 and state["state_dict"]["_ema.num_updates"] == 2
    exported = LandmarkVideoPipeline.from_pretrained(tmp_path / "export")
    for key, value in exported.pose_guider.state_dict().items():
        torch.testing.assert_close(value, state["state_dict"][f"_ema.pose_guider.{key}"], rtol=0, atol=0)
