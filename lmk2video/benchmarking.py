"""Run our models on a test set and score them with :mod:`common.evaluation` (``python -m lmk2video.benchmark``).

A test set is a ``common.preprocess`` output (``index.json``): the clips of the test speakers, each cut into
consecutive excerpts of ``frames`` frames (``STEM`` = ``CLIPID_START``). For an excerpt, the reference is the
frame before it and the audio its own stretch of the clip's speech. The benchmark writes, under ``out/``:

- ``real/STEM.mp4`` + ``real/STEM.wav``: the real excerpt, framed around the reference's face as the model
  frames its output (so that frames compare index to index), and its speech;
- ``references/STEM.png``: the framed reference frame;
- ``systems/NAME/STEM.mp4``: each system's video with the speech muxed in: ``ours`` (the model; in ``audio``
  mode its landmarks come from the audio2lmk model) and ``reference_repeated`` (the reference frame held: a
  model that ignores its conditioning); other systems' folders join the table as they are;
- ``compare/STEM.mp4``: reference | real | ours | the conditioning landmarks, side by side, with the speech;
- ``report.json``, ``report.md``, ``plots/``: :func:`common.evaluation.run.evaluate_folders`'s report.

Modes: ``reconstruct`` (landmarks extracted from the real clip: the papers' self-driven setting), ``audio``
(audio2lmk -> landmarks -> lmk2video: the audio-driven setting), ``landmarks_only`` (audio2lmk alone, scored
on landmark and sync metrics against the real landmarks, no video). Finished videos are kept, so an
interrupted run resumes; the report is made anew from all of them at the end.

``engine=ray`` renders the excerpts on a Ray cluster (:class:`common.engines.WorkerPool`: one model per actor,
excerpts streamed to the free ones); every actor writes its excerpt's files into ``out/`` (shared storage), and
the evaluation runs here once all are written. ``engine=local`` renders them one after the other in this process.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from common.errors import UserError
from common.index import ClipRecord
from common.lmkfile import LandmarkSequence

log = logging.getLogger("lmk2video.benchmark")

MODES = ("reconstruct", "audio", "landmarks_only")
OURS, STILL = "ours", "reference_repeated"


@dataclasses.dataclass
class Excerpt:
    """One test item: ``frames`` frames of ``clip`` after its reference frame ``start``."""

    clip: ClipRecord
    start: int
    frames: int

    @property
    def stem(self) -> str:
        return f"{self.clip.id}_{self.start:05d}"


def test_excerpts(
    clips: list[ClipRecord], frames: int | None, max_clips: int | None, reference_frame: int = 0
) -> list[Excerpt]:
    """Consecutive excerpts of every clip (each ``frames`` long, after its own reference frame)."""
    out = []
    for clip in sorted(clips, key=lambda c: c.id):
        total = clip.frames
        length = total - reference_frame - 1 if frames is None else int(frames)
        start = reference_frame
        while start + 1 + length <= total and length >= 1:
            out.append(Excerpt(clip, start, length))
            start += length + 1
        if max_clips is not None and len(out) >= max_clips:
            return out[:max_clips]
    return out


def excerpt_audio(clip: ClipRecord, first: int, frames: int) -> np.ndarray:
    """The 16 kHz speech of frames ``first .. first + frames - 1`` of ``clip``."""
    from common.audio import SAMPLE_RATE, load_audio

    audio = load_audio(clip.audio, silence_dbfs=None)
    begin, end = (round(f * SAMPLE_RATE / clip.fps) for f in (first, first + frames))
    return np.pad(audio[begin:end], (0, max(0, end - begin - len(audio[begin:end]))))


def rotations(sequence: LandmarkSequence) -> np.ndarray:
    """(T, 3, 3) head rotations of a landmark sequence's pose (XYZ Euler angles in degrees)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", sequence.pose[:, :3].astype(np.float64), degrees=True).as_matrix()


def sequence_track(sequence: LandmarkSequence) -> Any:
    """A :class:`common.evaluation.faces.FaceTrack` of a landmark sequence, in its own camera's pixels."""
    from common.evaluation.faces import FaceTrack

    size = tuple(int(v) for v in sequence.image_size)
    points = sequence.project(size).astype(np.float64)
    return FaceTrack(
        points=points, rotations=rotations(sequence), found=np.ones(len(points), bool), size=size
    )


def fit_length(sequence: LandmarkSequence, frames: int) -> LandmarkSequence:
    """``sequence`` cut or padded (last frame held) to ``frames`` frames (audio2lmk may give one more or less)."""
    if sequence.num_frames >= frames:
        return sequence.select(slice(0, frames))
    index = np.minimum(np.arange(frames), sequence.num_frames - 1)
    return sequence.select(index)


