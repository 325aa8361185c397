"""Throughput of the two engines (README "On a cluster", docs/cluster.md): ``engine=local`` against ``engine=ray``.

1. **Preprocessing** the shared talking clips (``../shared/data/talking``, 9 clips, 2.9 minutes of video) into
   fresh folders, twice each engine, alternating (local, ray, local, ray), so that a load from elsewhere on the
   machine falls on both. Both use every CPU of this machine (``num_workers`` = CPUs; Ray started with as many,
   one task per clip). The Ray instance is started once, before, and its start-up is reported on its own.
   Reported: clips a minute and video-seconds processed a second per engine, and Ray's overhead per clip:
   ``(ray time - local time) / clips``, as a share of the local time per clip.
2. **Generation** cost (``--generate``, slow): ``generate_batch`` of ``--items`` items of ``--frames`` frames
   with the sample model, default sampler, one worker: seconds per frame and clips an hour per worker, and the
   same through one Ray actor.

The scaling argument: both commands are embarrassingly parallel over items (no communication between them);
with N machines of W workers each, throughput is N x W x (one worker's rate) as long as the shared storage
keeps up and there are at least N x W items; Ray's overhead per item (measured here) is the price of the
cluster.

``python bench/bench_engines.py [--json OUT.json] [--generate]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"


def preprocess_once(
    engine: str, videos: Path, out: Path, face_model: Path, workers: int
) -> tuple[float, dict]:
    from common.corpus import PreprocessSettings, preprocess

    start = time.perf_counter()
    report = preprocess(
        PreprocessSettings(
            input_dir=str(videos),
            output_dir=str(out),
            face_model=str(face_model),
            num_workers=workers,
            engine=engine,
            progress=False,
        )
    )
    return time.perf_counter() - start, report


def bench_preprocess(work: Path, rounds: int) -> dict:
    from common.engines import RaySettings, connect
    from common.index import load_index

    videos = SHARED / "talking"
    face_model = SHARED / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    connect(RaySettings(num_cpus=cpus), threads=1)
    startup = time.perf_counter() - start
    times: dict[str, list[float]] = {"local": [], "ray": []}
    seconds_of_video = None
    clips = None
    for r in range(rounds):
        for engine in ("local", "ray"):
            out = work / f"{engine}{r}"
            elapsed, report = preprocess_once(engine, videos, out, face_model, cpus)
            times[engine].append(elapsed)
            index = load_index(out)
            clips = len(index)
            seconds_of_video = sum(c.duration for c in index)
            assert report["accepted"] == clips and not report["rejected"], report
            print(f"  round {r + 1} {engine:5s}: {elapsed:7.1f} s for {clips} clips", flush=True)
            shutil.rmtree(out)
    local, ray = sum(times["local"]) / rounds, sum(times["ray"]) / rounds
    per_clip_local = local / clips
    overhead = (ray - local) / clips
    return {
        "cpus": cpus,
        "clips": clips,
        "video_seconds": round(seconds_of_video, 2),
        "ray_startup_s": round(startup, 2),
        "seconds": {k: [round(v, 2) for v in t] for k, t in times.items()},
        "clips_per_minute": {"local": round(60 * clips / local, 2), "ray": round(60 * clips / ray, 2)},
        "video_seconds_per_second": {
            "local": round(seconds_of_video / local, 3),
            "ray": round(seconds_of_video / ray, 3),
        },
        "ray_overhead_per_clip_s": round(overhead, 3),
        "ray_overhead_share": round(overhead / per_clip_local, 4),
        "per_worker_clip_seconds_local": round(per_clip_local * cpus, 2),
    }


def bench_generate(work: Path, items: int, frames: int) -> dict:
    from common.detect import extract
    from common.edit import trim
    from common.engines import RaySettings
    from lmk2video.batch import read_manifest, run_batch

    model = ROOT / "models" / "sample" / "lmk2video"
    clip = work / "clip.npz"
    face_model = SHARED / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    sequence = extract(SHARED / "talking" / "KristiNoem.mp4", model_path=face_model, progress=False)
    trim(sequence, 1, 1 + frames).save(clip)
    shutil.copyfile(ROOT / "examples" / "sample" / "portrait_kristi.png", work / "portrait.png")
    manifest = work / "manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"item{i}", "reference": "portrait.png", "landmarks": "clip.npz", "seed": i})
            + "\n"
            for i in range(items)
        )
    )
    result = {}
    for engine in ("local", "ray"):
        base = {
            "model": str(model),
            "device": "cpu",
            "dtype": "fp32",
            "seed": 42,
            "progress": False,
            "face_model": str(face_model),
        }
        start = time.perf_counter()
        summary = run_batch(
            read_manifest(manifest, None, 0),
            base,
            work / f"out_{engine}",
            engine=engine,
            ray_settings=RaySettings(num_workers=1, num_cpus_per_task=os.cpu_count() or 1),
            threads=os.cpu_count(),
            progress=False,
        )
        elapsed = time.perf_counter() - start
        assert summary["done"] == items, summary
        result[engine] = {
            "seconds": round(elapsed, 2),
            "seconds_per_frame": round(elapsed / (items * frames), 3),
            "clips_per_hour_per_worker": round(3600 * items / elapsed, 2),
        }
        print(f"  generate {engine:5s}: {elapsed:7.1f} s for {items} x {frames} frames", flush=True)
    return {"items": items, "frames": frames, "model": "models/sample/lmk2video", **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--generate", action="store_true", help="also measure generation (minutes on a CPU)")
    p.add_argument("--items", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if not SHARED.is_dir():
        sys.exit("needs ../shared/data (the shared talking clips) beside the checkout")
    os.environ.setdefault("GLOG_minloglevel", "2")
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        work = Path(tmp)
        print(f"preprocessing the shared clips, {args.rounds} rounds per engine:", flush=True)
        figures = {"preprocess": bench_preprocess(work, args.rounds)}
        if args.generate:
            print("generation with the sample model:", flush=True)
            figures["generate"] = bench_generate(work, args.items, args.frames)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
