"""`common.lmk extract` throughput against MediaPipe's bare detection, measured in one run.

    python bench/bench_extract.py [--clips DIR] [--model FILE] [--repeats N]

Bare detection: PyAV decoding + ``FaceLandmarker.detect_for_video`` with the same options
(blendshapes and matrices on, one face). Extract: our whole ``extract_video`` + saving the file
(decoding, detection, conversion, gap policy, geometry, validation, atomic write). Runs alternate
per clip so machine noise hits both alike; the ratio is reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import mediapipe as mp  # noqa: E402
from mediapipe.tasks.python import BaseOptions, vision  # noqa: E402

from common.detect import extract_video  # noqa: E402


def bare_detection(clip: Path, model: str) -> int:
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=model),
        running_mode=vision.RunningMode.VIDEO,
        num_faces=1,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    n = 0
    with vision.FaceLandmarker.create_from_options(options) as landmarker, av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=frame.to_ndarray(format="rgb24"))
            landmarker.detect_for_video(image, round(frame.time * 1000))
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=str(ROOT.parent / "shared/data/talking"))
    parser.add_argument(
        "--model", default=str(ROOT.parent / "shared/data/mediapipe/face_landmarker_v2_with_blendshapes.task")
    )
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    bare_t = ours_t = 0.0
    frames = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for clip in clips:
                t0 = time.perf_counter()
                n = bare_detection(clip, args.model)
                t1 = time.perf_counter()
                extract_video(clip, model_path=args.model, progress=False).save(Path(tmp) / "x.npz")
                t2 = time.perf_counter()
                bare_t += t1 - t0
                ours_t += t2 - t1
                frames += n
                print(
                    f"{clip.stem:22s} {n:4d} frames  bare {n / (t1 - t0):6.1f} fps  extract {n / (t2 - t1):6.1f} fps"
                )
    print(
        f"TOTAL {frames} frames: bare detection {frames / bare_t:.1f} fps, extract {frames / ours_t:.1f} fps, "
        f"extract/bare time ratio {ours_t / bare_t:.3f} (overhead {100 * (ours_t / bare_t - 1):+.1f} %)"
    )


if __name__ == "__main__":
    main()
