"""The web app's jobs (``lmk2video.app_jobs``) with tiny models: model discovery, the temporary workspace, speech
and reenactment previews, the adjustments, generation with its progress, cancellation and repeatability.

The page itself is tested in a browser by tests/test_app_browser.py; bad input by tests/test_app_hostile.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.lmkfile import LandmarkSequence
from lmk2video.app_jobs import (
    Adjustments,
    Cancelled,
    SamplerChoice,
    Studio,
    Workspace,
    apply_adjustments,
    discover_models,
)
from tests.app_fixtures import PORTRAIT, driving_clip, speech, tiny_models, video_stats
from tests.l2v_models import single_thread

SECONDS = 1.0
FRAMES = 30  # the tiny audio2lmk model runs at 30 fps


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("app")
    models = tiny_models(root / "models")
    studio = Studio(models, root / "temp")
    return SimpleNamespace(
        root=root,
        studio=studio,
        a2l=str(models / "tiny" / "audio2lmk"),
        l2v=str(models / "tiny" / "lmk2video"),
        speech=speech(root / "speech.wav", SECONDS),
        driving=driving_clip(root / "driving.mp4", frames=20),
    )


def speech_job(world, session: str = "s1", **adjustments):
    return world.studio.speech_landmarks(
        session,
        audio2lmk=world.a2l,
        portrait=PORTRAIT,
        speech=world.speech,
        adjustments=Adjustments(**adjustments),
        driving=world.driving if "driving" not in adjustments else adjustments.pop("driving"),
    )


# ------------------------------------------------------------------------------------- models, workspace


def _marker(folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    (folder / name).write_text("{}")


def test_models_are_found_under_the_root_and_the_default_follows_the_gpu(tmp_path) -> None:
    for top in ("sample", "aniportrait"):
        _marker(tmp_path / top / "audio2lmk", "audio2lmk.json")
        _marker(tmp_path / top / "lmk2video", "model_index.json")
    _marker(tmp_path / "mine" / "v2" / "lmk2video", "model_index.json")
    _marker(tmp_path / ".aniportrait.123.tmp" / "lmk2video", "model_index.json")  # a folder being written
    _marker(tmp_path / "a" / "b" / "c" / "d", "model_index.json")  # deeper than three levels
    cpu = discover_models(tmp_path, gpu=False)
    assert [cpu.label(p) for p in cpu.lmk2video] == [
        "aniportrait/lmk2video",
        "mine/v2/lmk2video",
        "sample/lmk2video",
    ]
    assert [cpu.label(p) for p in cpu.audio2lmk] == ["aniportrait/audio2lmk", "sample/audio2lmk"]
    assert cpu.default_lmk2video == tmp_path / "sample" / "lmk2video"
    assert cpu.default_audio2lmk == tmp_path / "sample" / "audio2lmk"
    gpu = discover_models(tmp_path, gpu=True)
    assert gpu.default_lmk2video == tmp_path / "aniportrait" / "lmk2video"
    assert gpu.default_audio2lmk == tmp_path / "aniportrait" / "audio2lmk"


def test_the_checkout_offers_its_sample_models() -> None:
    from tests.conftest import PROJECT_ROOT

    found = discover_models(PROJECT_ROOT / "models", gpu=False)
    assert found.default_audio2lmk == PROJECT_ROOT / "models" / "sample" / "audio2lmk"
    assert found.default_lmk2video == PROJECT_ROOT / "models" / "sample" / "lmk2video"


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_the_workspace_removes_what_ended_sessions_left(tmp_path) -> None:
    dead, live, mine = tmp_path / f"{_dead_pid()}-abc", tmp_path / "1-other", tmp_path / f"{os.getpid()}-old"
    for folder in (dead, live, mine):
        (folder / "speech-001").mkdir(parents=True)
    space = Workspace(tmp_path, max_age=60)
    assert space.prepare() == [dead]  # a process that ended; another live process's folder is kept
    assert live.is_dir() and mine.is_dir()
    first, second = space.new_job("sess/../ion", "speech"), space.new_job("sess/../ion", "speech")
    assert (first.parent, first.name, second.name) == (space.session("session"), "speech-001", "speech-002")
    assert first.parent.parent == tmp_path  # the session id cannot leave the root
    old = time.time() - 120
    os.utime(mine, (old, old))
    space.new_job("other", "reenact")  # a new job sweeps this process's sessions idle for longer than max_age
    assert not mine.exists() and first.is_dir()
    space.end("session")
    assert not first.parent.exists() and live.is_dir()


# ------------------------------------------------------------------------------------------ landmarks


def test_speech_preview_is_the_landmarks_with_the_speech_and_repeats_with_the_seed(world) -> None:
    files = speech_job(world, seed=3)
    seq = LandmarkSequence.load(files.landmarks)
    assert seq.num_frames == FRAMES and seq.reference_mesh is not None
    assert seq.meta["source"] == "speech.wav" and seq.meta["reference"] == PORTRAIT.name
    stats = video_stats(files.preview)
    assert stats["frames"] == FRAMES and stats["audio"]
    assert abs(stats["audio_seconds"] - SECONDS) < 0.05
    assert files.downloads == [files.landmarks, files.preview]
    again = LandmarkSequence.load(speech_job(world, seed=3).landmarks)
    assert np.array_equal(again.mesh, seq.mesh) and np.array_equal(again.pose, seq.pose)
    assert files.folder.parent == world.studio.workspace.session("s1")


def test_adjustments_edit_the_landmarks_as_labelled(world, tmp_path) -> None:
    from common.edit import mouth_opening

    base = LandmarkSequence.load(speech_job(world).landmarks)
    turned = apply_adjustments(base, Adjustments(yaw=10, pitch=-5, roll=2).check())
    assert np.allclose(turned.pose[:, [1, 0, 2]] - base.pose[:, [1, 0, 2]], [10, -5, 2], atol=1e-3)
    still = apply_adjustments(base, Adjustments(pose="still").check())
    assert np.allclose(still.pose, base.pose[0], atol=1e-5)
    closed = apply_adjustments(base, Adjustments(mouth_scale=0).check())
    assert np.abs(mouth_opening(closed.mesh)).max() < 0.2 * np.abs(mouth_opening(base.mesh)).max() + 1e-3
    curve = apply_adjustments(base, Adjustments(pose_curve="0:yaw=0;1:yaw=20").check())
    assert abs((curve.pose[-1, 1] - base.pose[-1, 1]) - 20 * (FRAMES - 1) / FRAMES) < 1.0
    csv = tmp_path / "curve.csv"
    csv.write_text("time,yaw\n0,0\n1,20\n")
    from_file = apply_adjustments(base, Adjustments(pose_curve_file=str(csv)).check())
    assert np.allclose(from_file.pose, curve.pose, atol=1e-4)
    template = tmp_path / "pose_temp.npy"
    np.save(template, np.column_stack([np.linspace(0, 8, 10), np.zeros((10, 5))]))
    swayed = apply_adjustments(base, Adjustments(pose="template", template=str(template)).check())
    assert not np.allclose(swayed.pose, base.pose)
    for adjustments in (Adjustments(smooth=5), Adjustments(expression_scale=2), Adjustments(blink="auto")):
        edited = apply_adjustments(base, adjustments.check())
        assert edited.num_frames == base.num_frames and not np.array_equal(edited.mesh, base.mesh)
    history = " ".join(apply_adjustments(base, Adjustments(blink="none", smooth=3).check()).meta["history"])
    assert history.index("smooth") < history.index("blink")  # smoothing never erases blinks


def test_pose_blinks_and_regions_from_a_driving_video(world) -> None:
    model = LandmarkSequence.load(speech_job(world, seed=1).landmarks)
    files = speech_job(world, seed=1, pose="video", blink="video", mix=("eyes", "brows"))
    driven = LandmarkSequence.load(files.landmarks)
    assert driven.num_frames == model.num_frames and not np.allclose(driven.pose, model.pose)
    history = " ".join(driven.meta["history"])
    assert "mix eyes" in history and "brows" in history and "blink from" in history and "set_pose" in history
    cache = world.studio.workspace.cache("s1")
    assert len(list(cache.glob("driving-*.npz"))) == 1  # extracted once, reused by the second job


def test_reenactment_preview_retargets_the_driving_video_with_its_sound(world) -> None:
    files = world.studio.reenactment_landmarks(
        "s2", portrait=PORTRAIT, driving=world.driving, adjustments=Adjustments(roll=5)
    )
    seq = LandmarkSequence.load(files.landmarks)
    assert seq.num_frames == 20 and seq.reference_mesh is not None
    stats = video_stats(files.preview)
    assert stats["frames"] == 20 and stats["audio"]


# ------------------------------------------------------------------------------------------- generate


def test_generate_writes_the_video_with_the_speech_reports_progress_and_repeats(world) -> None:
    reports = []
    files = world.studio.generate_speech(
        "s3",
        audio2lmk=world.a2l,
        lmk2video=world.l2v,
        portrait=PORTRAIT,
        speech=world.speech,
        adjustments=Adjustments(seed=5),
        sampler=SamplerChoice("quality", steps=1),
        report=lambda *r: reports.append(r),
    )
    assert files.downloads == [files.video, files.landmarks, files.preview]
    stats = video_stats(files.video)
    assert stats["frames"] == FRAMES and stats["audio"] and abs(stats["audio_seconds"] - SECONDS) < 0.05
    # 1 step x 3 context windows of 16 frames (overlap 4) over 30 frames, then 30 frames decoded.
    assert [r for r in reports if r[0] == "denoising" and r[1] > 0] == [
        ("denoising", i, 3) for i in (1, 2, 3)
    ]
    assert reports[-1] == ("decoding", FRAMES, FRAMES)
    from common.video import iter_frames

    first = np.stack([f for _, f in iter_frames(files.video)])
    assert first.shape == (FRAMES, 64, 64, 3)
    again = world.studio.render_video(
        files,
        lmk2video=world.l2v,
        portrait=PORTRAIT,
        audio=files.folder / "speech.wav",
        sampler=SamplerChoice("quality", steps=1),
        seed=5,
    )
    assert again.video == files.video  # rewritten in place, atomically
    assert np.array_equal(np.stack([f for _, f in iter_frames(again.video)]), first)  # the seed repeats it


def test_a_cancelled_generation_leaves_no_video(world) -> None:
    def report(stage: str, done: int, total: int) -> None:
        if stage == "denoising" and done > 0:
            raise Cancelled()

    with pytest.raises(Cancelled):
        world.studio.generate_speech(
            "s4",
            audio2lmk=world.a2l,
            lmk2video=world.l2v,
            portrait=PORTRAIT,
            speech=world.speech,
            adjustments=Adjustments(),
            sampler=SamplerChoice("quality", steps=1),
            report=report,
        )
    assert not list(world.studio.workspace.session("s4").glob("speech-*"))  # the job's folder went with it


def test_reenactment_generates_the_video_with_the_driving_videos_sound(world) -> None:
    files = world.studio.generate_reenactment(
        "s5",
        lmk2video=world.l2v,
        portrait=PORTRAIT,
        driving=world.driving,
        adjustments=Adjustments(blink="none"),
        sampler=SamplerChoice("balanced", steps=1),
    )
    stats = video_stats(files.video)
    assert stats["frames"] == 20 and stats["audio"]
    assert files.video.name == "reenacted.mp4"


def test_aniportraits_pose_template_drives_the_head(world) -> None:
    """AniPortrait's released ``pose_temp.npy`` as the page's pose template: its motion relative to its first
    frame, composed onto the portrait's pose."""
    from common.edit import load_pose_source
    from common.geometry import absolute_to_relative
    from tests.conftest import shared_file

    template = shared_file("aniportrait", "pose_temp.npy")
    files = speech_job(world, pose="template", template=str(template))
    seq = LandmarkSequence.load(files.landmarks)
    relative = absolute_to_relative(seq.pose.astype(np.float64))
    expected = absolute_to_relative(load_pose_source(template).poses[:FRAMES])
    assert np.allclose(relative[:, :3], expected[:, :3], atol=1e-2)
