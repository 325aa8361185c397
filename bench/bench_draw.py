"""Frames per second of each drawing style on ONE CPU core, at 512x512 and 256x256.

Run from the project root: ``python bench/bench_draw.py`` (options: ``--frames``, ``--repeats``,
``--sizes``, ``--landmarks FILE.npz`` to draw a real landmark file instead).

The default input is a synthetic talking sequence with real projected landmarks: MediaPipe's
canonical face with a jaw opening and closing at speech rate, under the real head motion of
AniPortrait's pose template when ``../shared`` is present (a synthetic sway otherwise),
projected with ``LandmarkSequence.project`` at each size. The process is pinned to one core and
OpenCV to one thread; frames are drawn in chunks of 64 as ``python -m common.lmk render`` does.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.draw import draw_landmarks, list_styles  # noqa: E402
from common.geometry import canonical_face, relative_to_absolute  # noqa: E402
from common.lmkfile import LandmarkSequence  # noqa: E402

POSE_TEMPLATE = Path("data") / "aniportrait" / "pose_temp.npy"
CHUNK = 64


def synthetic_sequence(num_frames: int, shared: Path, fps: float = 30.0) -> tuple[LandmarkSequence, str]:
    """Canonical face talking (jaw motion) under real (template) or synthetic head motion."""
    t = np.arange(num_frames) / fps
    face = canonical_face().vertices
    lower = face[:, 1] < face[14, 1] + 0.05  # lower lip, chin and jaw move with the jaw
    opening = 0.6 * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t))  # cm, 4 Hz syllable rate
    mesh = np.repeat(face[None], num_frames, axis=0)
    mesh[:, lower, 1] -= opening[:, None]
    anchor = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -28.0])  # a portrait crop: the face fills about half
    template_path = shared / POSE_TEMPLATE
    if template_path.is_file():
        template = np.load(template_path)
        period = np.concatenate([template, template[-2:0:-1]])
        relative = np.resize(period, (num_frames, 6))
        source = f"AniPortrait's pose template ({template_path}, ping-pong)"
    else:
        relative = np.zeros((num_frames, 6))
        relative[:, 0] = 6 * np.sin(2 * np.pi * 0.3 * t)
        relative[:, 1] = 10 * np.sin(2 * np.pi * 0.2 * t)
        relative[:, 2] = 3 * np.sin(2 * np.pi * 0.5 * t)
        source = f"a synthetic head sway ({template_path} absent)"
    pose = relative_to_absolute(relative, anchor)
    return LandmarkSequence(mesh=mesh, pose=pose, fps=fps, image_size=(512, 512)), source


def bench(points: np.ndarray, size: tuple[int, int], style: str, repeats: int) -> float:
    """Best-of-``repeats`` frames/s for drawing all of ``points`` in chunks of 64."""
    draw_landmarks(points[:CHUNK], size, style=style)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(points), CHUNK):
            draw_landmarks(points[i : i + CHUNK], size, style=style)
        best = max(best, len(points) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600, help="frames per run (synthetic input)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--sizes", default="512x512,256x256", help="comma-separated WIDTHxHEIGHT list")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="shared data folder")
    parser.add_argument(
        "--landmarks", help="draw this landmark file (.npz) instead of the synthetic sequence"
    )
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    if args.landmarks:
        seq, source = LandmarkSequence.load(args.landmarks), args.landmarks
    else:
        seq, source = synthetic_sequence(args.frames, args.shared)
    print(
        f"input: {seq.num_frames} frames, canonical face under {source}"
        if not args.landmarks
        else f"input: {source}"
    )
    print(
        f"one core (affinity {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}), "
        f"cv2 threads {cv2.getNumThreads()}, OpenCV {cv2.__version__}"
    )
    for text in args.sizes.split(","):
        w, h = (int(v) for v in text.lower().split("x"))
        points = seq.project((h, w))
        for style in list_styles():
            fps = bench(points, (h, w), style, args.repeats)
            print(f"{style:>12s} {w}x{h}: {fps:8.0f} frames/s")


if __name__ == "__main__":
    main()
