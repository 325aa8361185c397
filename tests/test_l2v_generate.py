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
from lmk2video.generation import GenerateSettings, generate
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
        [sys.executable, "-m", module, *args],
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


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_cli_writes_one_frame_per_landmark_frame_with_audio_and_a_grid(work, face_model) -> None:
    """Relative paths are taken from the folder the command runs in; the video is all it writes there
    (no run folder, no log file: logs go to stderr)."""
    before = files_under(work)
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
    assert files_under(work) - before == {"cli", "cli/video.mp4"}
    assert result.stdout == ""
    assert "retargeting" in result.stderr  # the landmarks came from another person's video
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
    with pytest.raises(UserError, match=r"needs audio2lmk_model=DIR"):
        generate(settings(work, face_model, landmarks=None, out="audio2/video.mp4"))
    assert not (work / "audio2").exists()


def test_existing_outputs_are_kept_unless_overwrite(work, face_model) -> None:
    """A hand-edited OUT.npz beside the video is never replaced without overwrite=true; nor is the video."""
    clip = LandmarkSequence.load(work / "clip.npz")
    folder = work / "keep"
    folder.mkdir()
    shutil.copy(work / "clip.npz", folder / "video.npz")
    edited = (folder / "video.npz").read_bytes()
    audio_driven = settings(work, face_model, landmarks=None, out="keep/video.mp4")
    with pytest.raises(UserError, match=r"video.npz already exists; .* overwrite=true"):
        generate(audio_driven, lambda options, reference: clip)
    assert (folder / "video.npz").read_bytes() == edited and not (folder / "video.mp4").exists()
    (folder / "video.mp4").write_bytes(b"an older video")
    with pytest.raises(UserError, match=r"video.mp4 already exists; .* overwrite=true"):
        generate(settings(work, face_model, landmarks="keep/video.npz", out="keep/video.mp4"))
    assert (folder / "video.mp4").read_bytes() == b"an older video"
    audio_driven.overwrite = True
    generate(audio_driven, lambda options, reference: clip)
    assert probe(folder / "video.mp4")["frames"] == FRAMES


def test_log_dir_keeps_a_run_folder_only_when_asked(work, face_model) -> None:
    result = run_module(
        "lmk2video.generate", "model=model", "reference=portrait.jpg", "landmarks=clip.npz", "out=logged/v.mp4",
        "steps=1", "context_frames=8", "log_dir=runs/one", cwd=work, face_model=face_model,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = work / "runs" / "one"
    assert (run / ".hydra" / "config.yaml").is_file()
    assert "wrote" in (run / "generate.log").read_text()


def test_cli_runs_audio2lmk_first_with_an_audio2lmk_model(work, face_model) -> None:
    """audio= without landmarks=: a real (tiny, random) audio2lmk model folder makes the landmarks."""
    from audio2lmk.inference import export_audio2lmk, load_audio2lmk
    from tests.test_audio2lmk_infer import FPS as A2L_FPS
    from tests.test_audio2lmk_infer import tiny_models

    mesh, pose = tiny_models()
    export_audio2lmk(work / "a2l", mesh_model=mesh, pose_model=pose, fps=A2L_FPS, styles=["A", "B"])
    result = run_module(
        "lmk2video.generate",
        "model=model",
        "audio2lmk_model=a2l",
        "reference=portrait.jpg",
        "audio=clip.wav",
        "out=a2l_out/video.mp4",
        "steps=1",
        "context_frames=8",
        "audio2lmk_style=B",
        cwd=work,
        face_model=face_model,
    )
    assert result.returncode == 0, result.stderr
    landmarks = LandmarkSequence.load(work / "a2l_out" / "video.npz")
    assert landmarks.num_frames == FRAMES and landmarks.reference_mesh is not None
    assert probe(work / "a2l_out" / "video.mp4")["frames"] == FRAMES
    # the same as audio2lmk.infer with the same inputs and seed (generate's default seed=42)
    from audio2lmk.inference import audio_to_landmarks
    from common.detect import load_reference

    expected = audio_to_landmarks(
        load_audio2lmk(work / "a2l"), work / "clip.wav", load_reference(work / "portrait.jpg", str(face_model)),
        style="B", seed=42,
    )  # fmt: skip
    np.testing.assert_allclose(landmarks.mesh, expected.mesh, atol=1e-5)
    np.testing.assert_allclose(landmarks.pose, expected.pose, atol=1e-4)

    bad = run_module(
        "lmk2video.generate", "model=model", "audio2lmk_model=model", "reference=portrait.jpg", "audio=clip.wav",
        "out=a2l_bad/video.mp4", cwd=work, face_model=face_model,
    )  # fmt: skip
    assert bad.returncode == 2 and "audio2lmk" in bad.stderr and not (work / "a2l_bad").exists()


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
        ({"width": 60}, "multiple of 8"),
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
