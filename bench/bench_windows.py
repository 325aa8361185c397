"""Context windows on a model with motion modules: the cost and quality of each window setting, and the
landmark jitter at window borders, where seams between windows would show.

Run from the project root (a model whose windows interact: one with motion modules, e.g. the
``sample_motion`` experiment's export)::

    python bench/bench_windows.py --model models/sample_motion --json outputs/bench_windows.json

Settings: 16-frame windows overlapping by 0, 2 or 4 frames (uniform averaging, AniPortrait's), overlap 4
with ``context_weighting=pyramid``, with ``context_shift=true``, and with both, and overlap 0 shifted. Every setting samples with the
same sampler (``--preset``, default ``balanced``: 10 DPM-Solver++ steps, CFG 3.5) on the held-out test set of
``python -m lmk2video.benchmark`` (KristiNoem, ``--clips`` excerpts of ``--frames`` frames), which scores
each (landmark distance, mouth-opening correlation, identity, jitter). Then, on each generated video, the
per-frame landmark jitter (:func:`common.evaluation.landmarks.jitter_per_frame`: second difference of
MediaPipe's landmarks / inter-ocular distance) is averaged over the frames next to a border of the setting's
window grid (the frames on both sides of where a window starts or ends; for shifted windows the first
step's grid) and over the other frames: ``border / interior`` near 1 means no seam. Cost: UNet frame passes
per output frame of the windows (averaged over the steps for shifted windows). Finished videos are kept
under ``--out`` (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmk2video.context import context_windows, step_offset  # noqa: E402

CONTEXT_FRAMES = 16
SETTINGS: dict[str, dict[str, Any]] = {
    "overlap0": {"context_overlap": 0},
    "overlap2": {"context_overlap": 2},
    "overlap4": {"context_overlap": 4},
    "overlap4_pyramid": {"context_overlap": 4, "context_weighting": "pyramid"},
    "overlap4_shift": {"context_overlap": 4, "context_shift": True},
    "overlap4_pyramid_shift": {"context_overlap": 4, "context_weighting": "pyramid", "context_shift": True},
    "overlap0_shift": {"context_overlap": 0, "context_shift": True},
}


def border_frames(frames: int, overlap: int) -> np.ndarray:
    """Frames next to a border of the (first step's) window grid: both sides of each window's start and end."""
    borders = set()
    for window in context_windows(frames, CONTEXT_FRAMES, overlap):
        for edge in (window[0] - 1, window[0], window[-1], window[-1] + 1):
            if 0 < edge < frames - 1:
                borders.add(edge)
    return np.array(sorted(borders), dtype=int)


def passes_per_frame(frames: int, overlap: int, shift: bool, steps: int) -> float:
    """UNet frame passes per output frame and step, averaged over ``steps`` steps."""
    total = 0
    for step in range(steps):
        offset = step_offset(step, CONTEXT_FRAMES, overlap) if shift else 0
        total += sum(len(w) for w in context_windows(frames, CONTEXT_FRAMES, overlap, offset=offset))
    return total / steps / frames


def border_jitter(videos: list[Path], overlap: int, detector: Any) -> dict[str, float]:
    from common.evaluation.faces import track_faces
    from common.evaluation.landmarks import jitter_per_frame
    from common.evaluation.media import read_clip

    border, interior = [], []
    for video in videos:
        per_frame = jitter_per_frame(track_faces(read_clip(video, audio=False).frames, detector))
        mask = np.zeros(len(per_frame), dtype=bool)
        mask[border_frames(len(per_frame), overlap)] = True
        border += per_frame[mask & np.isfinite(per_frame)].tolist()
        interior += per_frame[~mask & np.isfinite(per_frame)].tolist()
    b, i = float(np.mean(border)), float(np.mean(interior))
    return {"border_jitter": b, "interior_jitter": i, "border_over_interior": b / i}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder with motion modules")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_windows")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--preset", default="balanced", help="the sampler of every setting")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--face-model", default=None, help="MediaPipe face_landmarker .task (default: found)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    from common.detect import FaceDetector
    from lmk2video.pipeline import LandmarkVideoPipeline

    pipe = LandmarkVideoPipeline.from_pretrained(args.model)
    if not pipe.denoising_unet.has_motion_modules:
        raise SystemExit(
            f"{args.model} has no motion modules: its windows do not interact (nothing to measure)"
        )
    steps = {"quality": pipe.sampling_defaults["steps"], "balanced": 10, "fastest": 10}.get(args.preset, 25)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, dict[str, Any]] = {}
    with FaceDetector(args.face_model, mode="image") as detector:
        for name in args.settings.split(","):
            values = SETTINGS[name]
            folder = args.out / name
            command = [
                sys.executable, "-m", "lmk2video.benchmark", f"model={args.model}", f"out={folder}",
                f"frames={args.frames}", f"max_clips={args.clips}", f"preset={args.preset}",
                f"context_frames={CONTEXT_FRAMES}", *(f"{k}={str(v).lower()}" for k, v in values.items()),
            ]  # fmt: skip
            print(f"{name}: {' '.join(command[2:])}", file=sys.stderr)
            subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            summary = json.loads((folder / "report.json").read_text())["systems"]["ours"]["summary"]
            overlap = int(values["context_overlap"])
            row = {
                "unet_passes_per_frame_step": passes_per_frame(
                    args.frames, overlap, bool(values.get("context_shift")), steps
                ),
                **{k: summary[k]["mean"] for k in ("lmd_face", "mouth_corr", "identity_cosine", "jitter")},
                **border_jitter(sorted((folder / "systems" / "ours").glob("*.mp4")), overlap, detector),
            }
            results[name] = row
            print(f"{name}: {row}", file=sys.stderr)
        real = sorted((args.out / args.settings.split(",")[0] / "real").glob("*.mp4"))
        results["real_at_overlap4_borders"] = border_jitter(real, 4, detector)
    head = ["setting", "UNet passes/frame/step", "LMD face", "mouth r", "identity", "jitter", "border jitter",
            "interior jitter", "border/interior"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in results.items():
        cells = [name] + [
            "-" if row.get(k) is None else f"{row[k]:.4g}"
            for k in ("unet_passes_per_frame_step", "lmd_face", "mouth_corr", "identity_cosine", "jitter",
                      "border_jitter", "interior_jitter", "border_over_interior")
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
