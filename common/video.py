"""Video input and output with PyAV: probing, frame iteration with timestamps, random access,
and H.264 writing with an optional muxed audio track (written atomically)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from common.atomic import atomic_output
from common.errors import UserError
from common.limits import MAX_IMAGE_SIDE

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: frame rate, frame count (estimated when the container has none), size."""

    path: Path
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float
    has_audio: bool


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; give a video file with frames")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise UserError(
            f"{path}: not a readable video ({err}); re-encode it, e.g. with ffmpeg -i IN -c:v libx264 OUT.mp4"
        ) from None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's stream information without decoding it."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise UserError(
                f"{path}: has no video stream; give a video file (or an image for a single frame)"
            )
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise UserError(f"{path}: the video stream has no frame rate; re-encode it with a fixed rate")
        fps = float(rate)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = stream.frames or round(duration * fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        if max(width, height) > MAX_IMAGE_SIDE:
            raise UserError(
                f"{path}: the video is {width}x{height} pixels, more than {MAX_IMAGE_SIDE} on a side; scale it "
                "down, e.g. ffmpeg -i IN -vf scale=-2:1080 OUT.mp4"
            )
        return VideoInfo(
            path=path,
            fps=fps,
            num_frames=int(frames),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            duration=duration if duration > 0 else frames / fps,
            has_audio=bool(container.streams.audio),
        )


def iter_frames(path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(time_seconds, rgb uint8 (H, W, 3))`` for every decoded frame of the first video stream."""
    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            raise UserError(f"{path}: has no video stream; give a video file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fallback_dt = 1.0 / float(stream.average_rate or stream.guessed_rate or 30)
        index, last = 0, 0.0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else index * fallback_dt
                last = float(t)
                yield last, frame.to_ndarray(format="rgb24")
                index += 1
        except av.error.FFmpegError as err:
            if index == 0:
                raise UserError(f"{path}: no frame could be decoded ({err}); the file is corrupt") from None
            raise UserError(
                f"{path}: decoding failed after frame {index} ({err}); the file is corrupt or truncated"
            ) from None
        if index == 0:
            raise UserError(f"{path}: the video has no frames; give a video with at least one frame")
        _check_complete(path, stream, index, last, fallback_dt)
    finally:
        container.close()


def _check_complete(
    path: Path, stream: av.video.stream.VideoStream, decoded: int, last: float, dt: float
) -> None:
    """Refuse a video that ends before its container says it does (a cut or damaged download).

    The decoded frame count is compared with the count the container announces; where it announces none,
    the last decoded frame's time with the stream's duration. More than one frame missing is an error: such
    a file would give landmarks shorter than its audio. Re-encoding keeps the part that decodes.
    """
    announced = int(stream.frames or 0)
    if announced:
        missing = announced - decoded
        detail = f"the container announces {announced} frames but only {decoded} decode"
    elif stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base) + float(stream.start_time or 0) * float(
            stream.time_base
        )
        missing = round((duration - (last + dt)) / dt)
        detail = f"the stream lasts {duration:.2f} s but its frames end at {last + dt:.2f} s"
    else:
        return
    if missing > 1:
        raise UserError(
            f"{path}: truncated or damaged: {detail}; re-download the file, or keep the part that decodes with "
            "ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4 (and its audio cut to match)"
        )


def read_frames(path: str | os.PathLike, indices: Iterable[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (sorted or not) as (N, H, W, 3) uint8, seeking near each run.

    Frame ``i`` is the frame whose presentation time is closest to ``i / fps``. Used by training
    data loaders: one container per call, so it is safe in worker processes.
    """
    wanted = [int(i) for i in indices]
    if not wanted:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        tb = stream.time_base
        start_pts = stream.start_time or 0
        out: dict[int, np.ndarray] = {}
        for target in sorted(set(wanted)):
            if target in out:
                continue
            target_pts = start_pts + round(target / fps / tb)
            container.seek(int(target_pts), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                idx = round((frame.pts - start_pts) * tb * fps)
                if idx < target:
                    continue
                out[target] = frame.to_ndarray(format="rgb24")
                break
            if target not in out:
                raise UserError(f"{path}: frame {target} is past the end of the video")
        return np.stack([out[i] for i in wanted])


class _AudioSource:
    """Decodes an audio file lazily, resampled to ``rate`` fltp with ``layout``; silence after its end."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        try:
            self._container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"{path}: not a readable audio file ({err}); convert it to wav") from None
        if not self._container.streams.audio:
            self._container.close()
            raise UserError(f"{path}: has no audio stream; give an audio file")
        channels = self._container.streams.audio[0].codec_context.channels or 1
        self.layout = "mono" if channels == 1 else "stereo"
        self.channels = 1 if self.layout == "mono" else 2
        self.rate = rate
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=rate)
        self._frames = self._container.decode(self._container.streams.audio[0])
        self._buffer = np.zeros((self.channels, 0), np.float32)
        self._done = False

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples (channels, n), padded with silence once the file ends."""
        while self._buffer.shape[1] < n and not self._done:
            try:
                frame = next(self._frames)
                chunks = self._resampler.resample(frame)
            except StopIteration:
                chunks = self._resampler.resample(None)
                self._done = True
            except av.error.FFmpegError as err:
                raise UserError(f"{self.path}: audio decoding failed ({err}); the file is corrupt") from None
            if chunks:
                self._buffer = np.concatenate([self._buffer, *[c.to_ndarray() for c in chunks]], axis=1)
        out, self._buffer = self._buffer[:, :n], self._buffer[:, n:]
        if out.shape[1] < n:
            out = np.pad(out, ((0, 0), (0, n - out.shape[1])))
        return np.ascontiguousarray(out, dtype=np.float32)

    def close(self) -> None:
        self._container.close()


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Write RGB frames to an H.264 mp4 atomically, optionally muxing an audio file cut/padded to the video.

    Use as a context manager; the file appears at ``path`` only when the block exits without error.
    Odd frame sizes are padded by one black pixel (H.264 with yuv420p needs even sizes).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        audio: str | os.PathLike | None = None,
        crf: int = 18,
        preset: str = "veryfast",
        audio_rate: int = 48000,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
            raise UserError(f"{self.path}: write videos as .mp4 (or .mov/.mkv); change the output name")
        if not (fps > 0 and math.isfinite(fps)):
            raise UserError(f"{self.path}: frame rate must be positive, got {fps}")
        self.fps = float(fps)
        self.audio = Path(audio) if audio is not None else None
        if self.audio is not None and not self.audio.is_file():
            raise UserError(f"{self.audio}: no such audio file; check the path")
        self.crf = crf
        self.audio_rate = audio_rate
        self.preset = preset
        self.num_frames = 0
        self._container = None
        self._stream = None

    def __enter__(self) -> VideoWriter:
        self._session_cm = self._session()
        return self._session_cm.__enter__()

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        return self._session_cm.__exit__(exc_type, exc, tb)

    @contextlib.contextmanager
    def _session(self) -> Iterator[VideoWriter]:
        with atomic_output(self.path) as tmp:
            self._audio_source = _AudioSource(self.audio, self.audio_rate) if self.audio is not None else None
            self._audio_written = 0
            self._container = av.open(
                str(tmp), mode="w", format="matroska" if self.path.suffix.lower() == ".mkv" else "mp4"
            )
            try:
                yield self
                if self.num_frames == 0:
                    raise UserError(f"{self.path}: no frames to write")
                self._container.mux(self._stream.encode(None))
                self._feed_audio(final=True)
            finally:
                self._container.close()
                if self._audio_source is not None:
                    self._audio_source.close()

    def _open_stream(self, height: int, width: int) -> None:
        rate = _fps_fraction(self.fps)
        self._time_base = 1 / rate
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width = width + width % 2
        self._stream.height = height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = 1 / rate
        self._stream.codec_context.time_base = 1 / rate
        self._stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._size = (height, width)
        if self._audio_source is not None:
            self._audio_stream = self._container.add_stream("aac", rate=self._audio_source.rate)
            self._audio_stream.layout = self._audio_source.layout

    def write(self, frames: np.ndarray) -> None:
        """Append one (H, W, 3) or several (N, H, W, 3) RGB uint8 frames."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (N, H, W, 3) RGB, got {frames.shape}")
        if self._stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        if frames.shape[1:3] != self._size:
            raise ValueError(f"frame size {frames.shape[1:3]} differs from the first frame's {self._size}")
        pad_h, pad_w = self._stream.height - frames.shape[1], self._stream.width - frames.shape[2]
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = self._time_base
            self._container.mux(self._stream.encode(frame))
            self.num_frames += 1
        self._feed_audio(final=False)

    def _feed_audio(self, final: bool) -> None:
        """Encode audio up to the video's current end (all of it, cut or padded, when ``final``)."""
        if self._audio_source is None:
            return
        rate = self._audio_source.rate
        target = round(self.num_frames / self.fps * rate)
        step = 1024
        while self._audio_written < target and (final or target - self._audio_written >= step):
            n = min(step, target - self._audio_written)
            frame = av.AudioFrame.from_ndarray(
                self._audio_source.take(n), format="fltp", layout=self._audio_source.layout
            )
            frame.sample_rate = rate
            frame.pts = self._audio_written
            frame.time_base = Fraction(1, rate)
            self._container.mux(self._audio_stream.encode(frame))
            self._audio_written += n
        if final:
            self._container.mux(self._audio_stream.encode(None))


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: str | os.PathLike | None = None,
    **kwargs,
) -> Path:
    """Write an iterable of RGB frames (each (H, W, 3) or a batch (N, H, W, 3)) to ``path`` atomically."""
    with VideoWriter(path, fps, audio=audio, **kwargs) as writer:
        for chunk in frames:
            writer.write(chunk)
    return Path(path)
