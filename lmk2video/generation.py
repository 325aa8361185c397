"""The whole generate job as a library: check every input, (optionally) run audio2lmk, render, write the video.

``python -m lmk2video.generate`` is :func:`generate` on :class:`GenerateSettings` made from its options; the
demo, benchmarks, batch generation and the app call it the same way.

1. Inputs are checked before any model work, each failure one :class:`UserError` (exit 2, nothing written):
   the outputs (writable; an existing one is kept unless ``overwrite``), the landmark file (readable,
   well-formed), the audio (readable, and its duration within one frame of the landmarks':
   ``|duration * fps - frames| <= 1``), the reference image (readable, a face in it), the model folder
   (complete, strictly loadable), the sizes and the sampler options.
2. The reference is framed to width x height around its face, and the landmarks projected into the same
   frame (:mod:`lmk2video.framing`: a file without a reference face is first retargeted onto the reference).
3. :func:`lmk2video.rendering.render` generates it (progress bar over the denoising steps); decoded chunks go
   straight to the video writer (H.264, audio muxed, written atomically), one output frame per landmark frame
   at the landmark file's fps. ``grid=true`` writes reference | landmarks | result side by side.

Audio-driven landmarks: ``audio=`` without ``landmarks=`` runs audio2lmk first with the model folder
``audio2lmk_model=DIR`` (:func:`audio2lmk.inference.audio_to_landmarks` on the reference image's face, head
pose ``audio2lmk_pose`` = model | still | FILE, pose style ``audio2lmk_style``, drawn from ``seed`` when null)
and writes the landmarks beside the output (``OUT.npz``) so they can be edited and rendered again with
``landmarks=OUT.npz``; an existing ``OUT.npz`` (perhaps edited by hand) is kept unless ``overwrite=true``.
:func:`generate`'s ``audio_to_landmarks`` argument replaces that step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common import limits
from common.atomic import check_output
from common.errors import UserError
from common.lmkfile import LandmarkSequence
from lmk2video.rendering import DTYPES, SamplerOptions

log = logging.getLogger("lmk2video.generate")

USAGE = "python -m lmk2video.generate model=DIR reference=IMAGE landmarks=FILE.npz out=OUT.mp4"


@dataclasses.dataclass
class GenerateSettings:
    """The options of ``python -m lmk2video.generate`` (see ``conf/lmk2video/generate.yaml``, ``conf/lmk2video/sampling/default.yaml``); paths absolute.

    The sampler's options (``steps``, ``cfg``, ``context_*``, ``decode_chunk``, ``pad_mode``) are in
    :attr:`sampler`; :meth:`from_config` takes them from the same flat options as the command line.
    """

    model: str | None = None
    reference: str | None = None
    out: str | None = None
    landmarks: str | None = None
    audio: str | None = None
    audio2lmk_model: str | None = None
    audio2lmk_pose: str = "model"
    audio2lmk_style: int | str | None = None
    sampler: SamplerOptions = dataclasses.field(default_factory=SamplerOptions)
    seed: int | None = 42
    width: int | None = None
    height: int | None = None
    grid: bool = False
    dtype: str = "auto"
    device: str = "auto"
    compile: bool = False
    channels_last: bool = False
    pose_cache: str = "auto"
    face_model: str | None = None
    progress: bool = True
    overwrite: bool = False

    PATH_KEYS = ("model", "reference", "out", "landmarks", "audio", "audio2lmk_model", "face_model")

    @classmethod
    def from_config(cls, cfg: Any, work_dir: str | os.PathLike) -> GenerateSettings:
        """Settings from a composed config or a dict of options; relative paths are taken from ``work_dir``."""
        from omegaconf import DictConfig, OmegaConf

        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)} - {"sampler"}
        settings = cls(
            **{k: v for k, v in values.items() if k in names}, sampler=SamplerOptions.from_values(values)
        )
        for key in cls.PATH_KEYS:
            value = getattr(settings, key)
            if value is not None:
                setattr(settings, key, str(Path(work_dir) / Path(str(value)).expanduser()))
        if settings.audio2lmk_pose not in ("model", "still"):  # a pose file
            settings.audio2lmk_pose = str(Path(work_dir) / Path(str(settings.audio2lmk_pose)).expanduser())
        return settings

    @property
    def landmarks_out(self) -> Path:
        """Where the audio-driven mode writes its landmarks: beside the video, ``OUT.npz``."""
        return Path(str(self.out)).with_suffix(".npz")

    def check(self) -> GenerateSettings:
        """Raise :class:`UserError` for a missing or malformed option (no file is read); returns ``self``."""
        for key in ("model", "reference", "out"):
            if getattr(self, key) is None:
                raise UserError(f"{key}=... is required, e.g. {USAGE}")
        if self.landmarks is None and self.audio is None:
            raise UserError(f"landmarks=FILE.npz is required (the landmark sequence to render), e.g. {USAGE}")
        self.sampler.check()
        limits.seed(self.seed)
        if self.pose_cache not in ("auto", "device", "cpu"):
            raise UserError(f"pose_cache={self.pose_cache!r}; choose auto, device or cpu")
        for key in ("width", "height"):
            value = getattr(self, key)
            if value is not None:
                limits.number(value, f"{key}=", 8, limits.MAX_GENERATE_SIDE, integer=True, hint="pixels")
                if value % 8:
                    raise UserError(
                        f"{key}={value} must be a multiple of 8 pixels, e.g. {value // 8 * 8 or 8}"
                    )
        for key in ("compile", "channels_last", "grid", "overwrite", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"{key}={getattr(self, key)!r} must be true or false")
        if self.dtype not in ("auto", *DTYPES):
            raise UserError(f"dtype={self.dtype!r}; choose auto, {', '.join(DTYPES)}")
        return self


AudioToLandmarks = Callable[[GenerateSettings, LandmarkSequence], LandmarkSequence]
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``"denoising"`` counts denoising-UNet passes (steps x context windows),
``"decoding"`` counts the frames written. An exception it raises (a cancelled job) stops the generation;
the output is then not written."""


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of an audio file's first audio stream (decoded with :func:`common.audio.load_audio`;
    silence is accepted: it is muxed, not analysed)."""
    from common.audio import SAMPLE_RATE, load_audio

    return load_audio(path, silence_dbfs=None).size / SAMPLE_RATE


def check_audio(audio: str, sequence: LandmarkSequence, landmarks: str) -> None:
    """The audio must last as long as the landmarks, within one frame."""
    duration = audio_duration(audio)
    frames = duration * sequence.fps
    if abs(frames - sequence.num_frames) > 1:
        raise UserError(
            f"{audio} lasts {duration:.3f} s ({frames:.1f} frames at {sequence.fps:g} fps) but {landmarks} has "
            f"{sequence.num_frames} frames ({sequence.duration:.3f} s): trim the landmarks "
            f"(python -m common.lmk edit {landmarks} -o OUT.npz --trim 0:{duration:.3f}), resample them "
            "(--fps), or cut the audio to match"
        )


def audio2lmk_landmarks(settings: GenerateSettings) -> AudioToLandmarks:
    """The audio2lmk step of ``audio=`` without ``landmarks=``: loads ``audio2lmk_model`` now (a bad folder
    fails before any diffusion work) and returns the function that runs it on the reference face."""
    if settings.audio2lmk_model is None:
        raise UserError(
            f"audio={settings.audio} without landmarks= runs audio2lmk first and needs audio2lmk_model=DIR (a "
            "folder written by python -m audio2lmk.train ... export_dir=DIR); or pass landmarks=FILE.npz"
        )
    from audio2lmk.inference import audio_to_landmarks, load_audio2lmk

    model = load_audio2lmk(settings.audio2lmk_model)

    def run(options: GenerateSettings, reference: LandmarkSequence) -> LandmarkSequence:
        log.info("audio2lmk: %s -> landmarks with %s", options.audio, options.audio2lmk_model)
        return audio_to_landmarks(
            model,
            options.audio,
            reference,
            pose=options.audio2lmk_pose,
            style=options.audio2lmk_style,
            seed=options.seed,
        )

    return run


def generate(
    settings: GenerateSettings,
    audio_to_landmarks: AudioToLandmarks | None = None,
    *,
    pipeline: Any | None = None,
    progress: Progress | None = None,
) -> Path:
    """Render ``settings.out`` (see the module docstring); returns its path.

    ``pipeline``: the pipeline of ``settings.model`` already loaded on the chosen device and dtype (the web app
    keeps its models loaded between jobs); None loads it. ``progress``: see :data:`Progress`.
    """
    from common.detect import extract_image, read_image
    from common.devices import resolve_device
    from common.video import VideoWriter
    from lmk2video.framing import prepare_sequence
    from lmk2video.pipeline import load_pipeline
    from lmk2video.rendering import pose_cache_device, render, resolve_dtype, speed_up

    settings.check()
    out = Path(settings.out)
    VideoWriter(
        out, fps=1.0, audio=settings.audio
    )  # checks the output name and the audio path; writes nothing
    check_output(out, settings.overwrite)
    sequence: LandmarkSequence | None = None
    if settings.landmarks is not None:
        sequence = LandmarkSequence.load(settings.landmarks)
        if settings.audio is not None:
            check_audio(settings.audio, sequence, settings.landmarks)
    else:
        check_output(settings.landmarks_out, settings.overwrite)
        audio_duration(settings.audio)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)

    image = read_image(settings.reference)
    reference = extract_image(settings.reference, model_path=settings.face_model, image=image)
    if sequence is None and audio_to_landmarks is None:
        audio_to_landmarks = audio2lmk_landmarks(settings)

    pipe = pipeline if pipeline is not None else load_pipeline(settings.model, device=device, dtype=dtype)
    speed_up(pipe, compile=settings.compile, channels_last=settings.channels_last)
    pipe.set_progress_bar_config(disable=not settings.progress, desc="denoising", unit="step")
    width = settings.width or pipe.config.width
    height = settings.height or pipe.config.height
    factor = pipe.vae_scale_factor
    if width % factor or height % factor:
        raise UserError(f"width={width} height={height}: both must be multiples of {factor}")
    options = settings.sampler.fit(pipe, strict=True, source=settings.model)

    if sequence is None:
        sequence = audio_to_landmarks(settings, reference).validate("audio2lmk output")
        check_audio(settings.audio, sequence, "the generated landmarks")
        written = sequence.save(settings.landmarks_out)
        log.info(
            "wrote the landmarks made from %s to %s (edit them and pass landmarks=)", settings.audio, written
        )
        source = str(written)
    else:
        source = settings.landmarks

    sequence = prepare_sequence(sequence, reference, source)
    cache = pose_cache_device(settings.pose_cache, device, sequence.num_frames, (height, width), pipe)
    seed = settings.seed if settings.seed is not None else torch.seed()
    if settings.seed is None:
        log.info("seed=%d (pass seed=%d to repeat this video)", seed, seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    rendering = render(pipe, image, reference, sequence, options, (height, width), generator, cache)
    log.info(
        "sampler: %s, %d steps, %s",
        type(pipe.scheduler).__name__,
        options.steps,
        f"guidance {options.cfg:g}" if options.cfg > 1 else "no guidance",
    )
    log.info(
        "reference %s (%dx%d): crop window x=%d y=%d %dx%d -> %dx%d",
        settings.reference,
        image.shape[1],
        image.shape[0],
        *rendering.framing.window,
        width,
        height,
    )
    done = 0
    hook = None if progress is None else _count_denoising(pipe, sequence.num_frames, options, progress)
    try:
        with VideoWriter(out, fps=sequence.fps, audio=settings.audio) as writer:
            for frames in rendering.frames:
                writer.write(rendering.grid(frames, done) if settings.grid else frames)
                done += len(frames)
                if progress is not None:
                    progress("decoding", done, sequence.num_frames)
    finally:
        if hook is not None:
            hook.remove()
    if done != sequence.num_frames:  # pragma: no cover - the pipeline yields one frame per drawing
        raise RuntimeError(f"generated {done} frames for {sequence.num_frames} landmark frames")
    log.info(
        "wrote %s: %d frames at %g fps, %dx%d",
        out,
        done,
        sequence.fps,
        width * (3 if settings.grid else 1),
        height,
    )
    return out


def _count_denoising(pipe: Any, num_frames: int, options: SamplerOptions, progress: Progress) -> Any:
    """Report every denoising-UNet pass (one per context window per step) to ``progress``; returns the hook
    handle to remove."""
    from lmk2video.context import context_windows

    windows = len(
        context_windows(num_frames, options.context_frames, options.context_overlap, options.context_stride)
    )
    total = int(options.steps) * windows
    calls = 0

    def passed(*_: Any) -> None:
        nonlocal calls
        calls += 1
        progress("denoising", min(calls, total), total)

    return pipe.denoising_unet.register_forward_hook(passed)
