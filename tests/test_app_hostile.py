"""Hostile input, the web app: every bad upload or field value is one readable :class:`UserError` naming the
upload (as the user named it, never the server's temporary path) or the field and the fix; no model is loaded
for input that alone decides, and the refused job leaves no folder behind. The page shows exactly that message
(``page_errors``; tests/test_app_browser.py checks two of them in a browser); the CLI's own options exit 2.

The command-line tools' matrix is tests/test_hostile_input.py; this is the same idea for the app's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import scipy.io.wavfile

from common.errors import UserError
from lmk2video.app_jobs import Adjustments, LoadedModels, SamplerChoice, Studio, Workspace
from tests.app_fixtures import PORTRAIT, blank_image, speech, tiny_models

UNWRITABLE = "/proc/hostile/app"  # not even root can create files there


class LoaderCalled(BaseException):
    """A model was loaded for input that should have been refused first."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("app_hostile")
    models = tiny_models(root / "models")
    files = root / "files"
    files.mkdir()
    speech(files / "speech.wav", 1.0)
    blank_image(files / "grey.png")
    cv2.imwrite(str(files / "huge.png"), np.zeros((8, 9000, 3), np.uint8))
    (files / "garbage.png").write_bytes(b"not an image" * 100)
    (files / "garbage.wav").write_bytes(b"RIFF but not really a wave file" * 10)
    (files / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing" * 10)
    (files / "garbage.npy").write_bytes(b"\x93NUMPY broken")
    (files / "empty.wav").write_bytes(b"")
    np.save(files / "wrong_shape.npy", np.zeros((10, 3)))
    (files / "curve.txt").write_text("time,yaw\n0,0\n")
    (files / "curve.csv").write_text("time,yaw\n1,0\n0,10\n")
    rate = 16000
    scipy.io.wavfile.write(files / "silent.wav", rate, np.zeros(rate, np.int16))
    noise = (np.random.default_rng(0).standard_normal(61 * rate) * 3000).astype(np.int16)
    scipy.io.wavfile.write(files / "long.wav", rate, noise)
    from common.video import write_video

    grey = np.full((4, 64, 64, 3), 128, np.uint8)
    write_video(files / "mute.mp4", [grey], 25.0)  # no sound, no face
    write_video(files / "long.mp4", [np.repeat(grey[:1], 62, axis=0)], 1.0)  # 62 s at 1 fps
    return SimpleNamespace(studio=Studio(models, root / "temp"), models=models, files=files)


@dataclass(frozen=True)
class Case:
    id: str
    message: str  # a fragment the message must contain (the upload or field named, and why)
    portrait: str | None = "PORTRAIT"
    speech: str | None = "speech.wav"
    driving: str | None = None
    adjustments: dict[str, Any] = field(default_factory=dict)
    sampler: tuple[str, Any] = ("quality", 1)
    job: str = "speech"  # speech | generate | reenact
    audio2lmk: str | None = "tiny/audio2lmk"
    lmk2video: str | None = "tiny/lmk2video"


# fmt: off
CASES = [
    # ------------------------------------------------------------------------------------------ portrait
    Case("portrait-none", "no portrait: upload an image", portrait=None),
    Case("portrait-gone", "portrait 'gone.png' is not there any more", portrait="gone.png"),
    Case("portrait-no-face", "portrait 'grey.png': no face found", portrait="grey.png"),
    Case("portrait-garbage", "portrait 'garbage.png': not a readable image", portrait="garbage.png"),
    Case("portrait-huge", "portrait 'huge.png': the image is 9000x8 pixels, more than 8192", portrait="huge.png"),
    Case("portrait-audio", "portrait 'speech.wav' is not an image file", portrait="speech.wav"),
    Case("reenact-portrait-no-face", "portrait 'grey.png': no face found", portrait="grey.png", job="reenact",
         driving="mute.mp4"),
    # -------------------------------------------------------------------------------------------- speech
    Case("speech-none", "no speech: upload an audio file or record", speech=None),
    Case("speech-garbage", "speech 'garbage.wav'", speech="garbage.wav"),
    Case("speech-empty", "speech 'empty.wav' is empty", speech="empty.wav"),
    Case("speech-silent", "speech 'silent.wav' is silent", speech="silent.wav"),
    Case("speech-too-long", "speech 'long.wav' lasts 61.0 s, longer than this app's limit of 60 s", speech="long.wav"),
    Case("speech-image", "speech 'grey.png'", speech="grey.png"),
    Case("speech-no-sound", "speech 'mute.mp4' has no audio stream", speech="mute.mp4"),
    Case("generate-speech-silent", "speech 'silent.wav' is silent", speech="silent.wav", job="generate"),
    # ------------------------------------------------------------------------------------- driving video
    Case("driving-missing", "come from a driving video, but none was uploaded", adjustments={"pose": "video"}),
    Case("driving-none", "no driving video: upload a video", job="reenact"),
    Case("driving-garbage", "driving video 'garbage.mp4'", driving="garbage.mp4", job="reenact"),
    Case("driving-audio", "driving video 'speech.wav' is not a video file", driving="speech.wav", job="reenact"),
    Case("driving-no-face", "driving video 'mute.mp4'", driving="mute.mp4", adjustments={"blink": "video"}),
    Case("driving-too-long", "driving video 'long.mp4' lasts 62.0 s, longer than this app's limit of 60 s",
         driving="long.mp4", job="reenact"),
    # --------------------------------------------------------------------------------------- adjustments
    Case("template-none", "needs a pose template", adjustments={"pose": "template"}),
    Case("template-garbage", "pose template 'garbage.npy'", adjustments={"pose": "template", "template": "garbage.npy"}),
    Case("template-shape", "pose template 'wrong_shape.npy'", adjustments={"pose": "template", "template": "wrong_shape.npy"}),
    Case("template-type", "pose template 'curve.txt' is not a .npy file", adjustments={"pose": "template", "template": "curve.txt"}),
    Case("curve-text", "pose curve 'sideways'", adjustments={"pose_curve": "sideways"}),
    Case("curve-angle", "yaw=500", adjustments={"pose_curve": "0:yaw=500"}),
    Case("curve-path", "type keyframes", adjustments={"pose_curve": "/etc/secrets.csv"}),
    Case("curve-both", "not both", adjustments={"pose_curve": "0:yaw=5", "pose_curve_file": "curve.csv"}),
    Case("curve-file-type", "pose curve 'curve.txt' is not a .csv file", adjustments={"pose_curve_file": "curve.txt"}),
    Case("curve-file-order", "pose curve 'curve.csv'", adjustments={"pose_curve_file": "curve.csv"}),
    Case("mouth-huge", "mouth scale 11 must be a number from 0 to 10", adjustments={"mouth_scale": 11}),
    Case("mouth-nan", "mouth scale", adjustments={"mouth_scale": float("nan")}),
    Case("expression-negative", "expression scale -1", adjustments={"expression_scale": -1}),
    Case("smooth-zero", "smoothing 0 must be a whole number from 1", adjustments={"smooth": 0}),
    Case("smooth-fraction", "smoothing 2.5", adjustments={"smooth": 2.5}),
    Case("yaw-huge", "yaw 200 must be a number from -90 to 90", adjustments={"yaw": 200}),
    Case("roll-text", "roll 'left'", adjustments={"roll": "left"}),
    Case("blink-unknown", "blinks 'often'", adjustments={"blink": "often"}),
    Case("pose-unknown", "head pose 'wild'", adjustments={"pose": "wild"}),
    Case("mix-unknown", "mix regions ['nose']", adjustments={"mix": ("nose",)}),
    Case("seed-negative", "seed -1 must be a whole number from 0", adjustments={"seed": -1}),
    Case("seed-huge", "seed", adjustments={"seed": 2**64}),
    Case("seed-none", "seed: give a whole number", adjustments={"seed": None}),
    Case("style-unknown", "style='Nobody' is not a speaker of this model", adjustments={"style": "Nobody"}),
    # ----------------------------------------------------------------------------------- models, sampler
    Case("audio2lmk-elsewhere", "is not one of the audio2lmk models", audio2lmk="/etc"),
    Case("audio2lmk-none", "no audio2lmk model folder under", audio2lmk=None),
    Case("lmk2video-elsewhere", "is not one of the lmk2video models", lmk2video="/etc", job="generate"),
    Case("steps-huge", "steps 5000 must be a whole number from 1 to 1000", sampler=("quality", 5000), job="generate"),
    Case("preset-unknown", "quality 'turbo'", sampler=("turbo", None), job="generate"),
]
# fmt: on
LOADS = {"style-unknown"}  # the speakers are known once the model is loaded


def _path(world, name: str | None) -> str | None:
    if name is None:
        return None
    if name == "PORTRAIT":
        return str(PORTRAIT)
    return str(world.files / name)


def _model(world, name: str | None) -> str | None:
    return None if name is None else str(world.models / name) if not name.startswith("/") else name


def _run(world, case: Case, session: str) -> None:
    studio = world.studio
    adjustments = dict(case.adjustments)
    for key in ("template", "pose_curve_file"):
        if key in adjustments:
            adjustments[key] = _path(world, adjustments[key])
    adjust = Adjustments(**adjustments)
    common = {"portrait": _path(world, case.portrait), "adjustments": adjust}
    if case.job == "reenact":
        studio.reenactment_landmarks(session, driving=_path(world, case.driving), **common)
        return
    speech_kwargs = {
        "audio2lmk": _model(world, case.audio2lmk),
        "speech": _path(world, case.speech),
        "driving": _path(world, case.driving),
        **common,
    }
    if case.job == "generate":
        studio.generate_speech(
            session,
            lmk2video=_model(world, case.lmk2video),
            sampler=SamplerChoice(*case.sampler),
            **speech_kwargs,
        )
    else:
        studio.speech_landmarks(session, **speech_kwargs)


def _refuse(*args, **kwargs):
    raise LoaderCalled("a model was loaded before the input was refused")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_app_input_is_one_readable_message(case: Case, world, monkeypatch) -> None:
    if case.id not in LOADS:
        monkeypatch.setattr(LoadedModels, "audio2lmk", _refuse)
        monkeypatch.setattr(LoadedModels, "lmk2video", _refuse)
    session = f"hostile-{case.id}"
    with pytest.raises(UserError) as info:
        _run(world, case, session)
    message = str(info.value)
    assert case.message in message, message
    assert "\n" not in message and "Traceback" not in message
    assert str(world.files) not in message  # uploads are named as the user knows them
    folder = world.studio.workspace.session(session)
    assert not [p for p in folder.glob("*") if p.name != "cache"], "a refused job left files"


def test_an_unwritable_temporary_folder_is_refused_at_start(world) -> None:
    with pytest.raises(UserError, match="--temp-dir"):
        Workspace(UNWRITABLE).prepare()
    with pytest.raises(UserError, match="--temp-dir"):
        Studio(world.models, UNWRITABLE)


def test_a_missing_models_folder_is_refused_at_start(tmp_path) -> None:
    with pytest.raises(UserError, match="--models DIR"):
        Studio(tmp_path / "none", tmp_path / "temp")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-seconds", "-1"], "--max-seconds -1.0 must be a number above 0"),
        (["--queue-size", "0"], "--queue-size 0"),
        (["--max-upload", "lots"], "--max-upload 'lots': write a size such as 50mb"),
        (["--max-upload", "0mb"], "--max-upload '0mb'"),
        (["--models", "/nonexistent/models"], "--models DIR"),
        (["--temp-dir", UNWRITABLE], "--temp-dir"),
        (["--device", "tpu"], "device='tpu'"),
    ],
)
def test_the_apps_options_exit_2_with_one_line(argv, message, world, capsys, tmp_path) -> None:
    from lmk2video.app import main

    args = ["--models", str(world.models), "--temp-dir", str(tmp_path / "temp"), *argv]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_the_page_shows_the_message_and_never_a_traceback() -> None:
    import gradio as gr

    from lmk2video.app import page_errors, portrait_image

    @page_errors
    def bad_input():
        raise UserError("portrait 'me.png': no face found; give an image with a face")

    @page_errors
    def a_bug():
        raise KeyError("oops")

    with pytest.raises(gr.Error) as info:
        bad_input()
    assert info.value.message == "portrait 'me.png': no face found; give an image with a face"
    with pytest.raises(gr.Error) as info:
        a_bug()
    assert info.value.message.startswith("the job failed: KeyError") and "Traceback" not in info.value.message
    from gradio.data_classes import FileData

    image = portrait_image(gr)
    with pytest.raises(gr.Error, match=r"portrait 'holiday\.png' is not a readable image"):
        image.preprocess(FileData(path=str(Path(__file__)), orig_name="holiday.png"))
