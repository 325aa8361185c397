"""Data-set preparation behind ``python -m common.preprocess``: talking-head videos -> a training corpus.

For every video under ``input_dir`` (recursively) it writes, under ``output_dir/clips/``, a
landmark file (``<id>.npz``), the speech as 16 kHz mono wav (``<id>.wav``, from the video's own
audio track or a same-named audio file beside it) and a small record (``<id>.json``). Then it
writes ``output_dir/index.json`` (see ``common.index``) and ``output_dir/report.json`` listing
rejected clips with their reason (no face, several faces, too short, no audio, unreadable, truncated,
audio and video of different lengths).

The two streams of every accepted clip agree within one frame: a video that decodes fewer frames than
its container announces is rejected (truncated or damaged); a clip whose audio and decoded video differ
by more than ``max_stream_mismatch`` seconds (0.25) is rejected; within that, both are cut to the
shorter one.

Clips come from ``input_dir`` or from a list (``inputs=FILE``, one path per line) and are processed in
parallel: worker processes of this machine (``engine=local``) or tasks on a Ray cluster (``engine=ray``,
:mod:`common.engines`). Each clip's record is written last, by the worker; finished clips (accepted or
rejected) are skipped when the command runs again, whichever engine wrote them, so an interrupted run
resumes. Every file is written atomically; inputs and outputs may also be fsspec URLs (:mod:`common.storage`
says what is guaranteed where a store cannot rename). The speaker of a clip (used to split data by identity)
is its first sub-folder when videos are grouped in folders, else the first group of ``speaker_pattern``
matched on its name.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import storage
from common.atomic import atomic_output
from common.errors import UserError
from common.index import ClipRecord, write_index
from common.video import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".flac", ".aac", ".ogg", ".opus")
SAMPLE_RATE = 16000


@dataclass
class PreprocessSettings:
    """Options of one preprocessing run (the Hydra config's fields)."""

    input_dir: str | None
    output_dir: str
    inputs: str | None = None
    engine: str = "local"
    ray: dict[str, Any] = field(default_factory=dict)
    threads_per_worker: int | None = 1
    num_workers: int = 2
    face_model: str | None = None
    min_duration: float = 1.0
    max_gap: float = 0.5
    min_face_fraction: float = 0.9
    max_multi_face_fraction: float = 0.1
    speaker_pattern: str = r"^(.+?)(?:_clip.*)?$"
    retry_rejected: bool = False
    progress: bool = True
    max_stream_mismatch: float = 0.25

    def check(self) -> PreprocessSettings:
        """Every option in range, and the output folder writable, before any clip is read."""
        from common import limits
        from common.atomic import check_output_folder
        from common.engines import RaySettings, check_engine, check_threads

        check_engine(self.engine)
        RaySettings.from_values(self.ray)
        check_threads(self.threads_per_worker)
        limits.number(self.num_workers, "num_workers=", 1, 256, integer=True)
        limits.number(self.min_duration, "min_duration=", 0, 3600, hint="seconds")
        limits.number(self.max_gap, "max_gap=", 0, 3600, hint="seconds")
        limits.fraction(self.min_face_fraction, "min_face_fraction=")
        limits.fraction(self.max_multi_face_fraction, "max_multi_face_fraction=")
        limits.number(self.max_stream_mismatch, "max_stream_mismatch=", 0, 60, hint="seconds")
        try:
            if re.compile(self.speaker_pattern).groups < 1:
                raise re.error("no group")
        except (re.error, TypeError):
            raise UserError(
                f"speaker_pattern={self.speaker_pattern!r} must be a regular expression with a group, "
                r"e.g. ^(.+?)(?:_clip.*)?$"
            ) from None
        if storage.is_url(self.output_dir):
            fs, inner = storage.filesystem(self.output_dir)
            fs.makedirs(inner, exist_ok=True)
        else:
            check_output_folder(self.output_dir, overwrite=True)  # an existing folder resumes
        return self


def find_videos(input_dir: str | Path) -> list[str]:
    return storage.list_files(input_dir, VIDEO_SUFFIXES)


def clip_id(video: str | Path, input_dir: str | Path) -> str:
    """The clip's id: its path below ``input_dir`` without suffix, with '/' separators."""
    return str(Path(storage.relative(str(video), str(input_dir))).with_suffix("").as_posix())


def list_clips(settings: PreprocessSettings) -> list[tuple[str, str]]:
    """(video, clip id) of every clip: the videos under ``input_dir``, or the lines of ``inputs``.

    A list holds one path or URL per line (blank lines and lines starting with '#' are skipped); relative paths
    are taken from the list's folder. Ids are paths below ``input_dir`` when it is given and holds the video,
    else file names without suffix, which must then differ.
    """
    if settings.inputs is None:
        if settings.input_dir is None or not storage.is_dir(settings.input_dir):
            raise UserError(
                f"input_dir={settings.input_dir}: no such folder; give the folder holding the videos"
            )
        videos = find_videos(settings.input_dir)
        if not videos:
            raise UserError(f"input_dir={settings.input_dir}: no videos ({', '.join(VIDEO_SUFFIXES)}) found")
        return [(v, clip_id(v, settings.input_dir)) for v in videos]
    if not storage.is_file(settings.inputs):
        raise UserError(
            f"inputs={settings.inputs}: no such file; give a text file with one video path per line"
        )
    try:
        lines = storage.read_text(settings.inputs).splitlines()
    except UnicodeDecodeError:
        raise UserError(f"inputs={settings.inputs}: not a text file; write one video path per line") from None
    base = (
        settings.inputs.rsplit("/", 1)[0]
        if storage.is_url(settings.inputs)
        else storage.local(settings.inputs).parent
    )
    clips: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        video = line if storage.is_url(line) or Path(line).is_absolute() else storage.join(base, line)
        try:
            cid = clip_id(video, settings.input_dir) if settings.input_dir else Path(video).stem
        except ValueError:
            cid = Path(video).stem
        if cid in clips:
            raise UserError(
                f"inputs={settings.inputs}: {clips[cid]} and {video} would both be clip {cid!r}; give "
                "input_dir=FOLDER holding both so that their ids are their paths below it, or rename one"
            )
        clips[cid] = video
    if not clips:
        raise UserError(f"inputs={settings.inputs}: the list names no video")
    return [(video, cid) for cid, video in clips.items()]


def speaker_of(cid: str, pattern: str) -> str:
    if "/" in cid:
        return cid.split("/", 1)[0]
    match = re.match(pattern, cid)
    return match.group(1) if match and match.groups() else cid


def find_audio(video: str | Path) -> str | None:
    """A same-named audio file beside ``video`` (a path or a URL), if there is one."""
    stem = str(video)[: -len(Path(str(video)).suffix) or None]
    for suffix in AUDIO_SUFFIXES:
        if storage.is_file(stem + suffix):
            return stem + suffix
    return None


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float mono samples in [-1, 1] as 16-bit PCM wav, atomically."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_output(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return path


def _record_path(out_dir: str, cid: str) -> str:
    return storage.join(out_dir, "clips", f"{cid}.json")


def process_clip(video: str, cid: str, speaker: str, settings: PreprocessSettings) -> dict:
    """Process one clip (in a worker process); returns and stores its record (written last)."""
    result: dict = {"id": cid, "video": video}
    local_video = video  # the local copy of a URL, once there is one
    try:
        with storage.local_copy(video) as local_video:
            _process_local(local_video, video, cid, speaker, settings, result)
    except UserError as err:  # named by the clip's own path, not by a local copy's
        reason = str(err).removeprefix(f"{video}: ").removeprefix(f"{local_video}: ")
        result.update(status="rejected", reason=reason)
    except Exception as err:  # an unreadable clip must not stop the data set
        result.update(status="rejected", reason=f"unreadable: {type(err).__name__}: {err}")
    storage.write_text(_record_path(settings.output_dir, cid), json.dumps(result, indent=1))
    return result


def _process_local(
    video_path: Path, video: str, cid: str, speaker: str, settings: PreprocessSettings, result: dict
) -> None:
    from common.audio import load_audio
    from common.detect import ExtractionReport, extract_video
    from common.video import probe_video

    out_dir = settings.output_dir
    if not video_path.is_file():
        raise UserError(f"{video}: no such file")
    info = probe_video(video_path)
    if info.duration < settings.min_duration:
        raise UserError(f"too short: {info.duration:.2f} s < min_duration {settings.min_duration} s")
    audio_src = None if info.has_audio else find_audio(video)
    if not info.has_audio and audio_src is None:
        raise UserError("no audio: the video has no audio track and no same-named audio file lies beside it")
    with storage.local_copy(audio_src or video_path) as audio_file:
        samples = load_audio(audio_file, sample_rate=SAMPLE_RATE)
    audio_duration = len(samples) / SAMPLE_RATE
    if abs(audio_duration - info.duration) > settings.max_stream_mismatch:
        raise UserError(
            f"the audio ({audio_duration:.2f} s) and the video ({info.duration:.2f} s) differ by "
            f"{abs(audio_duration - info.duration):.2f} s, more than max_stream_mismatch="
            f"{settings.max_stream_mismatch:g} s; give the clip its own audio"
        )
    report = ExtractionReport()
    seq = extract_video(
        video_path,
        model_path=settings.face_model,
        max_gap=settings.max_gap,
        min_face_fraction=settings.min_face_fraction,
        num_faces=2,
        progress=False,
        report=report,
    )
    if report.num_multi_face > settings.max_multi_face_fraction * report.num_frames:
        raise UserError(f"several faces in {report.num_multi_face} of {report.num_frames} frames")
    seq, samples = _common_length(seq, samples, settings.max_stream_mismatch)
    seq.meta["source"] = video
    seq.meta["speaker"] = speaker
    lmk_path = storage.join(out_dir, "clips", f"{cid}.npz")
    wav_path = storage.join(out_dir, "clips", f"{cid}.wav")
    if storage.is_url(out_dir):
        with tempfile.TemporaryDirectory(prefix="talking-portrait-") as folder:
            storage.upload(seq.save(Path(folder) / "clip.npz"), lmk_path)
            storage.upload(write_wav(Path(folder) / "clip.wav", samples), wav_path)
    else:
        lmk_path = str(seq.save(lmk_path).resolve())
        wav_path = str(write_wav(Path(wav_path), samples).resolve())
    record = ClipRecord(
        id=cid,
        speaker=speaker,
        video=video if storage.is_url(video) else str(Path(video).resolve()),
        landmarks=lmk_path,
        audio=wav_path,
        frames=seq.num_frames,
        fps=seq.fps,
        duration=seq.duration,
        height=seq.image_size[0],
        width=seq.image_size[1],
    )
    result.update(status="accepted", record=asdict(record), interpolated=report.num_interpolated)


def _common_length(seq, samples: np.ndarray, max_mismatch: float):
    """Cut the landmarks and the audio to the shorter of the two, so that they agree within one frame.

    A clip whose decoded frames and audio differ by more than ``max_mismatch`` seconds is rejected instead
    (a truncated video is refused when it is decoded, see :func:`common.video.iter_frames`).
    """
    video_duration, audio_duration = seq.num_frames / seq.fps, len(samples) / SAMPLE_RATE
    if abs(video_duration - audio_duration) > max_mismatch:
        raise UserError(
            f"its {seq.num_frames} decoded frames last {video_duration:.2f} s but its audio {audio_duration:.2f} s "
            f"(more than max_stream_mismatch={max_mismatch:g} s apart); give the clip its own audio"
        )
    frames = min(seq.num_frames, int(np.floor(audio_duration * seq.fps + 1e-6)))
    if frames < seq.num_frames:
        seq = seq.select(slice(0, frames))
    samples = samples[: round(frames / seq.fps * SAMPLE_RATE)]
    return seq, samples


def _load_record(path: str) -> dict | None:
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError, KeyError):
        return None


