"""Score folders of talking videos: every clip of every system, then the summary (:func:`evaluate_folders`).

Clips are matched by file stem: ``real/STEM.mp4`` (with its audio track, or ``STEM.wav`` beside it), each
system's ``STEM.mp4`` (its own audio), and the reference ``references/STEM.png|jpg`` (else frame 0 of the
real clip). The real videos are scored as a system of their own, ``real`` (the metric floor of the
comparisons, and the value to aim for in the others). Inputs are all checked before any scoring; a clip a
system lacks is listed under ``missing``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.corpus import find_audio
from common.errors import UserError
from common.evaluation.faces import FaceTrack, track_faces
from common.evaluation.media import Clip, read_clip
from common.evaluation.scores import NO_REAL_VIDEO, Scores

log = logging.getLogger("common.evaluate")

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REAL = "real"


@dataclasses.dataclass
class EvalOptions:
    """Options of the evaluation (``conf/common/evaluate.yaml``)."""

    resample: bool = False
    face_model: str | None = None
    identity: bool = True
    syncnet_weights: str | None = None
    fid_weights: str | None = None
    fvd_weights: str | None = None
    min_size: int = 256
    seed: int = 0
    progress: bool = True

    FILES = ("face_model", "syncnet_weights", "fid_weights", "fvd_weights")

    @classmethod
    def from_config(cls, cfg: Any, path: Any) -> EvalOptions:
        """The options among a config's keys (others keep their defaults); ``path`` resolves the files."""
        values = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg}
        for key in cls.FILES:
            if values.get(key) is not None:
                values[key] = str(path(values[key]))
        return cls(**values)


@dataclasses.dataclass
class Case:
    """One clip to score: the real video (or None), the system's video, the reference image (or None)."""

    stem: str
    real: Path | None
    video: Path
    reference: Path | None


def videos_in(folder: Path, option: str) -> dict[str, Path]:
    """``{stem: path}`` of the videos directly in ``folder``."""
    if not folder.is_dir():
        raise UserError(f"{option}={folder}: no such folder; give a folder of videos (STEM.mp4)")
    found = {
        p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
    }
    if not found:
        raise UserError(
            f"{option}={folder} holds no video (.mp4, .mov, .mkv, ...); give the folder of {option}'s videos"
        )
    return found


def reference_for(stem: str, references: Path | None) -> Path | None:
    if references is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        if (references / f"{stem}{suffix}").is_file():
            return references / f"{stem}{suffix}"
    return None


def plan(
    real: Path | None, systems: dict[str, Path], references: Path | None
) -> tuple[dict[str, list[Case]], dict[str, list[str]]]:
    """The cases of every system (the real clips as system ``real`` first) and the clips each one lacks."""
    if not systems and real is None:
        raise UserError("nothing to evaluate: give real=DIR and/or systems.NAME=DIR")
    if REAL in systems and real is not None:
        raise UserError(
            f"systems.{REAL} is the name of the real videos' column; call that system something else"
        )
    if references is not None and not references.is_dir():
        raise UserError(f"references={references}: no such folder; give a folder of STEM.png|jpg images")
    real_videos = videos_in(real, "real") if real is not None else {}
    cases: dict[str, list[Case]] = {}
    missing: dict[str, list[str]] = {}
    if real is not None:
        cases[REAL] = [Case(s, p, p, reference_for(s, references)) for s, p in real_videos.items()]
    for name, folder in systems.items():
        videos = videos_in(folder, f"systems.{name}")
        if real is not None:
            extra = sorted(set(videos) - set(real_videos))
            if extra:
                raise UserError(
                    f"systems.{name}: {videos[extra[0]]} has no real clip {real / (extra[0] + '.mp4')}; clips are "
                    "matched by file name: rename it or remove it"
                )
            missing[name] = sorted(set(real_videos) - set(videos))
        cases[name] = [
            Case(s, real_videos.get(s), p, reference_for(s, references)) for s, p in videos.items()
        ]
    return cases, missing


