"""Does generated video follow its landmarks? MediaPipe on generated frames against the conditioning landmarks.

The library behind ``python -m lmk2video.evaluate`` and training's validation scores.

The metric (:func:`landmark_following`): MediaPipe's FaceLandmarker (IMAGE mode, each frame on its own) runs
on every generated frame; frames smaller than ``min_size`` pixels are first enlarged (bicubic) to that size,
since MediaPipe's face detector works on 128-pixel inputs and its landmark model on 256. Reported:

* ``detection_rate``: the fraction of frames in which a face is found;
* ``mean_error_px``: over frames with a face, the mean distance between the 468 detected mesh points and
  the 468 conditioning points (the landmarks the frame was generated from, in the output frame's pixels),
  in pixels of the output frame.

:func:`evaluate` renders a held-out clip excerpt (reference = frame ``start``, landmarks = the next
``frames`` frames; the same excerpt training's validation renders) with each model through
:func:`lmk2video.rendering.render` (as ``generate`` does), and measures two references beside them: the real frames of the excerpt,
framed the same way (MediaPipe's own error floor), and the reference frame repeated (what a model that
ignores the landmarks and copies its reference scores).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.geometry import NUM_VERTICES

log = logging.getLogger("lmk2video.evaluate")


@dataclasses.dataclass
class LandmarkFollowing:
    """Scores of one video (see the module docstring)."""

    frames: int
    detected: int
    mean_error_px: float | None
    errors_px: list[float | None]

    @property
    def detection_rate(self) -> float:
        return self.detected / self.frames if self.frames else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "detected": self.detected,
            "detection_rate": self.detection_rate,
            "mean_error_px": self.mean_error_px,
        }


def landmark_following(
    frames: np.ndarray,
    points: np.ndarray,
    face_model: str | Path | None = None,
    min_size: int = 256,
    detector: Any = None,
) -> LandmarkFollowing:
    """Score generated ``frames`` (F, H, W, 3) RGB uint8 against conditioning ``points`` (F, >=468, 2) pixels.

    ``detector``: an open :class:`common.detect.FaceDetector` in image mode (else one is opened on
    ``face_model``).
    """
    from common.detect import FaceDetector
    from common.evaluation.faces import track_faces

    frames = np.asarray(frames)
    points = np.asarray(points, dtype=np.float64)[:, :NUM_VERTICES]
    if frames.ndim != 4 or len(frames) != len(points):
        raise ValueError(
            f"frames {frames.shape} and points {points.shape} must be (F, H, W, 3) and (F, 468, 2)"
        )
    owned = detector is None
    detector = detector or FaceDetector(face_model, mode="image")
    try:
        track = track_faces(frames, detector, min_size)
    finally:
        if owned:
            detector.close()
    errors: list[float | None] = [
        float(np.linalg.norm(found - target, axis=-1).mean()) if ok else None
        for found, target, ok in zip(track.points, points, track.found)
    ]
    hits = [e for e in errors if e is not None]
    return LandmarkFollowing(
        frames=len(errors),
        detected=len(hits),
        mean_error_px=float(np.mean(hits)) if hits else None,
        errors_px=errors,
    )


def excerpt_targets(excerpt: Any, size: tuple[int, int], pad_mode: str = "replicate") -> dict[str, Any]:
    """The excerpt's framing as generation frames it, its conditioning points, real frames and reference copy."""
    from common.video import read_frames
    from lmk2video.framing import apply_framing, frame_landmarks, frame_reference

    reference = excerpt.reference
    face = reference.landmarks2d[0] if reference.landmarks2d is not None else reference.project()[0]
    framed, framing = frame_reference(excerpt.image, face, size, pad_mode=pad_mode)
    points, _ = frame_landmarks(excerpt.sequence, reference, framing)
    first = excerpt.start + 1
    indices = list(range(first, first + excerpt.sequence.num_frames))
    real = np.stack([apply_framing(f, framing, pad_mode) for f in read_frames(excerpt.clip.video, indices)])
    copies = np.broadcast_to(framed, real.shape).copy()
    return {"points": points, "real": real, "reference_copy": copies, "framing": framing}


def evaluate(
    models: list[str],
    excerpt: Any,
    face_model: str | None,
    steps: int | None = None,
    cfg: float | None = None,
    seed: int = 42,
    device: str = "cpu",
    video_dir: Path | None = None,
) -> dict[str, Any]:
    """Scores of each model folder and of the two references on one excerpt (see the module docstring)."""
    from common.detect import FaceDetector
    from common.video import write_video
    from lmk2video.pipeline import load_pipeline
    from lmk2video.rendering import SamplerOptions, render

    results: dict[str, Any] = {}
    with FaceDetector(face_model, mode="image") as detector:
        targets = None
        for model in models:
            pipe = load_pipeline(model, device=device)
            pipe.set_progress_bar_config(disable=True)
            size = (pipe.config.height, pipe.config.width)
            if targets is None:
                targets = excerpt_targets(excerpt, size)
                for name in ("real", "reference_copy"):
                    results[name] = landmark_following(
                        targets[name], targets["points"], detector=detector
                    ).to_dict()
            options = SamplerOptions(steps=steps, cfg=cfg).fit(pipe, strict=False)
            generator = torch.Generator("cpu").manual_seed(seed)
            rendering = render(
                pipe, excerpt.image, excerpt.reference, excerpt.sequence, options, size, generator
            )
            frames = np.concatenate(list(rendering.frames))
            results[model] = landmark_following(frames, targets["points"], detector=detector).to_dict()
            if video_dir is not None:
                write_video(
                    video_dir / f"{Path(model).name}.mp4", [rendering.grid(frames, 0)], excerpt.sequence.fps
                )
            log.info("%s: %s", model, results[model])
    return results
