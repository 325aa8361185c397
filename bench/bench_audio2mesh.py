"""Audio2Mesh inference time with a wav2vec2-base-sized encoder on this CPU.

    python bench/bench_audio2mesh.py [--seconds 60] [--threads 2] [--repeats 3]

Model: ``Audio2MeshModel`` with a randomly initialised ``Wav2Vec2Config()`` encoder (the base
architecture of ``facebook/wav2vec2-base-960h``: 7-layer CNN, 12 transformer layers of 768) and
AniPortrait's head (512 hidden, 1404 outputs), fp32, ``torch.inference_mode``. Input: seeded noise
of ``--seconds`` at 16 kHz (the cost does not depend on the content). Reported: the whole forward
pass, and its split into the CNN feature encoder and the rest (resampling, projection,
transformer, head), minimum and median over ``--repeats`` runs. The machine may be shared: each
run prints its CPU time / wall time; about the thread count means it had the cores to itself.

Also printed: the arithmetic the pass needs (multiply-adds counted from the layer shapes) and the
machine's measured fp32 matrix-multiply throughput, i.e. the lowest time this arithmetic can take.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio2lmk.models.audio2mesh import Audio2MeshModel  # noqa: E402
from common.audio import SAMPLE_RATE  # noqa: E402


def build_model(window_seconds: float) -> Audio2MeshModel:
    from transformers import Wav2Vec2Config

    torch.manual_seed(0)
    encoder = {"type": "wav2vec2", "config": Wav2Vec2Config().to_dict(), "window_seconds": window_seconds}
    return Audio2MeshModel(encoder=encoder, head_hidden_dims=(512,), head_activation=None).eval()


def gemm_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def macs(model: Audio2MeshModel, num_samples: int, frames: int) -> tuple[float, float]:
    """Multiply-adds of (CNN, everything else) for one clip, from the layer shapes."""
    config = model.audio_encoder.model.config
    cnn, length, channels = 0.0, num_samples, 1
    for dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        cnn += length * dim * channels * kernel
        channels = dim
    hidden, inner = config.hidden_size, config.intermediate_size
    window, context = model.audio_encoder.window_frames(num_samples, frames)
    if frames <= window + 2 * context:  # the windows run_windowed uses
        lengths = [frames]
    else:
        pieces = math.ceil(frames / window)
        bounds = [round(i * frames / pieces) for i in range(pieces + 1)]
        lengths = [min(frames, e + context) - max(0, s - context) for s, e in itertools.pairwise(bounds)]
    groups = config.num_conv_pos_embedding_groups
    rest = frames * (channels * hidden + hidden * 512 + 512 * 1404)  # projection and head
    for n in lengths:
        per_layer = n * (4 * hidden * hidden + 2 * hidden * inner) + 2 * n * n * hidden
        rest += (
            config.num_hidden_layers * per_layer
            + n * hidden * (hidden // groups) * config.num_conv_pos_embeddings
        )
    return cnn, rest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--window-seconds", type=float, default=30.0, help="transformer window (the encoder's default is 30)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.window_seconds)
    num_samples = round(args.seconds * SAMPLE_RATE)
    audio = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
    frames = model.num_frames(num_samples)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(f"{args.seconds:.0f} s of audio -> {frames} frames at {model.config.fps:g} fps")

    totals, cnn_times = [], []
    with torch.inference_mode():
        model(audio[:, : 2 * SAMPLE_RATE])  # warm-up
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            mesh = model(audio)
            totals.append(time.perf_counter() - start)
            # CPU time / wall time well below the thread count means other processes took the cores.
            print(
                f"  run: {totals[-1]:.2f} s, cpu/wall {(time.process_time() - cpu) / totals[-1]:.2f}",
                flush=True,
            )
            start = time.perf_counter()
            model.audio_encoder.cnn_features(audio)
            cnn_times.append(time.perf_counter() - start)
    assert mesh.shape == (1, frames, 468, 3)
    cnn_macs, rest_macs = macs(model, num_samples, frames)
    peak = max(gemm_gflops() for _ in range(3))
    print(f"forward: min {min(totals):.2f} s, median {statistics.median(totals):.2f} s ({args.repeats} runs)")
    print(f"  CNN feature encoder alone: min {min(cnn_times):.2f} s")
    print(f"  everything else: about {min(totals) - min(cnn_times):.2f} s")
    print(
        f"arithmetic: {2 * cnn_macs / 1e9:.0f} GFLOP CNN + {2 * rest_macs / 1e9:.0f} GFLOP rest; "
        f"fp32 GEMM here {peak:.0f} GFLOP/s -> at least {2 * (cnn_macs + rest_macs) / 1e9 / peak:.1f} s"
    )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