@dataclasses.dataclass
class Benchmark:
    """What :meth:`run` needs (the options of ``conf/lmk2video/benchmark.yaml``, paths absolute)."""

    excerpts: list[Excerpt]
    out: Path
    mode: str = "reconstruct"
    model: str | None = None
    audio2lmk_model: str | None = None
    audio2lmk_pose: str = "model"
    sampler: Any = None
    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"
    compare_videos: bool = True
    progress: bool = True
    engine: str = "local"
    ray: dict[str, Any] = dataclasses.field(default_factory=dict)
    threads_per_worker: int | None = None

    def check(self) -> None:
        from common.engines import RaySettings, check_engine, check_threads

        check_engine(self.engine)
        RaySettings.from_values(self.ray)
        check_threads(self.threads_per_worker)
        if self.mode not in MODES:
            raise UserError(f"mode={self.mode!r}; choose {', '.join(MODES)}")
        if self.mode != "landmarks_only" and self.model is None:
            raise UserError(
                f"mode={self.mode} renders videos and needs model=DIR (an lmk2video model folder)"
            )
        if self.mode != "reconstruct" and self.audio2lmk_model is None:
            raise UserError(f"mode={self.mode} needs audio2lmk_model=DIR (an audio2lmk model folder)")
        if not self.excerpts:
            raise UserError("the test set is empty: no test clip is longer than frames + 1; lower frames=")
        if self.sampler is not None:
            self.sampler.check()

    # ------------------------------------------------------------------------------------------ videos

    def render_all(self) -> dict[str, Path]:
        """Write the test set and every system's videos (finished ones are kept); returns the system folders."""
        from common.engines import RaySettings, WorkerPool

        folders = self.folders()
        for folder in (*folders.values(), self.out / "real", self.out / "references", self.out / "compare"):
            folder.mkdir(parents=True, exist_ok=True)
        todo = [i for i, item in enumerate(self.excerpts) if not self._finished(item.stem)]
        log.info("%d excerpts, %d to render (%s engine)", len(self.excerpts), len(todo), self.engine)
        pool = WorkerPool(
            self.renderer,
            engine=self.engine,
            ray_settings=RaySettings.from_values(self.ray),
            threads=self.threads_per_worker,
        )
        bar = tqdm(total=len(todo), desc=f"benchmark ({self.engine})", unit="clip", disable=not self.progress)
        with bar:
            for result in pool.run(todo, timeout_s=[None] * len(todo), max_retries=[0] * len(todo)):
                if result.error is not None:
                    raise UserError(
                        f"benchmark: excerpt {self.excerpts[todo[result.index]].stem}: {result.error}"
                    )
                bar.update(1)
        return folders

    def folders(self) -> dict[str, Path]:
        return {name: self.out / "systems" / name for name in (OURS, STILL)}

    def _finished(self, stem: str) -> bool:
        targets = [folder / f"{stem}.mp4" for folder in self.folders().values()]
        return all(p.is_file() for p in targets) and (self.out / "real" / f"{stem}.mp4").is_file()

    def renderer(self) -> Any:
        """This benchmark's model loaded once; returns ``render(index, deadline)`` writing excerpt ``index``."""
        from common.devices import resolve_device
        from lmk2video.pipeline import load_pipeline
        from lmk2video.rendering import resolve_dtype

        device = resolve_device(self.device)
        pipe = load_pipeline(self.model, device=device, dtype=resolve_dtype(self.dtype, device))
        pipe.set_progress_bar_config(disable=True)
        options = self.sampler.fit(pipe, strict=False)
        audio2lmk = self._audio2lmk()
        return functools.partial(self._render_excerpt, pipe, options, audio2lmk)

    def _render_excerpt(
        self, pipe: Any, options: Any, audio2lmk: Any, index: int, deadline: float | None
    ) -> str:
        from common.corpus import write_wav
        from common.engines import check_deadline
        from common.video import VideoWriter, read_frames
        from lmk2video.framing import LandmarkDrawings, apply_framing, frame_reference
        from lmk2video.rendering import render

        item = self.excerpts[index]
        stem = item.stem
        size = (pipe.config.height, pipe.config.width)
        targets = {name: folder / f"{stem}.mp4" for name, folder in self.folders().items()}
        sequence_all = LandmarkSequence.load(item.clip.landmarks)
        image = read_frames(item.clip.video, [item.start])[0]
        reference = sequence_all.select(slice(item.start, item.start + 1))
        first = item.start + 1
        wav = write_wav(self.out / "real" / f"{stem}.wav", excerpt_audio(item.clip, first, item.frames))
        if audio2lmk is None:
            sequence = sequence_all.select(slice(first, first + item.frames))
        else:
            from audio2lmk.inference import audio_to_landmarks

            made = audio_to_landmarks(audio2lmk, wav, reference, pose=self.audio2lmk_pose, seed=self.seed)
            sequence = fit_length(made, item.frames)
        face = reference.landmarks2d[0] if reference.landmarks2d is not None else reference.project()[0]
        framed, framing = frame_reference(
            image, face, size, pad_mode=options.pad_mode, **pipe.framing_options
        )
        real = np.stack(
            [
                apply_framing(f, framing, options.pad_mode)
                for f in read_frames(item.clip.video, range(first, first + item.frames))
            ]
        )
        with VideoWriter(self.out / "real" / f"{stem}.mp4", item.clip.fps) as writer:
            writer.write(real)
        _write_png(self.out / "references" / f"{stem}.png", framed)
        generator = torch.Generator("cpu").manual_seed(self.seed)
        rendering = render(pipe, image, reference, sequence, options, size, generator)
        chunks = []
        for chunk in rendering.frames:
            chunks.append(chunk)
            check_deadline(deadline, f"excerpt {stem}")
        frames = np.concatenate(chunks)
        with VideoWriter(targets[OURS], item.clip.fps, audio=wav) as writer:
            writer.write(frames)
        with VideoWriter(targets[STILL], item.clip.fps, audio=wav) as writer:
            writer.write(np.broadcast_to(framed, real.shape))
        if self.compare_videos:
            points = rendering.output_points(sequence, reference)
            drawings = LandmarkDrawings(points, size, "default")
            panels = [
                np.broadcast_to(framed, real.shape),
                real,
                frames,
                drawings.rgb(drawings[0 : len(points)]),
            ]
            with VideoWriter(self.out / "compare" / f"{stem}.mp4", item.clip.fps, audio=wav) as writer:
                writer.write(np.concatenate(panels, axis=2))
        return stem

    def _audio2lmk(self) -> Any:
        if self.mode == "reconstruct":
            return None
        from audio2lmk.inference import load_audio2lmk

        return load_audio2lmk(self.audio2lmk_model)

    # ------------------------------------------------------------------------------------------ landmarks only

    def landmarks_only(self) -> tuple[dict[str, Any], dict[str, dict]]:
        """audio2lmk's landmarks, the reference held and the real landmarks, scored against the real ones."""
        from audio2lmk.inference import audio_to_landmarks
        from common.evaluation.landmarks import landmark_scores
        from common.evaluation.stats import summarize
        from common.evaluation.sync import audio_envelope, sync_scores

        model = self._audio2lmk()
        report: dict[str, Any] = {"systems": {}, "mode": "landmarks_only"}
        series: dict[str, dict] = {}
        clips: dict[str, dict] = {"real": {}, OURS: {}, STILL: {}}
        reasons: dict[str, dict] = {"real": {}, OURS: {}, STILL: {}}
        for item in tqdm(self.excerpts, desc="benchmark", unit="clip", disable=not self.progress):
            full = LandmarkSequence.load(item.clip.landmarks)
            first = item.start + 1
            real = full.select(slice(first, first + item.frames))
            reference = full.select(slice(item.start, item.start + 1))
            audio = excerpt_audio(item.clip, first, item.frames)
            made = fit_length(
                audio_to_landmarks(model, audio, reference, pose=self.audio2lmk_pose, seed=self.seed),
                item.frames,
            )
            still = reference.select(np.zeros(item.frames, int))
            real_track = sequence_track(real)
            for name, sequence in (("real", real), (OURS, made), (STILL, still)):
                track = real_track if name == "real" else sequence_track(sequence)
                scores = landmark_scores(track, real_track)
                scores.update(sync_scores(track.mouth_opening(), audio, item.clip.fps))
                clips[name][item.stem] = scores.values
                if scores.not_computed:
                    reasons[name][item.stem] = scores.not_computed
                series.setdefault(name, {})[item.stem] = {
                    "fps": item.clip.fps,
                    "mouth": track.mouth_opening(),
                    "envelope": audio_envelope(audio, item.clip.fps, item.frames),
                }
        for name in clips:
            metrics = sorted({m for values in clips[name].values() for m in values})
            report["systems"][name] = {
                "clips": clips[name],
                "summary": {m: summarize([c.get(m) for c in clips[name].values()]) for m in metrics},
                "not_computed": reasons[name],
                "missing": [],
            }
        return report, series


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    from common.atomic import atomic_output

    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
            raise UserError(f"cannot write {path}; choose another out= folder")
