"""Audio2Pose generation time: key/value cache vs recomputing the whole prefix for every frame.

    python bench/bench_audio2pose.py [--seconds 10 60 300] [--threads 2] [--budget 300]

Model: AniPortrait's pose decoder size (hidden 512, 8 layers, 8 heads, feed-forward 1024, sinusoidal
positions, ALiBi span 600, aligned cross-attention) with random weights, at 30 fps. The audio
encoder is not timed: the decoder memory is a seeded random ``(1, T, 512)`` tensor.

* cached: ``generate(memory=..., use_cache=True)``, the whole clip, measured for every length.
* recomputed: ``generate(..., use_cache=False)`` re-runs the decoder over the whole prefix for
  every frame (what AniPortrait's ``infer`` loop does). It is measured in full where it fits in
  ``--budget`` seconds. Otherwise the cost of single steps (one ``decode`` over a ``t``-frame
  prefix) is measured at several ``t``, a quadratic ``a + b t + c t^2`` is fitted, and the total
  is its sum over ``t = 1..T``: printed as EXTRAPOLATED. The same fit is checked against the
  measured total of the shortest length.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio2lmk.models.audio2pose import Audio2PoseModel  # noqa: E402

FPS = 30


def build_model() -> Audio2PoseModel:
    torch.manual_seed(0)
    encoder = {"type": "mel", "n_mels": 16, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32}
    return Audio2PoseModel(
        encoder=encoder,  # not used: the benchmark feeds decoder memory directly
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        ffn_dim=1024,
        positional_encoding="sinusoidal",
        attention_span=600,
        cross_attention_window=0,
    ).eval()


def memory_for(frames: int) -> torch.Tensor:
    return torch.randn(1, frames, 512, generator=torch.Generator().manual_seed(frames))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_cost(model: Audio2PoseModel, memory: torch.Tensor, prefix: int) -> float:
    """Seconds of one recompute step: the decoder over a ``prefix``-frame prefix (memory projected once)."""
    pose_prev = torch.zeros(1, prefix, 6)
    style = torch.zeros(1, dtype=torch.long)
    memory_kv = [layer.cross_attn.project_memory(memory) for layer in model.layers]
    with torch.no_grad():
        return min(timed(lambda: model.decode(memory, pose_prev, style, memory_kv)) for _ in range(2))


def fitted_total(costs: dict[int, float], frames: int) -> float:
    t = np.array(sorted(costs), dtype=float)
    a, b, c = np.polynomial.polynomial.polyfit(t, [costs[int(x)] for x in t], 2)
    n = np.arange(1, frames + 1, dtype=float)
    return float(np.sum(a + b * n + c * n * n))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 300])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=300.0, help="longest full recompute run, seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    model.generate(memory=memory_for(30), style=0)  # warm-up

    rows = []
    measured_total: dict[int, float] = {}
    sampled: dict[int, dict[int, float]] = {}
    for seconds in sorted(args.seconds):
        frames = round(seconds * FPS)
        memory = memory_for(frames)
        cached = timed(lambda memory=memory: model.generate(memory=memory, style=0))
        # Recompute step costs grow with the prefix; estimate the full run before starting it.
        samples = sorted({max(1, frames // 8), frames // 4, frames // 2, (3 * frames) // 4, frames})
        if frames > 4000:  # one decode over a 9000-frame prefix needs ~10 GB; sample up to 4000
            samples = [s for s in samples if s <= 4000] + [3000, 4000]
        costs = {t: step_cost(model, memory, t) for t in sorted(set(samples))}
        sampled[frames] = costs
        estimate = fitted_total(costs, frames)
        if estimate <= args.budget:
            total = timed(lambda memory=memory: model.generate(memory=memory, style=0, use_cache=False))
            measured_total[frames] = total
            label = "measured"
        else:
            total, label = estimate, "EXTRAPOLATED (quadratic fit of sampled step costs)"
        rows.append((seconds, frames, cached, total, label, estimate))
        print(
            f"{seconds:6.0f} s {frames:6d} frames: cached {cached:8.2f} s ({1000 * cached / frames:.2f} ms/frame), "
            f"recomputed {total:10.1f} s [{label}], ratio {total / cached:8.1f}x",
            flush=True,
        )

    print("\nscaling of the cached decoder (time per frame should be flat):")
    for seconds, frames, cached, *_ in rows:
        print(f"  {seconds:6.0f} s: {1000 * cached / frames:.3f} ms/frame")
    for frames, total in measured_total.items():
        print(
            f"fit check at {frames} frames: extrapolation {fitted_total(sampled[frames], frames):.1f} s vs measured "
            f"{total:.1f} s"
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
