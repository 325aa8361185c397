"""`python -m common.preprocess`: a data set from videos, with rejections, parallel workers and resuming."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave

import numpy as np
import pytest

from common.index import load_index, split_by_speaker
from common.lmkfile import load
from common.video import iter_frames, write_video
from tests.conftest import PROJECT_ROOT, shared_file


def first_frames(video, n):
    return np.stack([rgb for _, rgb in iter_frames(video)][:n])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Input folder: two good clips (one with its own audio track), and one of each rejection."""
    root = tmp_path_factory.mktemp("corpus")
    src = root / "videos"
    src.mkdir()
    # good: video + same-named wav beside it
    shutil.copy(shared_file("talking", "feifeili_clip3.mp4"), src / "feifeili_clip3.mp4")
    shutil.copy(shared_file("talking", "feifeili_clip3.wav"), src / "feifeili_clip3.wav")
    # good: audio muxed into the video itself, in a speaker sub-folder
    (src / "obama").mkdir()
    frames = first_frames(shared_file("talking", "Obama_clip1.mp4"), 45)
    write_video(
        src / "obama" / "take1.mp4", [frames], fps=30, audio=shared_file("talking", "Obama_clip1.wav")
    )
    # rejected: no face
    write_video(
        src / "blank_clip1.mp4",
        [np.full((45, 64, 64, 3), 80, np.uint8)],
        fps=30,
        audio=shared_file("talking", "KristiNoem.wav"),
    )
    # rejected: too short
    write_video(
        src / "short_clip1.mp4", [frames[:10]], fps=30, audio=shared_file("talking", "Obama_clip1.wav")
    )
    # rejected: no audio anywhere
    write_video(src / "mute_clip1.mp4", [frames], fps=30)
    # rejected: unreadable
    (src / "broken_clip1.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + b"\x13" * 2000)
    # rejected: two faces in every frame
    other = first_frames(shared_file("talking", "KristiNoem.mp4"), 45)
    write_video(
        src / "two_clip1.mp4",
        [np.concatenate([frames, other], axis=2)],
        fps=30,
        audio=shared_file("talking", "KristiNoem.wav"),
    )
    return root


def run_preprocess(corpus, face_model, *extra):
    env = dict(os.environ, TALKING_PORTRAIT_FACE_MODEL=str(face_model))
    cmd = [
        sys.executable, "-m", "common.preprocess",
        f"input_dir={corpus / 'videos'}", f"output_dir={corpus / 'data'}",
        f"hydra.run.dir={corpus / 'run'}", "num_workers=2", "progress=false", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(corpus, face_model):
    res = run_preprocess(corpus, face_model)
    assert res.returncode == 0, res.stderr[-3000:]
    return corpus / "data"


def test_index_lists_accepted_clips(prepared):
    clips = {c.id: c for c in load_index(prepared)}
    assert set(clips) == {"feifeili_clip3", "obama/take1"}
    fei, obama = clips["feifeili_clip3"], clips["obama/take1"]
    assert fei.speaker == "feifeili" and obama.speaker == "obama"
    # 212 frames (7.07 s) and 7.01 s of audio: both cut to the audio's 210 whole frames
    assert (fei.frames, fei.fps, fei.height, fei.width) == (210, 30.0, 256, 256)
    assert obama.frames == 45
    seq = load(fei.landmarks)
    assert seq.num_frames == 210 and seq.meta["speaker"] == "feifeili"
    with wave.open(fei.audio) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)
        assert abs(w.getnframes() / 16000 - 210 / 30) <= 1 / 30  # the streams agree within one frame
    with wave.open(obama.audio) as w:  # the video's own audio track
        assert w.getnframes() / 16000 >= 1.4
    # stored paths are relative to the index, so the folder can move
    raw = json.loads((prepared / "index.json").read_text())
    assert all(not os.path.isabs(c["landmarks"]) for c in raw["clips"])


def test_report_gives_reasons(prepared):
    report = json.loads((prepared / "report.json").read_text())
    reasons = {r["id"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {"blank_clip1", "short_clip1", "mute_clip1", "broken_clip1", "two_clip1"}
    assert "no face" in reasons["blank_clip1"]
    assert "too short" in reasons["short_clip1"]
    assert "no audio" in reasons["mute_clip1"]
    assert "readable" in reasons["broken_clip1"] or "corrupt" in reasons["broken_clip1"]
    assert "several faces" in reasons["two_clip1"]
    assert report["accepted"] == 2


def test_rerun_resumes(prepared, corpus, face_model):
    npz = prepared / "clips" / "feifeili_clip3.npz"
    stamp = npz.stat().st_mtime_ns
    (prepared / "clips" / "obama" / "take1.json").unlink()  # as if interrupted before this clip finished
    res = run_preprocess(corpus, face_model)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 to process" in res.stdout + res.stderr
    assert npz.stat().st_mtime_ns == stamp  # finished clips are not redone
    assert {c.id for c in load_index(prepared)} == {"feifeili_clip3", "obama/take1"}
    assert not list(prepared.rglob(".*.npz*"))  # no temp files left


def test_split_by_speaker(prepared):
    clips = load_index(prepared)
    train, val = split_by_speaker(clips, val_speakers=["obama"])
    assert [c.id for c in val] == ["obama/take1"] and [c.id for c in train] == ["feifeili_clip3"]
    train, val = split_by_speaker(clips, seed=3)
    assert {c.speaker for c in train}.isdisjoint({c.speaker for c in val})


def test_missing_arguments_exit_2(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "common.preprocess", f"hydra.run.dir={tmp_path}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "input_dir=... is required" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "common.preprocess", f"input_dir={tmp_path}/none", f"output_dir={tmp_path}/o", f"hydra.run.dir={tmp_path}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2 and "no such folder" in res.stderr