def _is_done(record: dict | None, retry_rejected: bool) -> bool:
    """Whether a clip needs no work: accepted with its outputs present, or rejected (unless retrying)."""
    if record is None:
        return False
    if record["status"] == "rejected":
        return not retry_rejected
    return all(storage.is_file(record["record"][key]) for key in ("landmarks", "audio"))


def preprocess(settings: PreprocessSettings) -> dict:
    """Run preprocessing; returns the report (also written to ``output_dir/report.json``)."""
    from tqdm.auto import tqdm

    from common.engines import RaySettings, map_tasks

    settings.check()
    out_dir = (
        settings.output_dir
        if storage.is_url(settings.output_dir)
        else str(storage.local(settings.output_dir).resolve())
    )
    settings = PreprocessSettings(**{**asdict(settings), "output_dir": out_dir})
    clips = list_clips(settings)
    if not storage.is_url(out_dir):
        Path(out_dir, "clips").mkdir(parents=True, exist_ok=True)

    jobs = []
    for video, cid in clips:
        if _is_done(_load_record(_record_path(out_dir, cid)), settings.retry_rejected):
            continue
        jobs.append((video, cid, speaker_of(cid, settings.speaker_pattern), settings))
    log.info("%d videos, %d to process, %d already done", len(clips), len(jobs), len(clips) - len(jobs))

    with tqdm(
        total=len(jobs), desc=f"preprocess ({settings.engine})", unit="clip", disable=not settings.progress
    ) as bar:
        for _ in map_tasks(
            process_clip,
            jobs,
            engine=settings.engine,
            num_workers=settings.num_workers,
            ray_settings=RaySettings.from_values(settings.ray),
            threads=settings.threads_per_worker,
        ):
            bar.update(1)

    accepted, rejected = [], []
    for video, cid in clips:
        record = _load_record(_record_path(out_dir, cid))
        if record is None:
            rejected.append({"id": cid, "video": video, "reason": "no record written"})
        elif record["status"] == "accepted":
            accepted.append(ClipRecord(**record["record"]))
        else:
            rejected.append({k: record[k] for k in ("id", "video", "reason")})
    source = settings.input_dir if settings.inputs is None else settings.inputs
    report = {
        "input_dir" if settings.inputs is None else "inputs": source,
        "accepted": len(accepted),
        "rejected": rejected,
        "speakers": sorted({c.speaker for c in accepted}),
    }
    storage.write_text(storage.join(out_dir, "report.json"), json.dumps(report, indent=1))
    if accepted:
        write_index(out_dir, accepted, sample_rate=SAMPLE_RATE)
    return report


def ensure_preprocessed(input_dir: str, output_dir: str, **kwargs) -> Path:
    """Preprocess ``input_dir`` into ``output_dir`` unless its index is already there; returns the index path.

    Training experiments use this to prepare their data cache on first use.
    """
    index = Path(output_dir) / "index.json"
    if not index.is_file():
        report = preprocess(PreprocessSettings(input_dir=input_dir, output_dir=output_dir, **kwargs))
        if not report["accepted"]:
            raise UserError(f"no clip of {input_dir} was accepted; see {Path(output_dir) / 'report.json'}")
    return index
