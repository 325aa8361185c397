"""``common.evaluation``: every metric on constructed cases with a known answer, then the CLI end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.evaluation.faces import (
    LEFT_EYE_OUTER,
    LOWER_INNER_LIP,
    RIGHT_EYE_OUTER,
    UPPER_INNER_LIP,
    FaceTrack,
)
from common.evaluation.landmarks import landmark_scores
from common.evaluation.pixels import PSNR_CAP, pixel_scores
from common.evaluation.scores import pearson
from common.evaluation.stats import summarize
from common.evaluation.sync import audio_envelope, sync_scores
from tests.conftest import PROJECT_ROOT, run_main, shared_file

FPS = 25.0


def face_track(
    frames: int = 40, seed: int = 0, mouth: np.ndarray | None = None, size=(256, 256)
) -> FaceTrack:
    """A synthetic face: 468 points around an eye line 60 px wide, inner lips opening by ``mouth`` (px)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(80, 180, size=(468, 2))
    base[RIGHT_EYE_OUTER], base[LEFT_EYE_OUTER] = (100, 110), (160, 110)
    base[UPPER_INNER_LIP], base[LOWER_INNER_LIP] = (130, 170), (130, 172)
    points = np.repeat(base[None], frames, axis=0)
    if mouth is not None:
        points[:, LOWER_INNER_LIP, 1] += mouth
    rotations = np.repeat(np.eye(3)[None], frames, axis=0)
    return FaceTrack(points=points, rotations=rotations, found=np.ones(frames, bool), size=size)


