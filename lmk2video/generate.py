"""``python -m lmk2video.generate model=DIR reference=IMAGE landmarks=FILE.npz out=OUT.mp4 [audio=FILE] ...``

Renders a landmark sequence as a video of the reference image's person. Options: ``conf/lmk2video/generate.yaml``.

1. Inputs are checked before any model work, each failure one :class:`UserError` (exit 2, nothing written):
   the landmark file (readable, well-formed), the audio (readable, and its duration within one frame of the
   landmarks': ``|duration * fps - frames| <= 1``), the reference image (readable, a face in it), the model
   folder (complete, strictly loadable), the sizes and the window settings.
2. The reference is framed to width x height around its face, and the landmarks projected into the same
   frame (:mod:`lmk2video.framing`: a file without a reference face is first retargeted onto the reference).
3. :meth:`LandmarkVideoPipeline.stream` generates it (progress bar over the denoising steps); decoded chunks go
   straight to the video writer (H.264, audio muxed, written atomically), one output frame per landmark frame
   at the landmark file's fps. ``grid=true`` writes reference | landmarks | result side by side.

Audio-driven landmarks: ``audio=`` without ``landmarks=`` runs audio2lmk first with the model folder
``audio2lmk_model=DIR`` (:func:`audio2lmk.inference.audio_to_landmarks` on the reference image's face, head
pose ``audio2lmk_pose`` = model | still | FILE, pose style ``audio2lmk_style``, drawn from ``seed`` when null)
and writes the landmarks beside the output (``OUT.npz``) so they can be edited and rendered again with
``landmarks=OUT.npz``. In Python, :func:`generate`'s ``audio_to_landmarks`` argument replaces that step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR
from common.errors import UserError, exit_on_user_error
from common.lmkfile import LandmarkSequence

log = logging.getLogger("lmk2video.generate")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
POSE_CACHE_GPU_BYTES = 4 * 2**30


@dataclasses.dataclass
class GenerateSettings:
    """The options of ``python -m lmk2video.generate`` (see ``conf/lmk2video/generate.yaml``); paths absolute."""

    model: str | None = None
    reference: str | None = None
    out: str | None = None
    landmarks: str | None = None
    audio: str | None = None
    audio2lmk_model: str | None = None
    audio2lmk_pose: str = "model"
    audio2lmk_style: int | str | None = None
    steps: int = 25
    cfg: float = 3.5
    seed: int | None = 42
    width: int | None = None
    height: int | None = None
    grid: bool = False
    context_frames: int = 16
    context_overlap: int = 4
    context_stride: int = 1
    context_weighting: str = "uniform"
    dtype: str = "auto"
    device: str = "auto"
    decode_chunk: int = 4
    pose_cache: str = "auto"
    pad_mode: str = "replicate"
    face_model: str | None = None
    progress: bool = True

    PATH_KEYS = ("model", "reference", "out", "landmarks", "audio", "audio2lmk_model", "face_model")

    @classmethod
    def from_config(cls, cfg: DictConfig | dict, work_dir: str | os.PathLike) -> GenerateSettings:
        """Settings from a composed config; relative paths are taken from ``work_dir``."""
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        settings = cls(**{k: v for k, v in values.items() if k in names})
        for key in cls.PATH_KEYS:
            value = getattr(settings, key)
            if value is not None:
                setattr(settings, key, str(Path(work_dir) / Path(str(value)).expanduser()))
        if settings.audio2lmk_pose not in ("model", "still"):  # a pose file
            settings.audio2lmk_pose = str(Path(work_dir) / Path(str(settings.audio2lmk_pose)).expanduser())
        return settings


AudioToLandmarks = Callable[[GenerateSettings, LandmarkSequence], LandmarkSequence]


# ------------------------------------------------------------------------------------------- checks


def _require(settings: GenerateSettings) -> None:
    example = "python -m lmk2video.generate model=DIR reference=IMAGE landmarks=FILE.npz out=OUT.mp4"
    for key in ("model", "reference", "out"):
        if getattr(settings, key) is None:
            raise UserError(f"{key}=... is required, e.g. {example}")
    numbers = {
        "steps": (settings.steps, 1),
        "decode_chunk": (settings.decode_chunk, 1),
    }
    for key, (value, low) in numbers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{key}={value!r} must be a whole number >= {low}")
    if not isinstance(settings.cfg, int | float) or isinstance(settings.cfg, bool) or settings.cfg < 0:
        raise UserError(f"cfg={settings.cfg!r} must be a number >= 0 (3.5 is usual; <= 1 turns guidance off)")
    if settings.seed is not None and (not isinstance(settings.seed, int) or isinstance(settings.seed, bool)):
        raise UserError(f"seed={settings.seed!r} must be a whole number")
    if settings.pose_cache not in ("auto", "device", "cpu"):
        raise UserError(f"pose_cache={settings.pose_cache!r}; choose auto, device or cpu")
    for key in ("width", "height"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise UserError(f"{key}={value!r} must be a positive whole number of pixels")
    from lmk2video.context import check_context, window_weights

    check_context(settings.context_frames, settings.context_overlap, settings.context_stride)
    window_weights(1, settings.context_weighting)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available; use device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"dtype={name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


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


# ------------------------------------------------------------------------------------------- run


def generate(settings: GenerateSettings, audio_to_landmarks: AudioToLandmarks | None = None) -> Path:
    """Render ``settings.out`` (see the module docstring); returns its path."""
    from common.detect import extract_image, read_image
    from common.video import VideoWriter
    from lmk2video.framing import prepare_sequence
    from lmk2video.pipeline import load_pipeline

    _require(settings)
    out = Path(settings.out)
    VideoWriter(
        out, fps=1.0, audio=settings.audio
    )  # checks the output name and the audio path; writes nothing
    _check_writable(out)
    sequence: LandmarkSequence | None = None
    if settings.landmarks is not None:
        sequence = LandmarkSequence.load(settings.landmarks)
        if settings.audio is not None:
            check_audio(settings.audio, sequence, settings.landmarks)
    elif settings.audio is None:
        raise UserError("landmarks=FILE.npz is required (the landmark sequence to render)")
    else:
        audio_duration(settings.audio)
        if audio_to_landmarks is None:
            audio_to_landmarks = audio2lmk_landmarks(settings)

    image = read_image(settings.reference)
    reference = extract_image(settings.reference, model_path=settings.face_model, image=image)

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    pipe = load_pipeline(settings.model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=not settings.progress, desc="denoising", unit="step")
    width = settings.width or pipe.config.width
    height = settings.height or pipe.config.height
    factor = pipe.vae_scale_factor
    if width % factor or height % factor:
        raise UserError(f"width={width} height={height}: both must be multiples of {factor}")
    limit = pipe.max_context_frames
    if limit is not None and settings.context_frames > limit:
        raise UserError(
            f"context_frames={settings.context_frames} exceeds the motion modules' max_position={limit} "
            f"({settings.model}); set context_frames={limit} or less"
        )

    if sequence is None:
        sequence = audio_to_landmarks(settings, reference).validate("audio2lmk output")
        check_audio(settings.audio, sequence, "the generated landmarks")
        written = sequence.save(out.with_suffix(".npz"))
        log.info(
            "wrote the landmarks made from %s to %s (edit them and pass landmarks=)", settings.audio, written
        )
        source = str(written)
    else:
        source = settings.landmarks

    sequence = prepare_sequence(sequence, reference, source)
    pose_cache = _pose_cache_device(settings.pose_cache, device, sequence.num_frames, (height, width), pipe)
    seed = settings.seed if settings.seed is not None else torch.seed()
    if settings.seed is None:
        log.info("seed=%d (pass seed=%d to repeat this video)", seed, seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    rendering = render(
        pipe, image, reference, sequence, settings, (height, width), generator, pose_cache_device=pose_cache
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
    with VideoWriter(out, fps=sequence.fps, audio=settings.audio) as writer:
        for frames in rendering.frames:
            writer.write(rendering.grid(frames, done) if settings.grid else frames)
            done += len(frames)
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


@dataclasses.dataclass
class Rendering:
    """A video being generated by :func:`render`.

    Attributes:
        framed: (H, W, 3) RGB uint8 reference at the output size.
        framing: the reference's crop (:class:`lmk2video.framing.Framing`).
        drawings: the landmark drawings the model is conditioned on (model's style and channel order).
        frames: iterator of (n, H, W, 3) RGB uint8 chunks, one frame per drawing (generation runs as it is read).
    """

    framed: np.ndarray
    framing: Any
    drawings: Any
    frames: Iterator[np.ndarray]

    def grid(self, frames: np.ndarray, start: int) -> np.ndarray:
        """reference | landmarks (RGB) | ``frames`` side by side, for frames ``start ...`` of the video."""
        n = len(frames)
        lmk = self.drawings.rgb(self.drawings[start : start + n])
        return np.concatenate([np.broadcast_to(self.framed, frames.shape), lmk, frames], axis=2)


def render(
    pipe: Any,
    image: np.ndarray,
    reference: LandmarkSequence,
    sequence: LandmarkSequence,
    settings: GenerateSettings,
    size: tuple[int, int],
    generator: torch.Generator,
    pose_cache_device: torch.device | None = None,
) -> Rendering:
    """Reference image + landmarks -> frames: the core of :func:`generate`, shared with training's validation.

    Args:
        pipe: a :class:`~lmk2video.pipeline.LandmarkVideoPipeline`.
        image: (H0, W0, 3) RGB uint8 reference image at any size.
        reference: its one-frame landmark sequence (``landmarks2d[0]`` places the crop; mesh and pose are drawn
            as the pose guider's reference input).
        sequence: the landmarks to render, in the reference image's camera (made for this reference:
            :func:`lmk2video.framing.prepare_sequence`, or the reference's own clip).
        settings: steps, cfg, context windows, decode_chunk and pad_mode are used.
        size: (H, W) of the output.
        generator: CPU generator of the initial noise.
        pose_cache_device: where the pose features are kept (default: the pipeline's device).
    """
    from lmk2video.framing import LandmarkDrawings, frame_landmarks, frame_reference

    face = reference.landmarks2d[0] if reference.landmarks2d is not None else reference.project()[0]
    framed, framing = frame_reference(image, face, size, pad_mode=settings.pad_mode)
    points, reference_points = frame_landmarks(sequence, reference, framing)
    style = pipe.config.landmark_style
    drawings = LandmarkDrawings(points, size, style)
    reference_drawing = LandmarkDrawings(reference_points[None], size, style)[0:1][0]
    frames = pipe.stream(
        framed,
        drawings,
        reference_drawing,
        num_inference_steps=settings.steps,
        guidance_scale=float(settings.cfg),
        generator=generator,
        context_frames=settings.context_frames,
        context_overlap=settings.context_overlap,
        context_stride=settings.context_stride,
        context_weighting=settings.context_weighting,
        decode_chunk=settings.decode_chunk,
        pose_cache_device=pose_cache_device,
    )
    return Rendering(framed=framed, framing=framing, drawings=drawings, frames=frames)


def _check_writable(out: Path) -> None:
    """The output's folder (or its nearest existing ancestor, where the folder would be created) is writable."""
    folder = out.expanduser().resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {out}: {folder} is not a writable folder; choose another output path")


def _pose_cache_device(
    mode: str, device: torch.device, num_frames: int, size: tuple[int, int], pipe
) -> torch.device:
    if mode == "device" or device.type == "cpu":
        return device
    if mode == "cpu":
        return torch.device("cpu")
    # auto: bytes of all residuals per frame at the output size, from the UNet's channels and resolutions.
    h, w = (v // pipe.vae_scale_factor for v in size)
    channels = pipe.denoising_unet.config.block_out_channels
    values = channels[0] * h * w
    for i, c in enumerate(channels):
        scale = 2 ** min(i + 1, len(channels) - 1)
        values += c * (h // scale) * (w // scale)
    size = values * num_frames * torch.finfo(pipe.pose_guider.dtype).bits // 8
    if size > POSE_CACHE_GPU_BYTES:
        log.info("pose features of %d frames take %.1f GiB: kept on the CPU", num_frames, size / 2**30)
        return torch.device("cpu")
    return device


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="generate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from lmk2video.pipeline import quiet_libraries

    quiet_libraries()
    generate(GenerateSettings.from_config(cfg, cfg.paths.work_dir))


if __name__ == "__main__":
    main()