def check_case(case: Case, resample: bool, need_reference: bool) -> None:
    """Refuse, before any scoring, a pair that cannot be compared (frame rate, length, audio, reference)."""
    from common.video import probe_video

    video = probe_video(case.video)
    if not video.has_audio and find_audio(case.video) is None:
        raise UserError(
            f"{case.video} has no audio track and no {case.video.stem}.wav beside it: lip sync needs the speech; "
            "mux it into the video or put the wav beside it"
        )
    if need_reference and case.real is None and case.reference is None:
        raise UserError(
            f"{case.video}: no reference image (references/{case.stem}.png|jpg) and no real clip to take frame 0 "
            "from; give references=DIR or real=DIR"
        )
    if case.real is None or case.real == case.video:
        return
    real = probe_video(case.real)
    if abs(video.fps - real.fps) > 1e-3 and not resample:
        raise UserError(
            f"{case.video} runs at {video.fps:g} fps but {case.real} at {real.fps:g} fps; frames are compared "
            "index to index: pass resample=true to resample the system's video to the real clip's rate"
        )
    frames = video.num_frames * (real.fps / video.fps if resample else 1.0)
    if abs(frames - real.num_frames) > 1:
        raise UserError(
            f"{case.video} has {video.num_frames} frames but {case.real} has {real.num_frames}: their lengths must "
            "agree within one frame (cut the longer one, or generate from the whole real clip)"
        )


class Evaluator:
    """Scores clips with one set of networks (MediaPipe, dlib, SyncNet), kept open across clips."""

    def __init__(self, options: EvalOptions) -> None:
        from common.detect import FaceDetector

        self.options = options
        self.detector = FaceDetector(options.face_model, mode="image")
        self.describe = None
        if options.identity:
            from common.evaluation.identity import FaceDescriptor

            self.describe = FaceDescriptor()
        self.syncnet = None
        if options.syncnet_weights:
            from common.evaluation.syncnet import SyncNet

            self.syncnet = SyncNet.from_file(options.syncnet_weights)
        self._reals: dict[Path, tuple[Clip, FaceTrack]] = {}
        self._references: dict[Path, np.ndarray] = {}

    def close(self) -> None:
        self.detector.close()

    def track(self, clip: Clip) -> FaceTrack:
        return track_faces(clip.frames, self.detector, self.options.min_size)

    def real(self, path: Path) -> tuple[Clip, FaceTrack]:
        if path not in self._reals:
            clip = read_clip(path)
            track = self.track(clip)
            if not track.found.any():
                raise UserError(
                    f"{path}: no face in any frame of the real clip; it cannot be a reference for scoring"
                )
            self._reals[path] = (clip, track)
        return self._reals[path]

    def reference_descriptor(self, case: Case) -> np.ndarray:
        """dlib descriptor of the case's reference image (or of the real clip's frame 0)."""
        key = case.reference or case.real
        if key not in self._references:
            if case.reference is not None:
                from common.detect import read_image

                image = read_image(case.reference)
            else:
                image = self.real(case.real)[0].frames[0]
            track = track_faces(image[None], self.detector, self.options.min_size)
            if not track.found[0]:
                raise UserError(
                    f"{key}: no face found in the reference; give a reference image with a clear face"
                )
            self._references[key] = self.describe(image, track.boxes()[0])
        return self._references[key]

    def score(self, case: Case) -> tuple[Scores, dict[str, Any]]:
        """The clip's scores, and the series the plots draw (mouth opening, audio envelope)."""
        from common.evaluation.landmarks import landmark_scores
        from common.evaluation.pixels import PIXEL_METRICS, pixel_scores
        from common.evaluation.sync import audio_envelope, sync_scores

        real_clip, real_track = self.real(case.real) if case.real is not None else (None, None)
        clip = real_clip if case.video == case.real else read_clip(case.video)
        if real_clip is not None and abs(clip.fps - real_clip.fps) > 1e-3:
            clip = clip.resampled(real_clip.fps)
        if real_clip is not None:
            count = min(clip.num_frames, real_clip.num_frames)
            clip, real_clip = clip.truncated(count), real_clip.truncated(count)
            real_track = real_track.select(slice(count))
        track = real_track if case.video == case.real else self.track(clip)
        scores = landmark_scores(track, real_track)
        mouth = track.mouth_opening()
        scores.update(sync_scores(mouth, clip.audio, clip.fps))
        if real_clip is not None:
            scores.update(
                pixel_scores(clip.frames, real_clip.frames, real_track.boxes(margin=0.1), str(case.video))
            )
        else:
            scores.skip(PIXEL_METRICS, NO_REAL_VIDEO)
        boxes = track.boxes()
        if self.describe is not None:
            from common.evaluation.identity import identity_scores

            scores.update(identity_scores(self.describe, clip.frames, boxes, self.reference_descriptor(case)))
        if self.syncnet is not None:
            from common.evaluation.syncnet import FPS, lse_scores

            index = clip.resample_index(FPS)
            scores.update(lse_scores(self.syncnet, clip.frames[index], boxes[index], clip.audio))
        series = {
            "fps": clip.fps,
            "mouth": mouth,
            "envelope": audio_envelope(clip.audio, clip.fps, clip.num_frames)
            if clip.audio is not None
            else None,
        }
        return scores, series


