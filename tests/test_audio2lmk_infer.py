"""audio2lmk inference: model folder round trip, strict loading, audio_to_landmarks, and
`python -m audio2lmk.infer` end to end with its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from audio2lmk import infer
from audio2lmk.inference import audio_to_landmarks, export_audio2lmk, load_audio2lmk
from audio2lmk.models import Audio2MeshModel, Audio2PoseModel
from common.audio import num_frames_for
from common.edit import load_pose_source, set_pose
from common.errors import UserError
from common.lmkfile import LandmarkSequence
from tests.audio2lmk_tiny import one_torch_thread, randomize_, speechlike, write_audio  # noqa: F401
from tests.conftest import PROJECT_ROOT, shared_file

FPS = 30.0
# Transformer windows of 1 s with 0.5 s context either side: one pass up to 2 s (60 frames).
ENCODER = {
    "type": "mel",
    "n_mels": 16,
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "ffn_dim": 32,
    "pos_conv_kernel": 5,
    "window_seconds": 1.0,
    "context_seconds": 0.5,
}


def tiny_models(seed: int = 0) -> tuple[Audio2MeshModel, Audio2PoseModel]:
    mesh = randomize_(Audio2MeshModel(encoder=ENCODER, head_hidden_dims=(8,), fps=FPS), seed, scale=0.05)
    pose = Audio2PoseModel(
        encoder=ENCODER,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        ffn_dim=16,
        num_styles=3,
        attention_span=20,
        fps=FPS,
    )
    return mesh, randomize_(pose, seed + 1, scale=0.3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    mesh, pose = tiny_models()
    return export_audio2lmk(
        tmp_path_factory.mktemp("a2l") / "model", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A", "B"]
    )


def reference(pose=(5.0, -10.0, 2.0, 1.0, -2.0, -40.0)) -> LandmarkSequence:
    rng = np.random.default_rng(5)
    return LandmarkSequence(
        mesh=rng.normal(scale=3.0, size=(1, 468, 3)), pose=np.array([pose]), fps=25.0, image_size=(300, 200)
    )


def test_export_and_load_round_trip(model_dir, tmp_path):
    loaded = load_audio2lmk(model_dir)
    mesh, pose = tiny_models()
    for ours, theirs in ((loaded.mesh_model, mesh), (loaded.pose_model, pose)):
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value)
    assert loaded.styles == ["A", "B"] and loaded.fps == FPS
    assert loaded.pose_postprocess == {"rotation_scale": 1.0, "smooth": 1}
    audio = speechlike(16000)[0].numpy()
    a = audio_to_landmarks(model_dir, audio, reference(), seed=1)
    b = audio_to_landmarks(loaded, audio, reference(), seed=1)
    np.testing.assert_array_equal(a.mesh, b.mesh)
    np.testing.assert_array_equal(a.pose, b.pose)
    # exporting again over the folder replaces it in one piece
    export_audio2lmk(model_dir.parent / "again", mesh_model=mesh, pose_model=None, fps=FPS, styles=[])
    export_audio2lmk(model_dir.parent / "again", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["x"])
    assert (model_dir.parent / "again" / "audio2pose").is_dir()
    assert not list(model_dir.parent.glob(".again*"))


@pytest.mark.parametrize("seconds", [1 / 30, 2.0, 4.0, 6.0, 9.3])
def test_lengths(model_dir, seconds):
    """One frame, exactly one encoder pass (2 s), multiples of the window, and a long clip."""
    audio = speechlike(round(seconds * 16000), seed=2)[0].numpy()
    ref = reference()
    seq = audio_to_landmarks(model_dir, audio, ref, style=1)
    frames = num_frames_for(len(audio), FPS)
    assert seq.num_frames == frames and seq.fps == FPS
    assert seq.image_size == (300, 200)
    np.testing.assert_allclose(seq.pose[0], ref.pose[0], atol=1e-4)
    np.testing.assert_allclose(seq.reference_mesh, ref.mesh[0])
    np.testing.assert_allclose(seq.reference_pose, ref.pose[0])
    loaded = load_audio2lmk(model_dir)
    offsets = loaded.mesh_model(torch.from_numpy(audio)[None], frames)[0].detach().numpy()
    np.testing.assert_allclose(seq.mesh, ref.mesh[0][None] + offsets, atol=1e-5)
    if frames > 1:
        assert np.abs(np.diff(seq.pose, axis=0)).max() > 1e-4  # the head moves


def test_pose_modes_and_styles(model_dir):
    audio = speechlike(32000, seed=3)[0].numpy()
    ref = reference()
    still = audio_to_landmarks(model_dir, audio, ref, pose="still")
    assert np.all(still.pose == still.pose[0]) and np.allclose(still.pose[0], ref.pose[0])
    assert still.meta["style"] is None
    template = shared_file("aniportrait", "pose_temp.npy")
    driven = audio_to_landmarks(model_dir, audio, ref, pose=template)
    expected = set_pose(still, load_pose_source(template)).pose
    np.testing.assert_allclose(driven.pose, expected, atol=1e-5)
    by_name = audio_to_landmarks(model_dir, audio, ref, style="B")
    by_id = audio_to_landmarks(model_dir, audio, ref, style=1)
    np.testing.assert_array_equal(by_name.pose, by_id.pose)
    assert by_id.meta["style_name"] == "B"
    other = audio_to_landmarks(model_dir, audio, ref, style=0)
    assert not np.allclose(other.pose, by_id.pose)
    seeded = [audio_to_landmarks(model_dir, audio, ref, seed=7).meta["style"] for _ in range(2)]
    assert seeded[0] == seeded[1] and seeded[0] in (0, 1)
    for bad, message in ((2, "out of range"), ("C", "not a speaker"), (-1, "out of range")):
        with pytest.raises(UserError, match=message):
            audio_to_landmarks(model_dir, audio, ref, style=bad)


def test_postprocess_scales_and_smooths(tmp_path):
    mesh, pose = tiny_models()
    audio = speechlike(32000, seed=4)[0].numpy()
    ref = reference()
    plain = export_audio2lmk(tmp_path / "plain", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A"])
    post = export_audio2lmk(
        tmp_path / "post",
        mesh_model=mesh,
        pose_model=pose,
        fps=FPS,
        styles=["A"],
        pose_postprocess={"rotation_scale": 0.0, "smooth": 5},
    )
    moving = audio_to_landmarks(plain, audio, ref, style=0)
    damped = audio_to_landmarks(post, audio, ref, style=0)
    rot_moving = np.abs(moving.pose[:, :3] - ref.pose[0, :3]).max()
    rot_damped = np.abs(damped.pose[:, :3] - ref.pose[0, :3]).max()
    assert rot_damped < 0.2 * rot_moving  # rotations scaled to 0 (up to the re-anchoring of frame 0)
    with pytest.raises(UserError, match="pose_postprocess"):
        export_audio2lmk(
            tmp_path / "bad",
            mesh_model=mesh,
            pose_model=pose,
            fps=FPS,
            styles=[],
            pose_postprocess={"smooth": 0},
        )


def test_mesh_only_and_pose_only_folders(tmp_path):
    mesh, pose = tiny_models()
    audio = speechlike(8000)[0].numpy()
    mesh_only = export_audio2lmk(tmp_path / "m", mesh_model=mesh, pose_model=None, fps=FPS, styles=[])
    with pytest.raises(UserError, match="no pose model"):
        audio_to_landmarks(mesh_only, audio, reference())
    assert audio_to_landmarks(mesh_only, audio, reference(), pose="still").num_frames == 15
    pose_only = export_audio2lmk(tmp_path / "p", mesh_model=None, pose_model=pose, fps=FPS, styles=["A"])
    seq = audio_to_landmarks(pose_only, audio, reference())
    np.testing.assert_allclose(seq.mesh, np.repeat(reference().mesh, 15, axis=0), atol=1e-6)


def test_strict_loading_errors(model_dir, tmp_path):
    import shutil

    with pytest.raises(UserError, match="does not exist"):
        load_audio2lmk(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an audio2lmk model folder"):
        load_audio2lmk(tmp_path / "empty")

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        edit(folder)
        return folder

    broken_json = variant("json", lambda f: (f / "audio2lmk.json").write_text("{not json"))
    with pytest.raises(UserError, match=r"not a valid audio2lmk\.json"):
        load_audio2lmk(broken_json)

    def retag(folder, **changes):
        info = json.loads((folder / "audio2lmk.json").read_text())
        info.update(changes)
        (folder / "audio2lmk.json").write_text(json.dumps(info))

    with pytest.raises(UserError, match="format"):
        load_audio2lmk(variant("fmt", lambda f: retag(f, format="other")))
    with pytest.raises(UserError, match="missing"):
        load_audio2lmk(variant("sub", lambda f: shutil.rmtree(f / "audio2pose")))
    with pytest.raises(UserError, match="fps"):
        load_audio2lmk(variant("fps", lambda f: retag(f, fps=25.0)))
    with pytest.raises(UserError, match="styles"):
        load_audio2lmk(variant("styles", lambda f: retag(f, styles=["a", "b", "c", "d"])))

    def other_weights(folder):
        shutil.rmtree(folder / "audio2mesh")
        wider = Audio2MeshModel(encoder=ENCODER, head_hidden_dims=(12,), fps=FPS)
        wider.save_pretrained(folder / "audio2mesh")
        config = json.loads((model_dir / "audio2mesh" / "config.json").read_text())
        (folder / "audio2mesh" / "config.json").write_text(json.dumps(config))

    with pytest.raises(UserError, match=r"do not fit|shape"):
        load_audio2lmk(variant("weights", other_weights))


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def run_cli(*args: str, face_model: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if face_model is not None:
        env["TALKING_PORTRAIT_FACE_MODEL"] = str(face_model)
    return subprocess.run(
        [sys.executable, "-m", "audio2lmk.infer", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end(model_dir, tmp_path, face_model):
    image = shared_file("portraits", "photo_woman.jpg")
    audio = shared_file("speech", "en_24k_mono.wav")
    out = tmp_path / "talk.npz"
    res = run_cli(
        f"model={model_dir}", f"audio={audio}", f"reference={image}", f"out={out}", f"hydra.run.dir={tmp_path / 'h'}",
        face_model=face_model,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    seq = LandmarkSequence.load(out)
    from common.audio import load_audio

    assert seq.num_frames == num_frames_for(len(load_audio(audio)), FPS)
    np.testing.assert_allclose(seq.pose[0], seq.reference_pose, atol=1e-4)
    assert seq.meta["seed"] == 0 and seq.meta["style"] in (0, 1)
    from common.detect import extract_image

    detected = extract_image(image, model_path=face_model)
    np.testing.assert_allclose(seq.reference_pose, detected.pose[0], atol=1e-4)
    assert tuple(seq.image_size) == detected.image_size

    ref_npz = tmp_path / "ref.npz"
    detected.save(ref_npz)
    still = tmp_path / "still.npz"
    res = run_cli(
        f"model={model_dir}", f"audio={audio}", f"reference={ref_npz}", f"out={still}", "pose=still",
        f"hydra.run.dir={tmp_path / 'h2'}",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    still_seq = LandmarkSequence.load(still)
    assert np.all(still_seq.pose == still_seq.pose[0])
    np.testing.assert_allclose(still_seq.mesh, seq.mesh, atol=1e-5)


def run_inprocess(args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """``python -m audio2lmk.infer ARGS`` in this process (fast); returns (exit status, stderr)."""
    argv = ["audio2lmk.infer", *args, f"hydra.run.dir={tmp_path / 'hydra'}", "hydra/job_logging=disabled"]
    capsys.readouterr()
    with mock.patch.object(sys, "argv", argv):
        try:
            infer.main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_cli_bad_inputs(model_dir, tmp_path, capsys, face_model):
    good_audio = write_audio(tmp_path / "ok.wav", speechlike(8000)[0].numpy()[None], 16000)
    silent = write_audio(tmp_path / "silent.wav", np.zeros((1, 8000)), 16000)
    short = write_audio(tmp_path / "short.wav", speechlike(200)[0].numpy()[None], 16000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    no_face = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(no_face), np.full((64, 64, 3), 127, np.uint8))
    ref = tmp_path / "ref.npz"
    reference().save(ref)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "outs" / "out.npz"
    cases = {
        "empty audio": [f"audio={empty}"],
        "unreadable audio": [f"audio={garbage}"],
        "silent audio": [f"audio={silent}"],
        "too short audio": [f"audio={short}"],
        "missing audio": [f"audio={tmp_path / 'none.wav'}"],
        "no face": [f"reference={no_face}", f"face_model={face_model}"],
        "bad model": [f"model={tmp_path}"],
        "unwritable output": [f"out={blocker / 'out.npz'}"],
        "not npz": [f"out={tmp_path / 'outs' / 'out.txt'}"],
        "bad pose file": ["pose=nothing.npy"],
        "bad style": ["style=Z"],
    }
    base = {"model": str(model_dir), "audio": str(good_audio), "reference": str(ref), "out": str(out)}
    for name, changes in cases.items():
        args = dict(base)
        for change in changes:
            key, value = change.split("=", 1)
            args[key] = value
        code, err = run_inprocess([f"{k}={v}" for k, v in args.items()], tmp_path, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert not out.exists() and not (tmp_path / "outs" / "out.txt").exists(), name
        assert not list((tmp_path / "outs").glob(".*")) if (tmp_path / "outs").exists() else True, name
    code, err = run_inprocess([f"{k}={v}" for k, v in base.items()], tmp_path, capsys)
    assert code == 0 and out.is_file(), err
    # a second run keeps the existing file unless overwrite=true
    written = out.read_bytes()
    code, err = run_inprocess([f"{k}={v}" for k, v in base.items()], tmp_path, capsys)
    assert (
        code == 2
        and err.strip()
        == f"error: {out} already exists; choose another output name or pass overwrite=true to replace it"
    )
    assert out.read_bytes() == written
    code, err = run_inprocess(
        [*(f"{k}={v}" for k, v in base.items()), "overwrite=true", "seed=5"], tmp_path, capsys
    )
    assert code == 0 and out.read_bytes() != written, err
