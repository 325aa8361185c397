"""``make demo`` (``python -m lmk2video.demo``): the whole job on the sample data with the models there are."""

from __future__ import annotations

import subprocess
import sys

from common.lmkfile import LandmarkSequence
from tests.conftest import PROJECT_ROOT, shared_file


def test_demo_without_models_runs_the_landmark_round_trip_and_says_what_it_needs(
    tmp_path, face_model
) -> None:
    video, audio = (
        shared_file("talking", "feifeili_clip2_short.mp4"),
        shared_file("talking", "feifeili_clip2_short.wav"),
    )
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "lmk2video.demo", "--video", str(video), "--audio", str(audio), "--seconds", "1",
         "--audio2lmk-model", str(tmp_path / "none_a"), "--lmk2video-model", str(tmp_path / "none_v"),
         "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        env={"TALKING_PORTRAIT_FACE_MODEL": str(face_model), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "python -m audio2lmk.train experiment=mel_small export_dir=" in result.stdout
    assert "no lmk2video model folder" in result.stdout
    clip = LandmarkSequence.load(out / "excerpt.npz")
    assert clip.num_frames == round(clip.fps)  # --seconds 1
    assert LandmarkSequence.load(out / "retargeted.npz").reference_mesh is not None
    previews = sorted(p.name for p in out.glob("*.mp4"))
    assert previews == sorted(
        ["excerpt_default.mp4", "edited_default.mp4", "retargeted_default.mp4", "edited_aniportrait.mp4"]
    )
    assert not (out / "speech.npz").exists() and not (out / "video.mp4").exists()


def test_demo_with_models_goes_from_speech_to_video(tmp_path, face_model) -> None:
    """With an audio2lmk and an lmk2video folder (tiny, random) the demo runs speech -> landmarks -> video."""
    from audio2lmk.inference import export_audio2lmk
    from tests.l2v_models import tiny_pipeline
    from tests.test_audio2lmk_infer import FPS, tiny_models

    mesh, pose = tiny_models()
    export_audio2lmk(tmp_path / "a2l", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A"])
    tiny_pipeline(motion=True).save_pretrained(tmp_path / "l2v")
    video, audio = (
        shared_file("talking", "feifeili_clip2_short.mp4"),
        shared_file("talking", "feifeili_clip2_short.wav"),
    )
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "lmk2video.demo", "--video", str(video), "--audio", str(audio), "--seconds", "1",
         "--speech", str(audio), "--audio2lmk-model", str(tmp_path / "a2l"), "--lmk2video-model",
         str(tmp_path / "l2v"), "--steps", "1", "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        env={"TALKING_PORTRAIT_FACE_MODEL": str(face_model), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
    speech = LandmarkSequence.load(out / "speech.npz")
    assert speech.reference_mesh is not None and (out / "speech_default.mp4").is_file()
    import av

    with av.open(str(out / "video.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert len(container.streams.audio) == 1
    assert frames == speech.num_frames
