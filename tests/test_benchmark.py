"""``python -m lmk2video.benchmark``: our (tiny, random) models on a small test set, scored with the baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_main
from tests.l2v_corpus import corpus_index


@pytest.fixture(scope="module")
def work(tmp_path_factory, face_model) -> dict[str, Path]:
    from audio2lmk.inference import export_audio2lmk
    from tests.l2v_models import tiny_pipeline
    from tests.test_audio2lmk_infer import FPS, tiny_models

    root = tmp_path_factory.mktemp("benchmark")
    tiny_pipeline(motion=True).save_pretrained(root / "l2v")
    mesh, pose = tiny_models()
    export_audio2lmk(root / "a2l", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A"])
    return {
        "root": root,
        "index": corpus_index(tmp_path_factory, face_model).parent,
        "face_model": face_model,
    }


def base_args(work: dict) -> list[str]:
    return [
        f"index={work['index']}",
        "test_speakers=[feifeili]",
        "frames=12",
        "max_clips=2",
        "steps=1",
        "progress=false",
    ]


def bench(work: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALKING_PORTRAIT_FACE_MODEL": str(work["face_model"]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmk2video.benchmark", *base_args(work), *args]
    return subprocess.run(command, cwd=work["root"], env=env, capture_output=True, text=True, timeout=600)


def test_reconstruct_writes_the_test_set_the_videos_and_the_report_and_resumes(work) -> None:
    result = bench(work, "model=l2v", "out=rec")
    assert result.returncode == 0, result.stderr[-3000:]
    out = work["root"] / "rec"
    stems = ["feifeili_clip3_00000", "feifeili_clip3_00013"]  # 12 frames after frame 0, then after frame 13
    for folder in ("real", "systems/ours", "systems/reference_repeated", "compare"):
        assert sorted(p.stem for p in (out / folder).glob("*.mp4")) == stems, folder
    assert sorted(p.stem for p in (out / "references").glob("*.png")) == stems
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "reconstruct"
    assert list(report["systems"]) == ["real", "ours", "reference_repeated"]
    real, still = report["systems"]["real"], report["systems"]["reference_repeated"]
    assert set(real["clips"]) == set(stems) and real["summary"]["lmd_face"]["mean"] == 0
    assert (
        still["summary"]["detection_rate"]["mean"] == 1.0 and still["summary"]["jitter"]["mean"] < 1e-3
    )  # H.264 noise
    assert still["summary"]["lmd_face"]["mean"] > 0  # the held reference misses the real motion
    assert "LMD face" in (out / "report.md").read_text() and (out / "plots" / "lmd_face.png").is_file()
    from common.video import probe_video

    info = probe_video(out / "compare" / f"{stems[0]}.mp4")
    assert info.num_frames == 12 and info.width == 4 * 64 and info.has_audio  # reference|real|ours|landmarks
    before = {p: p.stat().st_mtime_ns for p in (out / "systems").rglob("*.mp4")}
    again = bench(work, "model=l2v", "out=rec")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {
        p: p.stat().st_mtime_ns for p in (out / "systems").rglob("*.mp4")
    } == before  # resumed, not redone


@pytest.mark.slow
def test_audio_mode_and_another_systems_folder(work) -> None:
    result = bench(
        work, "model=l2v", "mode=audio", "audio2lmk_model=a2l", "out=aud", "systems.again=rec/systems/ours"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work["root"] / "aud" / "report.json").read_text())
    assert report["mode"] == "audio" and list(report["systems"]) == [
        "real",
        "ours",
        "reference_repeated",
        "again",
    ]


def test_landmarks_only_scores_audio2lmk_against_the_real_landmarks(work) -> None:
    result = bench(work, "mode=landmarks_only", "audio2lmk_model=a2l", "out=lmk")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work["root"] / "lmk" / "report.json").read_text())
    systems = report["systems"]
    assert list(systems) == ["real", "ours", "reference_repeated"]
    assert systems["real"]["summary"]["lmd_face"]["mean"] == 0
    for name in ("ours", "reference_repeated"):
        assert (
            systems[name]["summary"]["lmd_mouth"]["mean"] > 0
            and systems[name]["summary"]["lmd_mouth"]["n"] == 2
        )
    assert systems["reference_repeated"]["summary"]["jitter"]["mean"] == pytest.approx(0, abs=1e-9)
    assert not (work["root"] / "lmk" / "systems").exists()  # no video in this mode


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mode=video", "model=l2v"], "mode='video'; choose reconstruct, audio, landmarks_only"),
        (["out=x"], "mode=reconstruct renders videos and needs model=DIR"),
        (["mode=audio", "model=l2v"], "mode=audio needs audio2lmk_model=DIR"),
        (["model=l2v", "frames=500"], "the test set is empty"),
        (["model=l2v", "test_speakers=[nobody]"], r"no clip of \['nobody'\]"),
        (["model=l2v", "frames=0"], "frames=0 must be a whole number from 1"),
    ],
)
def test_refusals_exit_2_before_any_work(work, args, message, monkeypatch, capsys) -> None:
    import re

    from lmk2video import benchmark

    monkeypatch.chdir(work["root"])
    out = [] if any(a.startswith("out=") for a in args) else ["out=refused"]
    code, err = run_main(benchmark.main, [*base_args(work), *args, *out], capsys)
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), err[-2000:]
    assert not (work["root"] / "refused").exists() and not (work["root"] / "x").exists()
