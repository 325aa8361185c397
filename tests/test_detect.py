"""Face detection, model lookup and landmark extraction."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import numpy as np
import pytest

from common import detect
from common.errors import UserError
from common.video import write_video
from tests.conftest import shared_file

# ---------------------------------------------------------------------------------------------
# model asset lookup
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(detect.MODEL_ENV, raising=False)
    monkeypatch.setenv(detect.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(detect, "BUNDLED_MODEL", tmp_path / "no_bundled_copy.task")
    return tmp_path


def test_the_bundled_model_is_mediapipes_and_comes_before_the_download(monkeypatch, tmp_path):
    # Shipped as package data (common/data), so extraction works offline in any clone or install.
    assert detect.BUNDLED_MODEL.is_file()
    assert detect.sha256_of(detect.BUNDLED_MODEL) == detect.MODEL_SHA256
    monkeypatch.delenv(detect.MODEL_ENV, raising=False)
    monkeypatch.setenv(detect.CACHE_ENV, str(tmp_path / "empty_cache"))
    monkeypatch.setattr(detect, "download_face_model", lambda *a, **k: pytest.fail("downloaded"))
    assert detect.resolve_face_model() == detect.BUNDLED_MODEL


def test_lookup_order(clean_env, monkeypatch, face_model):
    explicit = clean_env / "explicit.task"
    shutil.copy(face_model, explicit)
    assert detect.resolve_face_model(explicit) == explicit
    monkeypatch.setenv(detect.MODEL_ENV, str(face_model))
    assert detect.resolve_face_model() == face_model
    monkeypatch.delenv(detect.MODEL_ENV)
    cached = detect.cache_dir() / detect.MODEL_FILENAME
    cached.parent.mkdir(parents=True)
    shutil.copy(face_model, cached)
    assert detect.resolve_face_model(download=False) == cached


def test_missing_model_errors_say_where(clean_env, monkeypatch):
    with pytest.raises(UserError, match="face landmarker model not found"):
        detect.resolve_face_model(clean_env / "nope.task")
    monkeypatch.setenv(detect.MODEL_ENV, str(clean_env / "nope.task"))
    with pytest.raises(UserError, match=detect.MODEL_ENV):
        detect.resolve_face_model()
    monkeypatch.delenv(detect.MODEL_ENV)
    with pytest.raises(UserError, match=str(detect.cache_dir())):
        detect.resolve_face_model(download=False)


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_sha256(clean_env, http_dir, face_model, monkeypatch):
    root, url = http_dir
    shutil.copy(face_model, root / "face_landmarker.task")
    (root / "bad.task").write_bytes(b"not the model")
    monkeypatch.setattr(detect, "MODEL_URL", f"{url}/face_landmarker.task")
    got = detect.resolve_face_model()
    assert got == detect.cache_dir() / detect.MODEL_FILENAME
    assert detect.sha256_of(got) == detect.MODEL_SHA256
    dest = clean_env / "other" / "m.task"
    with pytest.raises(UserError, match="SHA-256"):
        detect.download_face_model(dest, url=f"{url}/bad.task")
    assert not dest.exists() and not any(dest.parent.iterdir())
    with pytest.raises(UserError, match="could not download"):
        detect.download_face_model(dest, url=f"{url}/missing.task")


# ---------------------------------------------------------------------------------------------
# gap policy
# ---------------------------------------------------------------------------------------------


def _lm(t: int) -> np.ndarray:
    return np.arange(t, dtype=np.float32)[:, None, None] * np.ones((t, 478, 3), np.float32)


def test_short_gaps_are_interpolated():
    found = np.array([1, 1, 0, 0, 1, 1, 0], bool)
    lm = _lm(7)
    lm[~found] = np.nan
    out = detect.fill_gaps(lm, found, fps=10, max_gap=0.2, min_face_fraction=0.5, source="clip")
    np.testing.assert_allclose(out[:, 0, 0], [0, 1, 2, 3, 4, 5, 5])  # linear inside, held at the end


def test_gap_policy_failures():
    lm = _lm(10)
    with pytest.raises(UserError, match="no face found"):
        detect.fill_gaps(lm, np.zeros(10, bool), 10, 0.5, 0.5, "clip.mp4")
    with pytest.raises(UserError, match="first 2 frame"):
        detect.fill_gaps(lm, np.array([0, 0] + [1] * 8, bool), 10, 0.5, 0.5, "clip.mp4")
    with pytest.raises(UserError, match="only 3 of 10"):
        detect.fill_gaps(lm, np.array([1, 1, 1] + [0] * 7, bool), 10, 0.5, 0.5, "clip.mp4")
    with pytest.raises(UserError, match="no face for 4 frames"):
        detect.fill_gaps(lm, np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 1], bool), 10, 0.3, 0.5, "clip.mp4")
    with pytest.raises(UserError, match="last 3 frames"):
        detect.fill_gaps(lm, np.array([1] * 7 + [0] * 3, bool), 10, 0.2, 0.5, "clip.mp4")


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------


def test_extract_video(face_model):
    clip = shared_file("talking", "feifeili_clip3.mp4")
    report = detect.ExtractionReport()
    seq = detect.extract(clip, model_path=face_model, progress=False, report=report)
    assert seq.num_frames == 212 == report.num_frames
    assert seq.fps == 30.0 and seq.image_size == (256, 256)
    assert seq.face_found.all() and report.num_interpolated == 0
    assert seq.blendshapes.shape == (212, 52) and seq.landmarks2d.shape == (212, 478, 2)
    err = np.linalg.norm(seq.project() - seq.landmarks2d[:, :468], axis=-1).mean()
    assert err < 0.5
    assert seq.meta["source_type"] == "video"


def test_extract_video_with_blank_frames_interpolates(face_model, tmp_path):
    from common.video import iter_frames

    frames = [rgb for _, rgb in iter_frames(shared_file("talking", "feifeili_clip3.mp4"))][:30]
    frames[10] = np.zeros_like(frames[10])
    frames[11] = np.zeros_like(frames[11])
    clip = write_video(tmp_path / "gappy.mp4", [np.stack(frames)], fps=30)
    seq = detect.extract_video(clip, model_path=face_model, progress=False)
    assert seq.num_frames == 30
    assert list(np.flatnonzero(~seq.face_found)) == [10, 11]
    # interpolated frames lie between their neighbours
    mid = seq.landmarks2d[10:12, :, 0]
    lo = np.minimum(seq.landmarks2d[9, :, 0], seq.landmarks2d[12, :, 0])
    hi = np.maximum(seq.landmarks2d[9, :, 0], seq.landmarks2d[12, :, 0])
    assert ((mid >= lo - 1e-3) & (mid <= hi + 1e-3)).all()


def test_extract_image_and_no_face(face_model, tmp_path):
    seq = detect.extract(shared_file("portraits", "photo_woman.jpg"), model_path=face_model)
    assert seq.num_frames == 1 and seq.meta["source_type"] == "image"
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, np.uint8))
    with pytest.raises(UserError, match="no face found"):
        detect.extract(blank, model_path=face_model)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(UserError, match="not a readable image"):
        detect.extract(bad, model_path=face_model)


def test_several_faces_pick_largest(face_model, caplog):
    import cv2

    big = detect.read_image(shared_file("portraits", "photo_woman.jpg"))
    small = cv2.resize(big, (big.shape[1] // 2, big.shape[0] // 2))
    canvas = np.zeros((big.shape[0], big.shape[1] + small.shape[1], 3), np.uint8)
    canvas[:, : big.shape[1]] = big
    canvas[: small.shape[0], big.shape[1] :] = small
    with caplog.at_level("WARNING"):
        face = detect.detect_image(canvas, face_model, source="two.png")
    assert "2 faces found" in caplog.text
    assert face.center[0] * canvas.shape[1] < big.shape[1]  # the large face, on the left


def test_empty_and_corrupt_video(face_model, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        detect.extract(empty, model_path=face_model)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00 ftypisom" + b"\x13" * 4000)
    with pytest.raises(UserError, match=r"corrupt\.mp4"):
        detect.extract(corrupt, model_path=face_model)
