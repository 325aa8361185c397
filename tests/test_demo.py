"""``make demo`` (``python -m lmk2video.demo``): the whole job on the sample files that ship with the code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av

from common.lmkfile import LandmarkSequence
from lmk2video.demo import SAMPLE
from tests.conftest import PROJECT_ROOT


# No TALKING_PORTRAIT_FACE_MODEL and an empty cache: the demo must find everything in the checkout (the
# sample media in examples/sample, MediaPipe's model bundled in common/data), as in a clone without ../shared.
def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "TALKING_PORTRAIT_CACHE": str(tmp_path / "cache"),
            "HOME": str(tmp_path)}  # fmt: skip


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmk2video.demo", "--seconds", "1", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(tmp_path),
    )  # fmt: skip


def test_the_sample_files_ship_with_the_code_and_are_small() -> None:
    files = [p for p in SAMPLE.iterdir() if p.is_file()]
    assert {
        "obama_clip1.mp4",
        "obama_clip1.wav",
        "reference_obama.png",
        "portrait_kristi.png",
        "speech_en.wav",
    } <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    readme = (SAMPLE / "README.md").read_text()
    for p in files:
        if p.suffix in (".mp4", ".wav", ".png"):
            assert p.name in readme  # each file's source and licence are written down
    assert (SAMPLE / "LICENSE.styletalk").is_file() and (SAMPLE / "LICENSE.apache-2.0").is_file()


def test_demo_without_models_runs_the_landmark_round_trip_and_says_what_it_needs(tmp_path) -> None:
    out = tmp_path / "demo"
    result = _demo(tmp_path, "--audio2lmk-model", str(tmp_path / "none_a"), "--lmk2video-model",
                   str(tmp_path / "none_v"), "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "python -m audio2lmk.train experiment=sample_audio2lmk export_dir=" in result.stdout
    assert "no lmk2video model folder" in result.stdout
    clip = LandmarkSequence.load(out / "excerpt.npz")
    assert clip.num_frames == round(clip.fps)  # --seconds 1
    assert LandmarkSequence.load(out / "retargeted.npz").reference_mesh is not None
    previews = sorted(p.name for p in out.glob("*.mp4"))
    assert previews == sorted(
        ["excerpt_default.mp4", "edited_default.mp4", "retargeted_default.mp4", "edited_aniportrait.mp4"]
    )
    assert not (out / "speech.npz").exists() and not (out / "talking.mp4").exists()
    assert not (tmp_path / "cache").exists()  # the bundled face model, no download


def test_demo_with_models_goes_from_speech_to_a_talking_video_and_its_evaluation(tmp_path) -> None:
    """With an audio2lmk and an lmk2video folder (tiny, random) the demo runs speech -> landmarks -> video."""
    from audio2lmk.inference import export_audio2lmk
    from tests.l2v_models import tiny_pipeline
    from tests.test_audio2lmk_infer import FPS, tiny_models

    mesh, pose = tiny_models()
    export_audio2lmk(tmp_path / "a2l", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A"])
    tiny_pipeline(motion=True).save_pretrained(tmp_path / "l2v")
    out = tmp_path / "demo"
    result = _demo(tmp_path, "--audio2lmk-model", str(tmp_path / "a2l"), "--lmk2video-model", str(tmp_path / "l2v"),
                   "--steps", "1", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
    speech = LandmarkSequence.load(out / "speech.npz")
    assert speech.reference_mesh is not None and (out / "speech_default.mp4").is_file()
    assert abs(speech.duration - 1.0) < 0.05  # --seconds 1 of the speech
    with av.open(str(out / "talking.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert len(container.streams.audio) == 1
    assert frames == speech.num_frames
    assert LandmarkSequence.load(out / "speech_on_portrait.npz").num_frames == speech.num_frames
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert list(report["systems"]) == ["sample model", "reference still"]
    sample = report["systems"]["sample model"]["clips"]["talking"]
    assert "driving_mouth_corr" in sample and "detection_rate" in sample and "identity_cosine" in sample
    assert "mouth-opening correlation with the driving landmarks" in result.stdout
    assert f"the talking video: {out / 'talking.mp4'}" in result.stdout


def test_demo_refuses_a_missing_input_with_one_message(tmp_path) -> None:
    result = _demo(tmp_path, "--speech", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert f"--speech {tmp_path / 'nope.wav'}: no such file" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_sample_models_load_and_have_model_cards() -> None:
    """The models that ship in models/sample (make demo's default) load strictly and are documented."""
    from audio2lmk.inference import load_audio2lmk
    from lmk2video.pipeline import LandmarkVideoPipeline

    root = PROJECT_ROOT / "models" / "sample"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 60 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]  # safetensors only
    load_audio2lmk(root / "audio2lmk")
    pipe = LandmarkVideoPipeline.from_pretrained(root / "lmk2video")
    assert "framing" in pipe.config  # the crop it was trained with travels with it
    for stage in ("audio2lmk", "lmk2video"):
        card = (root / stage / "MODEL_CARD.md").read_text()
        assert f"experiment=sample_{stage}" in card and "KristiNoem" in card


def test_the_demo_prefers_aniportraits_converted_weights_on_a_gpu_only(tmp_path, monkeypatch, capsys) -> None:
    import argparse

    import torch

    from lmk2video import demo

    monkeypatch.setattr(demo, "ANIPORTRAIT", tmp_path / "aniportrait")
    for stage in ("audio2lmk", "lmk2video"):
        (tmp_path / "aniportrait" / stage).mkdir(parents=True)
    for gpu, expected in ((True, tmp_path / "aniportrait"), (False, demo.MODELS)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        args = argparse.Namespace(audio2lmk_model=None, lmk2video_model=None)
        demo.choose_models(args)
        assert (args.audio2lmk_model, args.lmk2video_model) == (
            str(expected / "audio2lmk"),
            str(expected / "lmk2video"),
        )
    assert "no GPU" in capsys.readouterr().out
    args = argparse.Namespace(audio2lmk_model="mine", lmk2video_model=None)
    demo.choose_models(args)  # a folder given by hand is kept
    assert args.audio2lmk_model == "mine"