def rotation_z(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


# ------------------------------------------------------------------------------------------- landmarks


def test_identical_landmarks_score_zero_distance_and_perfect_correlation() -> None:
    mouth = 8 * np.abs(np.sin(np.arange(40) / 3))
    real = face_track(mouth=mouth)
    scores = landmark_scores(face_track(mouth=mouth), real)
    v = scores.values
    assert v["lmd_face"] == 0 and v["lmd_mouth"] == 0 and v["lmd_face_px512"] == 0
    assert v["mouth_corr"] == pytest.approx(1.0) and v["pose_error_deg"] == pytest.approx(0, abs=1e-6)
    assert v["detection_rate"] == 1.0 and not scores.not_computed


def test_landmark_distance_is_normalised_by_the_eyes_and_sizes_may_differ() -> None:
    mouth = 8 * np.abs(np.sin(np.arange(40) / 3))
    real = face_track(mouth=mouth)
    moved = face_track(mouth=mouth)
    moved.points = moved.points + np.array([6.0, 0.0])  # 6 px right: a tenth of the 60 px eye distance
    assert landmark_scores(moved, real).values["lmd_face"] == pytest.approx(0.1)
    assert landmark_scores(moved, real).values["lmd_face_px512"] == pytest.approx(
        12.0
    )  # 6 px at 256 -> 12 at 512
    double = face_track(mouth=mouth, size=(512, 512))
    double.points = double.points * 2  # the same face in a video twice as large
    assert landmark_scores(double, real).values["lmd_face"] == pytest.approx(0, abs=1e-12)


def test_head_pose_error_is_the_rotation_angle() -> None:
    real, turned = face_track(), face_track()
    turned.rotations = np.repeat(rotation_z(10)[None], 40, axis=0)
    assert landmark_scores(turned, real).values["pose_error_deg"] == pytest.approx(10.0)


def test_a_frozen_video_has_no_jitter_and_an_undefined_mouth_correlation() -> None:
    real = face_track(mouth=8 * np.abs(np.sin(np.arange(40) / 3)))
    frozen = face_track()
    scores = landmark_scores(frozen, real)
    assert scores.values["jitter"] == 0
    assert scores.values["mouth_corr"] is None and "does not move" in scores.not_computed["mouth_corr"]
    noisy = face_track()  # a held face in a re-encoded video: the detector's noise only
    noisy.points = noisy.points + np.random.default_rng(2).normal(0, 1e-3, noisy.points.shape)
    assert landmark_scores(noisy, real).values["mouth_corr"] is None
    shaky = face_track()
    shaky.points = shaky.points + np.random.default_rng(1).normal(0, 1, shaky.points.shape)
    assert landmark_scores(shaky, real).values["jitter"] > 0.01


def test_frames_without_a_face_lower_the_detection_rate_and_are_left_out() -> None:
    real, generated = face_track(), face_track()
    generated.points[:10] = np.nan
    generated.found[:10] = False
    scores = landmark_scores(generated, real)
    assert scores.values["detection_rate"] == 0.75 and scores.values["lmd_face"] == 0
    nothing = face_track()
    nothing.points[:] = np.nan
    nothing.found[:] = False
    empty = landmark_scores(nothing, real)
    assert empty.values["detection_rate"] == 0 and "lmd_face" not in empty.values
    assert "no frame shows a face" in empty.not_computed["lmd_face"]


# ------------------------------------------------------------------------------------------- sync


def speech_like(frames: int, seed: int = 0) -> np.ndarray:
    """16 kHz noise whose loudness changes every few frames (syllables), at 25 fps."""
    rng = np.random.default_rng(seed)
    per_frame = 16000 // int(FPS)
    loud = np.repeat(rng.uniform(0.01, 0.5, frames // 3 + 1), 3)[:frames]
    return (rng.normal(size=frames * per_frame) * np.repeat(loud, per_frame)).astype(np.float32)


@pytest.mark.parametrize("shift", [0, 3, -2])
def test_mouth_that_follows_the_audio_k_frames_late_gives_offset_k(shift: int) -> None:
    audio = speech_like(200)
    envelope = audio_envelope(audio, FPS, 200)
    mouth = np.roll(envelope, shift)  # mouth[t] = envelope[t - shift]: the video lags by `shift`
    scores = sync_scores(mouth, audio, FPS)
    assert scores.values["av_offset_frames"] == shift
    assert scores.values["av_confidence"] > 0.3
    if shift == 0:
        assert scores.values["sync_corr"] == pytest.approx(1.0)


def test_sync_of_a_frozen_mouth_is_undefined_and_without_audio_not_computed() -> None:
    audio = speech_like(60)
    frozen = sync_scores(np.full(60, 0.1), audio, FPS)
    assert frozen.values["sync_corr"] is None and "av_offset_frames" not in frozen.values
    silent = sync_scores(np.random.default_rng(0).uniform(size=60), None, FPS)
    assert set(silent.not_computed) == {"av_offset_frames", "av_confidence", "sync_corr"}


# ------------------------------------------------------------------------------------------- pixels, stats


def test_identical_frames_have_the_capped_psnr_and_ssim_one() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    boxes = np.tile([8.0, 8.0, 56.0, 56.0], (3, 1))
    same = pixel_scores(frames, frames, boxes, "same.mp4").values
    assert same["psnr"] == PSNR_CAP and same["psnr_face"] == PSNR_CAP
    assert same["ssim"] == pytest.approx(1.0) and same["ssim_face"] == pytest.approx(1.0)
    noisy = np.clip(frames.astype(int) + 10, 0, 255).astype(np.uint8)
    assert pixel_scores(noisy, frames, boxes, "noisy.mp4").values["psnr"] < 30
    bigger = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # the same aspect, twice the size: compared
    assert pixel_scores(bigger, frames, boxes, "big.mp4").values["psnr"] > 20
    with pytest.raises(UserError, match=r"wide.mp4 is 128x64 .* same aspect ratio"):
        pixel_scores(np.zeros((3, 64, 128, 3), np.uint8), frames, boxes, "wide.mp4")


def test_bootstrap_interval_contains_the_mean_and_is_reproducible() -> None:
    values = [0.1, 0.5, 0.3, 0.9, 0.4]
    first, again = summarize(values, seed=3), summarize(values, seed=3)
    assert first == again and first["n"] == 5
    assert first["mean"] == pytest.approx(0.44)
    assert first["ci95"][0] < first["mean"] < first["ci95"][1]
    assert summarize([0.7])["ci95"] == [0.7, 0.7]
    assert summarize([None, None])["n"] == 0
    assert pearson([1, 2, 3], [1, 1, 1]) == (None, pearson([1, 2, 3], [2, 2, 2])[1])
    assert "constant" in pearson([1, 2, 3], [1, 1, 1])[1]


# ------------------------------------------------------------------------------------------- identity


def test_identity_the_same_face_is_closer_than_a_different_face(face_model) -> None:
    from common.detect import FaceDetector
    from common.evaluation.faces import track_faces
    from common.evaluation.identity import FaceDescriptor, identity_scores
    from common.video import read_frames

    kristi = read_frames(shared_file("talking", "KristiNoem.mp4"), [0, 300])
    obama = read_frames(shared_file("talking", "Obama_clip1.mp4"), [0])
    describe = FaceDescriptor()
    with FaceDetector(face_model, mode="image") as detector:
        boxes = {name: track_faces(f, detector).boxes() for name, f in (("kristi", kristi), ("obama", obama))}
    reference = describe(kristi[0], boxes["kristi"][0])
    same = identity_scores(describe, kristi[1:], boxes["kristi"][1:], reference).values
    other = identity_scores(describe, obama, boxes["obama"], reference).values
    assert same["identity_cosine"] > other["identity_cosine"]
    assert same["identity_distance"] < 0.6 < other["identity_distance"]  # dlib's same-person threshold


# ------------------------------------------------------------------------------------------- SyncNet


def seeded_syncnet_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The weights the parity fixture was made with: one seeded stream over the sorted key names."""
    rng = np.random.default_rng(1234)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(0)
            continue
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            value = rng.normal(0, 0.1, shape)
        elif name.endswith("weight") and len(shape) > 1:
            value = rng.normal(0, 1 / math.sqrt(np.prod(shape[1:])), shape)
        elif name.endswith("weight"):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            value = rng.normal(0, 0.05, shape)
        out[name] = torch.from_numpy(value.astype(np.float32))
    return out


def test_syncnet_matches_syncnet_python_on_a_numeric_fixture(tmp_path) -> None:
    """``tests/data/syncnet_parity.npz`` was made by running syncnet_python's own ``SyncNetModel.S`` and
    ``SyncNetInstance.calc_pdist`` (outside this project) with :func:`seeded_syncnet_state` weights on the
    seeded inputs below; only the numbers were kept. Ours loads the same weights through its strict loader."""
    from common.evaluation.syncnet import SyncNet, offset_scores

    fixture = np.load(PROJECT_ROOT / "tests" / "data" / "syncnet_parity.npz")
    ours = SyncNet().state_dict()
    theirs = {
        str(n): tuple(int(v) for v in s.split(",")) if s else ()
        for n, s in zip(fixture["names"], fixture["shapes"])
    }
    assert {k: tuple(v.shape) for k, v in ours.items()} == theirs  # same keys, same shapes
    torch.save(seeded_syncnet_state(theirs), tmp_path / "syncnet_v2.model")
    model = SyncNet.from_file(tmp_path / "syncnet_v2.model")
    rng = np.random.default_rng(7)
    lip_in = torch.from_numpy(rng.uniform(0, 255, (2, 3, 5, 224, 224)).astype(np.float32))
    aud_in = torch.from_numpy(rng.normal(0, 10, (2, 1, 13, 20)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(
            model.forward_lip(lip_in).numpy(), fixture["lip_out"], rtol=1e-4, atol=1e-3
        )
        np.testing.assert_allclose(
            model.forward_aud(aud_in).numpy(), fixture["aud_out"], rtol=1e-4, atol=1e-4
        )
    features = np.random.default_rng(11)
    aud = features.normal(size=(40, 16)).astype(np.float32)
    lip = np.roll(aud, 3, axis=0) + 0.3 * features.normal(size=(40, 16)).astype(np.float32)
    offset, confidence, distance = offset_scores(torch.from_numpy(lip), torch.from_numpy(aud))
    assert offset == int(fixture["offset"]) == 3
    assert confidence == pytest.approx(float(fixture["conf"]), rel=1e-5)
    assert distance == pytest.approx(float(fixture["minval"]), rel=1e-5)


def test_lse_scores_run_on_a_real_clip_with_its_speech(tmp_path, face_model) -> None:
    """The LSE path end to end (crops, MFCCs, windows, offsets) with the seeded weights: finite scores, and a
    clip too short for one window is reported as not computed."""
    from common.detect import FaceDetector
    from common.evaluation.faces import track_faces
    from common.evaluation.media import read_clip
    from common.evaluation.syncnet import SyncNet, face_crops, lse_scores

    torch.save(
        seeded_syncnet_state({k: tuple(v.shape) for k, v in SyncNet().state_dict().items()}),
        tmp_path / "s.model",
    )
    model = SyncNet.from_file(tmp_path / "s.model")
    clip = read_clip(
        shared_file("talking", "KristiNoem.mp4"), audio_path=shared_file("talking", "KristiNoem.wav")
    )
    clip = clip.resampled(FPS).truncated(16)
    with FaceDetector(face_model, mode="image") as detector:
        boxes = track_faces(clip.frames, detector).boxes()
    crops = face_crops(clip.frames, boxes)
    assert crops.shape == (16, 224, 224, 3)
    scores = lse_scores(model, clip.frames, boxes, clip.audio)
    assert np.isfinite(scores.values["lse_c"]) and scores.values["lse_d"] > 0
    short = lse_scores(model, clip.frames[:5], boxes[:5], clip.audio)
    assert "shorter than SyncNet's 5-frame window" in short.not_computed["lse_c"]


def test_syncnet_loading_is_strict_and_says_what_is_wrong(tmp_path) -> None:
    from common.evaluation.syncnet import SyncNet

    with pytest.raises(UserError, match=r"syncnet_weights=.*none.model: no such file.*syncnet_v2.model"):
        SyncNet.from_file(tmp_path / "none.model")
    state = SyncNet().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["netfclip.3.bias"]
    torch.save(state, tmp_path / "bad.model")
    with pytest.raises(UserError, match=r"missing .*netfclip.3.bias.*unexpected .*extra.weight"):
        SyncNet.from_file(tmp_path / "bad.model")
    (tmp_path / "junk.model").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable SyncNet weight file"):
        SyncNet.from_file(tmp_path / "junk.model")


# ------------------------------------------------------------------------------------------- FID / FVD


class TinyInception(torch.nn.Module):
    """Stands in for the Inception TorchScript (same call): mean colour and its spread as features."""

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


class TinyI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's I3D TorchScript (same call)."""

    def forward(
        self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
    ):
        return torch.cat([videos.mean(dim=(2, 3, 4)), videos.std(dim=(2, 3, 4))], dim=1)


def test_frechet_distance_and_the_networks_code_path(tmp_path) -> None:
    from common.evaluation.distributions import frechet_distance, image_features, load_network, video_features

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a + 2, a) == pytest.approx(12, rel=1e-6)  # |mean difference|^2 = 3 * 4
    torch.jit.script(TinyInception()).save(str(tmp_path / "inception.pt"))
    torch.jit.script(TinyI3D()).save(str(tmp_path / "i3d.pt"))
    frames = rng.integers(0, 256, (40, 64, 48, 3), dtype=np.uint8)
    assert image_features(load_network(tmp_path / "inception.pt", "fid_weights"), frames).shape == (40, 6)
    assert video_features(load_network(tmp_path / "i3d.pt", "fvd_weights"), frames).shape == (
        2,
        6,
    )  # 2 x 16 frames
    with pytest.raises(UserError, match=r"fvd_weights=.*i3d_torchscript: no such file. Download StyleGAN-V"):
        load_network(tmp_path / "i3d_torchscript", "fvd_weights")


# ------------------------------------------------------------------------------------------- the CLI


def write_clip(path, frames: np.ndarray, audio=None) -> None:
    from common.video import VideoWriter

    with VideoWriter(path, FPS, audio=audio) as writer:
        writer.write(frames)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """real/ (two 1.2 s clips at 25 fps with STEM.wav beside them), a system that is a copy of them with
    the audio muxed in, one that is a different person, and refusal cases."""
    import scipy.io.wavfile

    from common.audio import load_audio
    from common.evaluation.media import read_clip

    root = tmp_path_factory.mktemp("evaluate")
    for name in ("real", "copy", "other", "short", "silent"):
        (root / name).mkdir()
    frames = 30
    for stem, source, other in (
        ("kristi", "KristiNoem", "Obama_clip1"),
        ("andrew", "andrew_clip_1", "Obama_clip2"),
    ):
        clip = read_clip(shared_file("talking", f"{source}.mp4"), audio=False).resampled(FPS)
        speech = load_audio(shared_file("talking", f"{source}.wav"))[: int(16000 * frames / FPS)]
        scipy.io.wavfile.write(root / "real" / f"{stem}.wav", 16000, speech)
        write_clip(root / "real" / f"{stem}.mp4", clip.frames[:frames])
        write_clip(root / "copy" / f"{stem}.mp4", clip.frames[:frames], audio=root / "real" / f"{stem}.wav")
        different = read_clip(shared_file("talking", f"{other}.mp4"), audio=False).resampled(FPS)
        write_clip(
            root / "other" / f"{stem}.mp4", different.frames[:frames], audio=root / "real" / f"{stem}.wav"
        )
    write_clip(root / "short" / "kristi.mp4", clip.frames[:20], audio=root / "real" / "andrew.wav")
    write_clip(root / "silent" / "kristi.mp4", clip.frames[:frames])
    (root / "broken").mkdir()
    (root / "broken" / "kristi.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but cut here")
    (root / "blank").mkdir()
    write_clip(root / "blank" / "kristi.mp4", np.full((frames, 64, 64, 3), 90, np.uint8))
    shutil.copy(root / "real" / "kristi.wav", root / "blank" / "kristi.wav")
    return root


def evaluate(root, *args: str, face_model) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "TALKING_PORTRAIT_FACE_MODEL": str(face_model), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "common.evaluate", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_scores_systems_side_by_side(folders, face_model) -> None:
    torch.jit.script(TinyInception()).save(str(folders / "inception.pt"))
    torch.jit.script(TinyI3D()).save(str(folders / "i3d.pt"))
    result = evaluate(
        folders, "real=real", "systems.copy=copy", "systems.other=other", "out=report", "fid_weights=inception.pt",
        "fvd_weights=i3d.pt", face_model=face_model,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((folders / "report" / "report.json").read_text())
    assert list(report["systems"]) == ["real", "copy", "other"]
    real, copy, other = (report["systems"][n] for n in ("real", "copy", "other"))
    for entry in (real, copy, other):
        assert set(entry["clips"]) == {"kristi", "andrew"}
        for name in ("detection_rate", "lmd_face", "jitter", "identity_cosine", "av_offset_frames", "psnr"):
            assert set(entry["summary"][name]) == {"mean", "ci95", "n"} and entry["summary"][name]["n"] == 2
    assert real["summary"]["lmd_face"]["mean"] == 0 and real["summary"]["psnr"]["mean"] == PSNR_CAP
    # a re-encoded copy is close to the real clip; another person is far from it and from its reference
    assert copy["summary"]["lmd_face"]["mean"] < 0.02 < other["summary"]["lmd_face"]["mean"]
    assert copy["summary"]["psnr"]["mean"] > 35 > other["summary"]["psnr"]["mean"]
    assert copy["summary"]["identity_distance"]["mean"] < 0.6 < other["summary"]["identity_distance"]["mean"]
    assert {"lse_c", "lse_d"}.isdisjoint(copy["summary"])  # no SyncNet weights given: not computed
    assert real["summary"]["fid"]["mean"] == pytest.approx(0, abs=1e-6) and real["summary"]["fvd"]["n"] == 2
    assert copy["summary"]["fid"]["mean"] < other["summary"]["fid"]["mean"]
    table = (folders / "report" / "report.md").read_text()
    assert "| metric | better | real | copy | other |" in table and "LMD face" in table
    plots = {p.name for p in (folders / "report" / "plots").iterdir()}
    assert {"lmd_face.png", "psnr.png", "mouth_kristi.png", "mouth_andrew.png"} <= plots
    assert "LMD face" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["real=real", "systems.short=short"],
            r"short/kristi.mp4 has 20 frames but .*real/kristi.mp4 has 30",
        ),
        (
            ["real=real", "systems.silent=silent"],
            r"silent/kristi.mp4 has no audio track and no kristi.wav beside it",
        ),
        (["real=real", "systems.broken=broken"], r"broken/kristi.mp4: not a readable video"),
        (["real=blank", "systems.b=blank"], r"blank/kristi.mp4: no face in any frame of the real clip"),
        (["real=real", "systems.none=missing"], r"systems.none=.*missing: no such folder"),
        (["real=real", "systems.real=copy"], r"systems.real is the name of the real videos' column"),
    ],
)
def test_cli_refuses_bad_input_with_one_error_and_no_report(
    folders, face_model, args, message, monkeypatch, capsys
) -> None:
    import re

    from common import evaluate as cli

    monkeypatch.chdir(folders)
    monkeypatch.setenv("TALKING_PORTRAIT_FACE_MODEL", str(face_model))
    code, err = run_main(cli.main, [*args, "out=refused", "progress=false"], capsys)
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), err[-2000:]
    assert "Traceback" not in err and not (folders / "refused").exists()
