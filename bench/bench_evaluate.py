"""Speed of ``common.evaluate`` on this machine: frames per second of each part, on one real clip.

Run from the project root: ``python bench/bench_evaluate.py [--frames 150] [--clip KristiNoem]``. Scores the
first frames of a shared talking clip against themselves (the ``real`` column of a report) and reports,
in one run, the seconds and frames/s of each part: reading, MediaPipe on every frame, landmark and sync
metrics, PSNR/SSIM (whole frame and face), dlib identity, and the whole clip. Needs ``../shared``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--clip", default="KristiNoem")
    args = parser.parse_args()
    shared = ROOT.parent / "shared" / "data"
    os.environ.setdefault(
        "TALKING_PORTRAIT_FACE_MODEL", str(shared / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")
    )

    from common.detect import FaceDetector
    from common.evaluation.faces import track_faces
    from common.evaluation.identity import FaceDescriptor, identity_scores
    from common.evaluation.landmarks import landmark_scores
    from common.evaluation.media import read_clip
    from common.evaluation.pixels import pixel_scores
    from common.evaluation.sync import sync_scores

    times = {}
    t = time.perf_counter()
    clip = read_clip(
        shared / "talking" / f"{args.clip}.mp4", audio_path=shared / "talking" / f"{args.clip}.wav"
    )
    clip = clip.truncated(args.frames)
    times["read (decode, audio)"] = time.perf_counter() - t
    with FaceDetector(None, mode="image") as detector:
        t = time.perf_counter()
        track = track_faces(clip.frames, detector)
        times["MediaPipe, every frame"] = time.perf_counter() - t
    t = time.perf_counter()
    landmark_scores(track, track)
    sync_scores(track.mouth_opening(), clip.audio, clip.fps)
    times["landmark + sync metrics"] = time.perf_counter() - t
    t = time.perf_counter()
    pixel_scores(clip.frames, clip.frames, track.boxes(0.1), "clip")
    times["PSNR/SSIM, frame + face"] = time.perf_counter() - t
    describe = FaceDescriptor()
    boxes = track.boxes()
    t = time.perf_counter()
    identity_scores(describe, clip.frames, boxes, describe(clip.frames[0], boxes[0]))
    times["dlib identity"] = time.perf_counter() - t
    total = sum(times.values())
    h, w = clip.size
    print(
        f"{args.clip}: {clip.num_frames} frames {w}x{h}, torch threads {__import__('torch').get_num_threads()}"
    )
    for name, seconds in {**times, "whole clip": total}.items():
        print(f"  {name:26s} {seconds:7.2f} s  {clip.num_frames / seconds:8.1f} frames/s")


if __name__ == "__main__":
    main()
