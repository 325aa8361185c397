"""``python -m lmk2video.generate`` end to end with a tiny random model on the CPU, and its refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import scipy.io.wavfile

from common.errors import UserError
from common.geometry import landmarks_to_geometry
from common.lmkfile import LandmarkSequence
from lmk2video.generate import GenerateSettings, generate
from tests.conftest import PROJECT_ROOT, detect_frames, shared_file
from tests.l2v_models import single_thread

FRAMES = 12
FPS = 30.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def env(face_model: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
        "TALKING_PORTRAIT_FACE_MODEL": str(face_model),
    }


def run_module(module: str, *args: str, cwd: Path, face_model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={cwd / '.hydra_run'}"],
        cwd=cwd,
        env=env(face_model),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory, face_model) -> Path:
    """A folder with a tiny stage-2 model (made by the init CLI), a portrait, 12 frames of another person's
    landmarks (no reference face: generate retargets them) and the matching 0.4 s of speech."""
    folder = tmp_path_factory.mktemp("generate")
    result = run_module(
        "lmk2video.init", "experiment=tiny_stage2", "out=model", cwd=folder, face_model=face_model
    )
    assert result.returncode == 0, result.stderr
    shutil.copy(shared_file("portraits", "photo_bw_man_nonsquare.jpg"), folder / "portrait.jpg")
    clip = shared_file("talking", "feifeili_clip3.mp4")
    landmarks, _, size = detect_frames(clip, face_model, max_frames=FRAMES)
    geometry = landmarks_to_geometry(landmarks, size)
    LandmarkSequence(mesh=geometry.mesh, pose=geometry.pose, fps=FPS, image_size=size).save(
        folder / "clip.npz"
    )
    rate, samples = scipy.io.wavfile.read(shared_file("talking", "feifeili_clip3.wav"))
    scipy.io.wavfile.write(folder / "clip.wav", rate, samples[: round(rate * FRAMES / FPS)])
    scipy.io.wavfile.write(folder / "long.wav", rate, samples[:rate])  # 1 s: 30 frames, not 12
    (folder / "garbage.wav").write_bytes(b"RIFF but not really a wave file" * 10)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.npz").write_bytes(b"PK not a zip")
    np.savez(folder / "malformed.npz", version=1, mesh=np.zeros((FRAMES, 10, 3), np.float32),
             pose=np.zeros((FRAMES, 6), np.float32), fps=FPS, image_size=np.array([256, 256]))  # fmt: skip
    cv2.imwrite(str(folder / "no_face.png"), np.full((200, 160, 3), 128, np.uint8))
    return folder


def probe(path: Path) -> dict:
    """Frame count, size, frame rate from the decoded frames' timestamps, audio duration."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        times = [frame.time for frame in container.decode(video)]
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(container.streams.audio[0]))
    steps = np.diff(times)
    return {
        "frames": len(times),
        "size": (video.codec_context.width, video.codec_context.height),
        "fps": round(1.0 / float(np.mean(steps)), 3) if len(steps) else None,
        "times": times,
        "audio_seconds": samples / audio.codec_context.sample_rate,
    }


def settings(work: Path, face_model: Path, **changes) -> GenerateSettings:
    values = {
        "model": "model",
        "reference": "portrait.jpg",
        "landmarks": "clip.npz",
        "audio": "clip.wav",
        "out": "out/video.mp4",
        "steps": 2,
        "context_frames": 8,
        "face_model": str(face_model),
        "progress": False,
        **changes,
    }
    return GenerateSettings.from_config(values, work)


# ----------------------------------------------------------------------------------------- success


def test_cli_writes_one_frame_per_landmark_frame_with_audio_and_a_grid(work, face_model) -> None:
    """Relative paths are taken from the folder the command runs in."""
    result = run_module(
        "lmk2video.generate",
        "model=model",
        "reference=portrait.jpg",
        "landmarks=clip.npz",
        "audio=clip.wav",
        "out=cli/video.mp4",
        "steps=2",
        "context_frames=8",
        "grid=true",
        cwd=work,
        face_model=face_model,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "retargeting" in result.stdout
    )  # the landmarks came from another person's video (Hydra logs to stdout)
    info = probe(work / "cli" / "video.mp4")
    assert info["frames"] == FRAMES and info["fps"] == FPS, info["times"]
    assert info["size"] == (3 * 64, 64)  # reference | landmarks | result
    assert abs(info["audio_seconds"] - FRAMES / FPS) <= 1 / FPS
    assert sorted(p.name for p in (work / "cli").iterdir()) == ["video.mp4"]


