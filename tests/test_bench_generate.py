"""bench/bench_generate.py: the hardware-independent FLOP count (through the CLI, as a user runs it), the CPU
timing and the GPU routine (run here on the CPU with the tiny model), and the one table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench import bench_generate as bench
from tests.conftest import PROJECT_ROOT
from tests.l2v_models import single_thread, tiny_pipeline


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.mark.slow
def test_flops_only_json_counts_the_real_sampler_calls(tmp_path) -> None:
    out = tmp_path / "flops.json"
    result = subprocess.run(
        [sys.executable, "bench/bench_generate.py", "--flops-only", "--json", str(out), "--frames", "32",
         "--settings", "fastest,deepcache", "--threads", "1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads(out.read_text())["settings"]
    assert set(settings) == {"aniportrait", "fastest", "deepcache"}
    ani, fast, cache = settings["aniportrait"], settings["fastest"], settings["deepcache"]
    # 32 frames in 16-frame windows overlapping by 4: windows at 0, 12, 16 (48 frame passes), so 25 guided
    # steps are 25 * 2 * 48 / 32 = 75 passes per frame; the student's 4 unguided steps 4 * 48 / 32 = 6.
    assert ani["denoiser_evals_per_frame"] == 75 and ani["unet_calls"] == 75
    assert fast["denoiser_evals_per_frame"] == 6 and fast["steps"] == 4 and fast["cfg"] == 1.0
    # The same UNet: FLOPs scale with the passes (a guided pass is two); the goal of >= 10x fewer is met.
    assert fast["fewer_flops_than_aniportrait"] == pytest.approx(75 / 6, rel=0.01)
    assert fast["fewer_flops_than_aniportrait"] >= 10
    assert (
        0.9 < ani["unet_tflops_per_frame"] / ani["denoiser_evals_per_frame"] < 2
    )  # ~1.25 TFLOP per 512^2 pass
    # DeepCache runs the same passes, about half of them shallow only: fewer FLOPs.
    assert cache["denoiser_evals_per_frame"] == 75 and 1.2 < cache["fewer_flops_than_aniportrait"] < 2
    assert "| fastest |" in result.stdout


@pytest.mark.slow
def test_cpu_times_and_the_device_routine_run_on_the_tiny_model(tmp_path) -> None:
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    tiny_pipeline(motion=True).save_pretrained(teacher)
    bench.as_student(tiny_pipeline(motion=True)).save_pretrained(student)
    names = ["aniportrait", "balanced", "fastest"]
    times = bench.cpu_times(6, teacher, student, names)
    assert set(times) == set(names) and all(t > 0 for t in times.values())
    flops = {name: {"unet_tflops_per_frame": 1.0} for name in names}
    runs = bench.device_runs(
        flops, device="cpu", model="tiny", dtype=torch.float32, frames=6, compile_modes=(False,)
    )
    assert set(runs) == {"aniportrait", "fastest"} and all(r["frames_per_second"] > 0 for r in runs.values())
    rows = {name: {**row, "denoiser_evals_per_frame": 1.0, "fewer_flops_than_aniportrait": 1.0}
            for name, row in flops.items()}  # fmt: skip
    text = bench.table({"flops": rows, "cpu_seconds_per_frame": times, "gpu": runs})
    assert text.count("\n") == len(names) + 1 and "| fastest | 1.0 |" in text


def test_window_bench_borders_and_costs() -> None:
    from bench import bench_windows

    # 40 frames, windows 16/4: [0,16) [12,28) [24,40): borders next to 11|12, 15|16, 23|24, 27|28.
    assert bench_windows.border_frames(40, 4).tolist() == [11, 12, 15, 16, 23, 24, 27, 28]
    assert bench_windows.border_frames(16, 4).tolist() == []
    assert bench_windows.passes_per_frame(40, 4, False, 10) == 48 / 40
    assert bench_windows.passes_per_frame(40, 0, False, 10) == 48 / 40  # [0,16) [16,32) [24,40)
    assert bench_windows.passes_per_frame(64, 0, False, 10) == 1.0
    # Shifted grids add a window on most steps.
    assert 1.0 < bench_windows.passes_per_frame(64, 4, True, 10) < 1.6
