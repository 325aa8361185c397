"""`python -m common.lmk`: every subcommand end to end, exit code 2 and no output on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from common.lmkfile import load
from tests.conftest import PROJECT_ROOT, shared_file


def run(*args: str, env_model=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_model is not None:
        env["TALKING_PORTRAIT_FACE_MODEL"] = str(env_model)
    return subprocess.run(
        [sys.executable, "-m", "common.lmk", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, face_model):
    out = tmp_path_factory.mktemp("lmk") / "clip.npz"
    res = run(
        "extract",
        str(shared_file("talking", "feifeili_clip3.mp4")),
        "-o",
        str(out),
        "-q",
        env_model=face_model,
    )
    assert res.returncode == 0, res.stderr
    return out


def test_extract_and_info(extracted):
    seq = load(extracted)
    assert seq.num_frames == 212
    res = run("info", str(extracted), "--json")
    assert res.returncode == 0
    info = json.loads(res.stdout)
    assert (
        info["frames"] == 212 and info["fps"] == 30.0 and info["image_size"] == {"height": 256, "width": 256}
    )
    assert info["interpolated_frames"] == 0
    assert info["pose_range"]["tz"][0] < 0  # the face is in front of the camera
    text = run("info", str(extracted)).stdout
    assert "212 at 30 fps" in text and "pose rx" in text


def test_render_with_audio(extracted, tmp_path):
    speech = shared_file("talking", "feifeili_clip3.wav")
    out = tmp_path / "preview.mp4"
    res = run(
        "render",
        str(extracted),
        "-o",
        str(out),
        "--audio",
        str(speech),
        "--size",
        "320x240",
        "--style",
        "aniportrait",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (320, 240)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
    assert len(frames) == 212  # one video frame per landmark frame
    assert np.mean([f.any(-1).mean() for f in frames]) > 0.005  # lines were drawn
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        seconds = sum(f.samples for f in c.decode(a)) / a.rate
    assert abs(seconds - 212 / 30) < 0.05


def test_edit_chain(extracted, tmp_path):
    out = tmp_path / "edited.npz"
    res = run(
        "edit",
        str(extracted),
        "-o",
        str(out),
        "--trim",
        "10f:100f",
        "--fps",
        "25",
        "--smooth",
        "3",
        "--mouth-scale",
        "1.2",
        "--pose",
        "still",
    )
    assert res.returncode == 0, res.stderr
    seq = load(out)
    assert seq.fps == 25 and seq.num_frames == 75  # 90 frames at 30 fps = 3 s
    assert np.ptp(seq.pose, axis=0).max() == 0  # still pose
    assert len(seq.meta["history"]) == 5
    # identities: smoothing 1 and mouth scale 1 leave the file's arrays unchanged
    same = tmp_path / "same.npz"
    assert run("edit", str(extracted), "-o", str(same), "--smooth", "1", "--mouth-scale", "1").returncode == 0
    np.testing.assert_array_equal(load(same).mesh, load(extracted).mesh)
    np.testing.assert_array_equal(load(same).pose, load(extracted).pose)


def test_edit_pose_template(extracted, tmp_path):
    template = shared_file("aniportrait", "pose_temp.npy")
    out = tmp_path / "templ.npz"
    assert run("edit", str(extracted), "-o", str(out), "--pose", str(template)).returncode == 0
    assert load(out).num_frames == 212


def test_retarget_onto_image(extracted, tmp_path, face_model):
    out = tmp_path / "rt.npz"
    res = run(
        "retarget",
        str(extracted),
        "--reference",
        str(shared_file("portraits", "photo_woman.jpg")),
        "-o",
        str(out),
        env_model=face_model,
    )
    assert res.returncode == 0, res.stderr
    seq = load(out)
    assert seq.num_frames == 212 and seq.reference_mesh is not None
    assert seq.image_size == (624, 624)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "{tmp}/missing.npz"), "no such landmark file"),
        (("extract", "{tmp}/empty.mp4", "-o", "{tmp}/out.npz"), "empty"),
        (("extract", "{tmp}/blank.png", "-o", "{tmp}/out.npz"), "no face found"),
        (("extract", "{tmp}/corrupt.mp4", "-o", "{tmp}/out.npz"), "corrupt.mp4"),
        (("render", "{tmp}/nan.npz", "-o", "{tmp}/out.mp4"), "contains NaN"),
        (
            ("render", "{tmp}/good.npz", "-o", "{tmp}/out.mp4", "--style", "nope"),
            "unknown drawing style|available",
        ),
        (("render", "{tmp}/good.npz", "-o", "{tmp}/out.mp4", "--size", "big"), "WIDTHxHEIGHT"),
        (("edit", "{tmp}/good.npz", "-o", "{tmp}/out.npz", "--trim", "5:2"), "trim"),
        (("edit", "{tmp}/good.npz", "-o", "{tmp}/out.npz", "--pose", "{tmp}/missing.npy"), "missing.npy"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, face_model, args, message):
    import cv2

    from tests.test_lmkfile import make_seq

    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + b"\x13" * 4000)
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((120, 160, 3), 90, np.uint8))
    good = make_seq(t=10)
    good.save(tmp_path / "good.npz")
    arrays = good.to_arrays()
    arrays["mesh"][3, 5, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    before = set(tmp_path.iterdir())
    res = run(*(a.format(tmp=tmp_path) for a in args), env_model=face_model)
    assert res.returncode == 2, (res.stdout, res.stderr)
    import re

    assert re.search(message, res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error: ")]) == 1
    assert set(tmp_path.iterdir()) == before  # nothing written, no temp files left


@pytest.mark.parametrize("command", ["edit", "render", "retarget"])
def test_an_existing_output_is_kept_unless_overwrite(extracted, tmp_path, face_model, command):
    out = tmp_path / ("out.mp4" if command == "render" else "out.npz")
    out.write_bytes(b"a file the user made")
    args = {"retarget": ["--reference", str(extracted)]}.get(command, [])
    refused = run(command, str(extracted), "-o", str(out), *args)
    assert refused.returncode == 2 and refused.stdout == ""
    assert (
        refused.stderr.strip()
        == f"error: {out} already exists; choose another output name or pass --overwrite to replace it"
    )
    assert out.read_bytes() == b"a file the user made"
    replaced = run(command, str(extracted), "-o", str(out), *args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert out.read_bytes() != b"a file the user made" and not list(tmp_path.glob(".*"))