def evaluate_folders(
    real: Path | None, systems: dict[str, Path], references: Path | None, options: EvalOptions
) -> tuple[dict[str, Any], dict[str, dict[str, dict]]]:
    """Score every case; returns the report (``report.json``'s content) and the plot series by system and clip."""
    from common.evaluation.stats import summarize

    cases, missing = plan(real, systems, references)
    for items in cases.values():
        for case in items:
            check_case(case, options.resample, options.identity)
    distributions = _distribution_networks(options)
    evaluator = Evaluator(options)
    report: dict[str, Any] = {"systems": {}, "options": dataclasses.asdict(options)}
    series: dict[str, dict[str, dict]] = {}
    total = sum(len(items) for items in cases.values())
    try:
        with tqdm(total=total, desc="evaluate", unit="clip", disable=not options.progress) as bar:
            for name, items in cases.items():
                clips, reasons, series[name] = {}, {}, {}
                for case in items:
                    bar.set_postfix_str(f"{name}/{case.stem}")
                    scores, series[name][case.stem] = evaluator.score(case)
                    clips[case.stem] = scores.values
                    if scores.not_computed:
                        reasons[case.stem] = scores.not_computed
                    bar.update()
                metrics = sorted({m for values in clips.values() for m in values})
                summary = {
                    m: summarize([c.get(m) for c in clips.values()], seed=options.seed) for m in metrics
                }
                report["systems"][name] = {
                    "clips": clips,
                    "summary": summary,
                    "not_computed": reasons,
                    "missing": missing.get(name, []),
                }
        if distributions:
            _add_distributions(report, cases, evaluator, distributions)
    finally:
        evaluator.close()
    return report, series


def _distribution_networks(options: EvalOptions) -> dict[str, Any]:
    from common.evaluation.distributions import load_network

    return {
        name: load_network(path, f"{name}_weights")
        for name, path in (("fid", options.fid_weights), ("fvd", options.fvd_weights))
        if path
    }


def _add_distributions(report: dict, cases: dict[str, list[Case]], evaluator: Evaluator, nets: dict) -> None:
    """FID / FVD of each system's clips against the real clips (system-level, in ``summary``)."""
    from common.evaluation.distributions import frechet_distance, image_features, video_features

    if REAL not in cases:
        for entry in report["systems"].values():
            for name in nets:
                entry.setdefault("not_computed_summary", {})[name] = "no real videos to compare with"
        return
    for name, net in nets.items():
        extract = image_features if name == "fid" else video_features
        real = np.concatenate([extract(net, evaluator.real(c.real)[0].frames) for c in cases[REAL]])
        for system, items in cases.items():
            generated = [extract(net, read_clip(c.video, audio=False).frames) for c in items]
            generated = np.concatenate(generated) if generated else np.zeros((0, 0))
            entry = report["systems"][system]
            if min(len(real), len(generated)) < 2:
                reason = "fewer than two 16-frame segments" if name == "fvd" else "fewer than two frames"
                entry.setdefault("not_computed_summary", {})[name] = reason
                continue
            value = frechet_distance(generated, real)
            entry["summary"][name] = {"mean": value, "ci95": [None, None], "n": len(generated)}
