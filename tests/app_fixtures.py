"""Inputs of the web app's tests: tiny model folders laid out as ``models/`` is, and short media made from the
sample files that ship in ``examples/sample`` (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io.wavfile

from tests.conftest import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "examples" / "sample"
PORTRAIT = SAMPLE / "portrait_kristi.png"


def tiny_models(root: Path) -> Path:
    """``root/tiny/audio2lmk`` and ``root/tiny/lmk2video`` (seeded random weights, 64x64 frames); returns root."""
    from audio2lmk.inference import export_audio2lmk
    from tests.l2v_models import tiny_pipeline
    from tests.test_audio2lmk_infer import FPS
    from tests.test_audio2lmk_infer import tiny_models as tiny_audio2lmk

    mesh, pose = tiny_audio2lmk()
    export_audio2lmk(
        root / "tiny" / "audio2lmk", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A", "B"]
    )
    tiny_pipeline(motion=True).save_pretrained(root / "tiny" / "lmk2video")
    return root


def speech(path: Path, seconds: float) -> Path:
    """The first ``seconds`` of the sample speech, as a wav."""
    rate, samples = scipy.io.wavfile.read(SAMPLE / "speech_en.wav")
    scipy.io.wavfile.write(path, rate, samples[: round(rate * seconds)])
    return path


def driving_clip(path: Path, frames: int = 20) -> Path:
    """The first ``frames`` frames of the sample talking clip with its sound (a short driving video)."""
    from itertools import islice

    from common.video import iter_frames, probe_video, write_video

    info = probe_video(SAMPLE / "obama_clip1.mp4")
    pictures = [rgb for _, rgb in islice(iter_frames(SAMPLE / "obama_clip1.mp4"), frames)]
    return write_video(path, pictures, info.fps, audio=SAMPLE / "obama_clip1.wav")


def blank_image(path: Path) -> Path:
    """A grey picture without a face."""
    cv2.imwrite(str(path), np.full((200, 160, 3), 128, np.uint8))
    return path


def video_stats(path: Path) -> dict:
    """Frames, frame rate and the audio's duration of a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate)
        audio = container.streams.audio
        seconds = None
        if audio:
            seconds = float(audio[0].duration * audio[0].time_base) if audio[0].duration else None
    return {"frames": frames, "fps": fps, "audio": bool(audio), "audio_seconds": seconds}
