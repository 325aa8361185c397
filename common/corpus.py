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

Clips are processed in parallel worker processes; finished clips (accepted or rejected) are
skipped when the command runs again, so an interrupted run resumes. Every file is written
atomically. The speaker of a clip (used to split data by identity) is its first sub-folder when
videos are grouped in folders, else the first group of ``speaker_pattern`` matched on its name.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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

    input_dir: str
    output_dir: str
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
        check_output_folder(self.output_dir, overwrite=True)  # an existing folder resumes
        return self


def find_videos(input_dir: Path) -> list[Path]:
    return sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def clip_id(video: Path, input_dir: Path) -> str:
    """The clip's id: its path below ``input_dir`` without suffix, with '/' separators."""
    return video.relative_to(input_dir).with_suffix("").as_posix()


def speaker_of(cid: str, pattern: str) -> str:
    if "/" in cid:
        return cid.split("/", 1)[0]
    match = re.match(pattern, cid)
    return match.group(1) if match and match.groups() else cid


def find_audio(video: Path) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        candidate = video.with_suffix(suffix)
        if candidate.is_file():
            return candidate
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


def _record_path(out_dir: Path, cid: str) -> Path:
    return out_dir / "clips" / f"{cid}.json"


def process_clip(video: str, cid: str, speaker: str, settings: PreprocessSettings) -> dict:
    """Process one clip (in a worker process); returns and stores its record."""
    from common.audio import load_audio
    from common.detect import ExtractionReport, extract_video
    from common.video import probe_video

    out_dir = Path(settings.output_dir)
    video_path = Path(video)
    result: dict = {"id": cid, "video": str(video_path)}
    try:
        info = probe_video(video_path)
        if info.duration < settings.min_duration:
            raise UserError(f"too short: {info.duration:.2f} s < min_duration {settings.min_duration} s")
        audio_src = video_path if info.has_audio else find_audio(video_path)
        if audio_src is None:
            raise UserError(
                "no audio: the video has no audio track and no same-named audio file lies beside it"
            )
        samples = load_audio(audio_src, sample_rate=SAMPLE_RATE)
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
        lmk_path = out_dir / "clips" / f"{cid}.npz"
        wav_path = out_dir / "clips" / f"{cid}.wav"
        seq.meta["speaker"] = speaker
        seq.save(lmk_path)
        write_wav(wav_path, samples)
        record = ClipRecord(
            id=cid,
            speaker=speaker,
            video=str(video_path.resolve()),
            landmarks=str(lmk_path.resolve()),
            audio=str(wav_path.resolve()),
            frames=seq.num_frames,
            fps=seq.fps,
            duration=seq.duration,
            height=seq.image_size[0],
            width=seq.image_size[1],
        )
        result.update(status="accepted", record=asdict(record), interpolated=report.num_interpolated)
    except UserError as err:
        result.update(status="rejected", reason=str(err).removeprefix(f"{video_path}: "))
    except Exception as err:  # an unreadable clip must not stop the data set
        result.update(status="rejected", reason=f"unreadable: {type(err).__name__}: {err}")
    with atomic_output(_record_path(out_dir, cid)) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


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


def _load_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_done(record: dict | None, retry_rejected: bool) -> bool:
    """Whether a clip needs no work: accepted with its outputs present, or rejected (unless retrying)."""
    if record is None:
        return False
    if record["status"] == "rejected":
        return not retry_rejected
    return all(Path(record["record"][key]).is_file() for key in ("landmarks", "audio"))


def preprocess(settings: PreprocessSettings) -> dict:
    """Run preprocessing; returns the report (also written to ``output_dir/report.json``)."""
    from tqdm.auto import tqdm

    in_dir = Path(settings.input_dir).expanduser()
    out_dir = Path(settings.output_dir).expanduser()
    settings.check()
    if not in_dir.is_dir():
        raise UserError(f"input_dir={in_dir}: no such folder; give the folder holding the videos")
    videos = find_videos(in_dir)
    if not videos:
        raise UserError(f"input_dir={in_dir}: no videos ({', '.join(VIDEO_SUFFIXES)}) found")
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    settings = PreprocessSettings(**{**asdict(settings), "output_dir": str(out_dir.resolve())})

    jobs = []
    for video in videos:
        cid = clip_id(video, in_dir)
        if _is_done(_load_record(_record_path(out_dir, cid)), settings.retry_rejected):
            continue
        jobs.append((str(video), cid, speaker_of(cid, settings.speaker_pattern)))
    log.info("%d videos, %d to process, %d already done", len(videos), len(jobs), len(videos) - len(jobs))

    bar = tqdm(total=len(jobs), desc="preprocess", unit="clip", disable=not settings.progress)
    with bar:
        if settings.num_workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("spawn")  # MediaPipe is not fork-safe
            with ProcessPoolExecutor(max_workers=settings.num_workers, mp_context=ctx) as pool:
                futures = [pool.submit(process_clip, *job, settings) for job in jobs]
                for future in futures:
                    future.result()
                    bar.update(1)
        else:
            for job in jobs:
                process_clip(*job, settings)
                bar.update(1)

    accepted, rejected = [], []
    for video in videos:
        record = _load_record(_record_path(out_dir, clip_id(video, in_dir)))
        if record is None:
            rejected.append(
                {"id": clip_id(video, in_dir), "video": str(video), "reason": "no record written"}
            )
        elif record["status"] == "accepted":
            accepted.append(ClipRecord(**record["record"]))
        else:
            rejected.append({k: record[k] for k in ("id", "video", "reason")})
    report = {
        "input_dir": str(in_dir.resolve()),
        "accepted": len(accepted),
        "rejected": rejected,
        "speakers": sorted({c.speaker for c in accepted}),
    }
    with atomic_output(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
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
