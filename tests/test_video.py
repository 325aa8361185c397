"""Video reading and writing with PyAV."""

from __future__ import annotations

import av
import numpy as np
import pytest

from common.errors import UserError
from common.video import VideoWriter, iter_frames, probe_video, read_frames, write_video
from tests.conftest import shared_file


def gradient_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (i * 255) // max(n - 1, 1)
        frames[i, ..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    return frames


def test_write_read_round_trip(tmp_path):
    frames = gradient_frames(12)
    path = write_video(tmp_path / "a.mp4", [frames[:5], frames[5:]], fps=25)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height, info.fps) == (12, 64, 48, 25.0)
    assert not info.has_audio
    decoded = [rgb for _, rgb in iter_frames(path)]
    assert len(decoded) == 12
    assert np.abs(np.stack(decoded).astype(int) - frames).mean() < 3
    times = [t for t, _ in iter_frames(path)]
    np.testing.assert_allclose(times, np.arange(12) / 25, atol=1e-3)
    picked = read_frames(path, [9, 2, 9])
    assert np.abs(picked.astype(int) - frames[[9, 2, 9]]).mean() < 3


def test_audio_is_muxed_with_video_duration(tmp_path):
    speech = shared_file("speech", "en_44k_stereo.wav")
    out = write_video(tmp_path / "b.mp4", [gradient_frames(45)], fps=30, audio=speech)
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.frames == 45
        samples = sum(f.samples for f in c.decode(a))
        assert abs(samples / a.rate - 1.5) < 0.05  # cut to the video's 1.5 s


def test_short_audio_is_padded(tmp_path):
    speech = shared_file("speech", "en_24k_mono.wav")
    with av.open(str(speech)) as c:
        audio_seconds = float(c.duration / av.time_base)
    n = int((audio_seconds + 1.0) * 10)
    out = write_video(tmp_path / "c.mp4", [gradient_frames(n, 16, 16)], fps=10, audio=speech)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(a))
    assert abs(samples / a.rate - n / 10) < 0.05


def test_odd_size_is_padded(tmp_path):
    out = write_video(tmp_path / "d.mp4", [gradient_frames(3, 15, 17)], fps=10)
    info = probe_video(out)
    assert (info.height, info.width) == (16, 18)


def test_failure_leaves_no_file(tmp_path):
    target = tmp_path / "e.mp4"
    with pytest.raises(RuntimeError), VideoWriter(target, fps=10) as w:
        w.write(gradient_frames(2))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no frames"), VideoWriter(target, fps=10):
        pass
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        probe_video(empty)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UserError, match="not a readable video"):
        probe_video(garbage)
    with pytest.raises(UserError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    with pytest.raises(UserError, match=r"\.mp4"):
        VideoWriter(tmp_path / "x.gif", fps=10)
    with pytest.raises(UserError, match="no such audio"):
        VideoWriter(tmp_path / "x.mp4", fps=10, audio=tmp_path / "none.wav")


def test_truncated_video_is_reported(tmp_path):
    good = write_video(tmp_path / "good.mp4", [gradient_frames(30, 64, 64)], fps=10)
    data = good.read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match=str(bad.name)):
        list(iter_frames(bad))