def test_non_square_output_without_grid(work, face_model) -> None:
    out = generate(settings(work, face_model, out="square/video.mp4", width=48, height=64, context_frames=16))
    info = probe(out)
    assert info["frames"] == FRAMES and info["size"] == (48, 64)


def test_audio_driven_landmarks_are_written_beside_the_video(work, face_model) -> None:
    clip = LandmarkSequence.load(work / "clip.npz")
    calls = []

    def audio_to_landmarks(options: GenerateSettings, reference: LandmarkSequence) -> LandmarkSequence:
        calls.append((options.audio, reference.num_frames))
        return clip

    out = generate(settings(work, face_model, landmarks=None, out="audio/video.mp4"), audio_to_landmarks)
    assert calls == [(str(work / "clip.wav"), 1)]
    assert LandmarkSequence.load(out.with_suffix(".npz")).num_frames == FRAMES
    assert probe(out)["frames"] == FRAMES
    with pytest.raises(UserError, match=r"landmarks=FILE\.npz is required"):
        generate(settings(work, face_model, landmarks=None, out="audio2/video.mp4"))
    assert not (work / "audio2").exists()


# ------------------------------------------------------------------------------------------- refusals


def _mismatched_model(work: Path) -> str:
    folder = work / "broken_model"
    if not folder.exists():
        shutil.copytree(work / "model", folder)
        (folder / "pose_guider" / "diffusion_pytorch_model.safetensors").unlink()
    return "broken_model"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reference": "no_face.png"}, "no_face.png: no face found"),
        ({"reference": "missing.jpg"}, "missing.jpg: no such image"),
        ({"landmarks": "garbage.npz"}, "garbage.npz: not a readable landmark"),
        ({"landmarks": "malformed.npz"}, "malformed.npz: key 'mesh'"),
        ({"landmarks": "missing.npz"}, "missing.npz: no such landmark file"),
        ({"audio": "long.wav"}, "long.wav lasts 1.000 s"),
        ({"audio": "garbage.wav"}, "cannot read audio from .*garbage.wav"),
        ({"audio": "missing.wav"}, "missing.wav: no such audio"),
        ({"audio": "empty.wav"}, "empty.wav is empty"),
        ({"model": "no_model"}, "no_model does not exist"),
        ({"model": "portrait.jpg"}, "portrait.jpg does not exist"),
        ({"model": "mismatched"}, "pose_guider"),
        ({"context_frames": 20}, "max_position=16"),
        ({"context_overlap": 8}, "context_overlap=8"),
        ({"width": 60}, "multiples of 8"),
        ({"steps": 0}, "steps=0"),
        ({"out": "refused/video.avi"}, "write videos as .mp4"),
        ({"model": None}, "model=... is required"),
        ({"landmarks": None, "audio": None}, "landmarks=FILE.npz is required"),
        ({"dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_is_written(work, face_model, changes, message) -> None:
    if changes.get("model") == "mismatched":
        changes = {**changes, "model": _mismatched_model(work)}
    out_dir = work / "refused"
    with pytest.raises(UserError, match=message) as err:
        generate(settings(work, face_model, **{"out": "refused/video.mp4", **changes}))
    assert "\n" not in str(err.value)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_cli_refusal_exits_2_with_one_error_line(work, face_model) -> None:
    result = run_module(
        "lmk2video.generate",
        "model=model",
        "reference=no_face.png",
        "landmarks=clip.npz",
        "audio=clip.wav",
        "out=refused_cli/video.mp4",
        cwd=work,
        face_model=face_model,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no_face.png: no face found" in errors[0]
    assert not (work / "refused_cli").exists()
