"""What each generation setting costs and what it gives up: one table (``lmk2video.generate``'s samplers).

Run from the project root::

    python bench/bench_generate.py --flops-only --json OUT.json   # hardware-independent part only (a minute)
    python bench/bench_generate.py                                 # + CPU time and quality (about an hour)
    python bench/bench_generate.py --gpu                           # + frames/s and memory on a GPU

Settings (:data:`SETTINGS`): ``aniportrait`` (25 DDIM steps, CFG 3.5 on every step, 16-frame windows
overlapping by 4), ``default`` (generate without options), the presets, DeepCache, and the distilled
student (``fastest``: ``preset=fastest`` on a student, 4 LCM steps without guidance).

Parts:

* **FLOPs** (hardware-independent): the sampler of each setting runs on a tiny model with the real pipeline
  code (:meth:`LandmarkVideoPipeline.denoise`), and every call of its denoising UNet is recorded (batch,
  window frames, DeepCache reuse); each distinct call is then counted with ``torch.utils.flop_counter`` on the
  full SD1.5-sized UNet with AnimateDiff motion modules and reference attention at 512x512, on the meta device
  (no compute spent). ``denoiser_evals_per_frame``: UNet passes per output frame (a guided pass counts 2);
  ``unet_tflops_per_frame``: their TFLOPs per output frame, for a ``--frames``-frame video.
* **CPU time** (``--cpu-frames`` frames at the sample model's 64x64, every setting in one run, so the ratios
  compare; seconds per generated frame, denoising included, reference and decoding too).
* **Quality** (the evaluation harness, ``python -m lmk2video.benchmark``, on the sample model and its student,
  held-out speaker KristiNoem, 3 excerpts of 64 frames): landmark distance (LMD, / inter-ocular), mouth-opening
  correlation with the real clip, identity (dlib cosine to the reference), A/V confidence, and the PSNR of each
  setting's video against the ``aniportrait`` one. Finished videos are kept under ``--out`` (resumable).
* **GPU** (``--gpu``; needs CUDA): frames/s and peak memory at 512x512, bf16, SD1.5-sized random weights, for
  ``aniportrait`` and ``fastest``, with and without ``torch.compile``, and the fraction of the GPU's dense bf16
  peak (``--peak-tflops``) the denoising reached (counted FLOPs / time).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import CONF_DIR, EXPERIMENTS_DIR  # noqa: E402
from common.logs import quiet_libraries  # noqa: E402
from lmk2video.rendering import SamplerOptions  # noqa: E402

SAMPLE_MODEL = ROOT / "models" / "sample" / "lmk2video"
SAMPLE_STUDENT = ROOT / "models" / "sample" / "lmk2video_student"

# name -> (which model: the teacher or its distilled student, sampler options, what it is)
SETTINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "aniportrait": (
        "teacher",
        {"scheduler": "ddim", "steps": 25, "cfg": 3.5, "cfg_interval": (0.0, 1.0), "cache_interval": 1},
        "AniPortrait's: 25 DDIM steps, CFG 3.5 on every step",
    ),
    "default": ("teacher", {}, "generate without options (the model's own sampler and recommendation)"),
    "balanced": ("teacher", {"preset": "balanced"}, "preset=balanced: DPM-Solver++, 10 steps"),
    "fastest_undistilled": (
        "teacher",
        {"preset": "fastest"},
        "preset=fastest on an undistilled model: DPM-Solver++ 10 steps, CFG on the first half",
    ),
    "deepcache": ("teacher", {"cache_interval": 2}, "25 DDIM steps, deep blocks every 2nd step"),
    "teacher_lcm_4": (
        "teacher",
        {"scheduler": "lcm", "steps": 4, "cfg": 1.0},
        "the undistilled model sampled as the student is (LCM, 4 steps, no guidance): where distillation starts",
    ),
    "fastest": ("student", {"preset": "fastest"}, "preset=fastest on the distilled student: its 4 LCM steps"),
    "student_2_steps": ("student", {"steps": 2}, "the distilled student in 2 steps"),
}


def model_config(name: str) -> dict[str, Any]:
    """The model config of experiment ``{name}_stage2`` (with motion modules)."""
    config = OmegaConf.load(CONF_DIR / "lmk2video" / "groups" / "model" / f"{name}.yaml")
    experiment = OmegaConf.load(EXPERIMENTS_DIR / "lmk2video" / "experiment" / f"{name}_stage2.yaml")
    config.motion_module = experiment.model.motion_module
    return OmegaConf.to_container(config, resolve=True)


def as_student(pipe: Any, steps: int = 4) -> Any:
    """``pipe`` configured as a distilled student samples (LCM scheduler, its recommendation), weights as they are."""
    from lmk2video.schedulers import make_scheduler

    scheduler = make_scheduler("lcm", pipe.scheduler.config, distilled=True)
    pipe.register_modules(scheduler=scheduler)
    pipe.register_to_config(distilled=True, sampling={"steps": steps, "cfg": 1.0})
    return pipe


def synthetic_inputs(frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
    )


def fitted(pipe: Any, values: dict[str, Any]) -> SamplerOptions:
    return SamplerOptions(**values).check().fit(pipe, strict=True)


def run_stream(pipe: Any, options: SamplerOptions, inputs: tuple[np.ndarray, ...], frames: int) -> None:
    """Generate (and decode) the first ``frames`` drawings of ``inputs`` with ``options``."""
    image, drawings, reference_drawing = inputs
    generator = torch.Generator().manual_seed(0)
    for _ in pipe.stream(
        image, drawings[:frames], reference_drawing, generator=generator, **options.denoise_kwargs()
    ):
        pass


# ----------------------------------------------------------------------------------------------- FLOPs


def unet_calls(kind: str, values: dict[str, Any], frames: int) -> tuple[list[tuple[int, int, bool]], Any]:
    """Every denoising-UNet call of one ``frames``-frame generation with these options, run on the tiny model:
    ``(batch, window frames, reused deep features)``; and the fitted options."""
    from lmk2video.building import build_pipeline

    torch.manual_seed(0)
    pipe = build_pipeline(model_config("tiny"))
    pipe.set_progress_bar_config(disable=True)
    if kind == "student":
        as_student(pipe)
    options = fitted(pipe, values)
    pipe.use_scheduler(options.scheduler)
    calls: list[tuple[int, int, bool]] = []
    unet = pipe.denoising_unet
    stored: dict[str, Any] = {}

    def before(module, args, kwargs):
        cache = kwargs.get("deep_cache")
        stored["features"] = None if cache is None else cache.features

    def after(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        cache = kwargs.get("deep_cache")
        reused = cache is not None and cache.features is not None and cache.features is stored["features"]
        calls.append((int(sample.shape[0]), int(sample.shape[2]), bool(reused)))

    hooks = [
        unet.register_forward_pre_hook(before, with_kwargs=True),
        unet.register_forward_hook(after, with_kwargs=True),
    ]
    image, drawings, reference_drawing = synthetic_inputs(frames, pipe.config.width)
    with torch.no_grad():
        reference = pipe.encode_reference(image)
        pose = pipe.encode_landmarks(drawings, reference_drawing)
        pipe.denoise(reference, pose, generator=torch.Generator().manual_seed(0), **options.denoise_kwargs())
    for hook in hooks:
        hook.remove()
    return calls, options


@functools.lru_cache(maxsize=1)
def _meta_sd15() -> tuple[Any, Any, int]:
    """The full-size denoising and reference UNets on the meta device (built once), and the context width."""
    from lmk2video.models.denoising_unet import DenoisingUNet, config_from_diffusers_unet
    from lmk2video.models.reference_unet import ReferenceUNet

    config = model_config("sd15")
    with torch.device("meta"):
        unet = DenoisingUNet(
            **config_from_diffusers_unet(config["unet"], source="bench"),
            motion_module=config["motion_module"],
        )
        reference = ReferenceUNet(**config["unet"])
    return unet, reference, int(config["unet"]["cross_attention_dim"])


def sd15_flops(batch: int, frames: int, reused: bool, size: int = 512) -> int:
    """FLOPs of one full-size denoising-UNet call (SD1.5 + AnimateDiff v2 motion modules, reference attention;
    the pose residuals are additions), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from lmk2video.models.denoising_unet import DeepCache

    unet, reference, width = _meta_sd15()
    latent = size // 8
    with torch.device("meta"):
        x = torch.zeros(batch, 4, frames, latent, latent)
        context = torch.zeros(batch, 1, width)
        bank = reference.compute_reference_hidden_states(x[:1, :, 0], context[:1], 0)
        mask = torch.tensor([False, True]) if batch == 2 else None
        cache = DeepCache()
        kwargs = {"reference_hidden_states": bank, "reference_mask": mask, "deep_cache": cache}
        if reused:
            unet(x, 500, context, **kwargs)  # stores the deep features
            cache.reuse = True
        counter = FlopCounterMode(display=False)
        with counter:
            unet(x, 500, context, **kwargs)
    return int(counter.get_total_flops())


def flops_table(frames: int, names: list[str]) -> dict[str, dict[str, Any]]:
    """The hardware-independent columns of the settings ``names`` (``aniportrait`` is always among them)."""
    costs: dict[tuple[int, int, bool], int] = {}
    table = {}
    for name in dict.fromkeys(["aniportrait", *names]):
        kind, values, what = SETTINGS[name]
        calls, options = unet_calls(kind, values, frames)
        total = 0
        for call in calls:
            if call not in costs:
                costs[call] = sd15_flops(*call)
            total += costs[call]
        table[name] = {
            "what": what,
            "model": kind,
            "scheduler": options.scheduler or ("lcm (own)" if kind == "student" else "ddim (own)"),
            "steps": options.steps,
            "cfg": options.cfg,
            "cfg_interval": list(options.cfg_interval),
            "cache_interval": options.cache_interval,
            "denoiser_evals_per_frame": sum(b * f for b, f, _ in calls) / frames,
            "unet_calls": len(calls),
            "unet_tflops_per_frame": total / frames / 1e12,
        }
    base = table["aniportrait"]["unet_tflops_per_frame"]
    for row in table.values():
        row["fewer_flops_than_aniportrait"] = base / row["unet_tflops_per_frame"]
    return table


# ----------------------------------------------------------------------------------------------- CPU time


def cpu_times(frames: int, teacher: Path, student: Path | None, names: list[str]) -> dict[str, float]:
    """Seconds per generated frame of each setting on the sample models, one after the other in this process."""
    from lmk2video.pipeline import load_pipeline

    pipes = {"teacher": load_pipeline(teacher)}
    if student is not None:
        pipes["student"] = load_pipeline(student)
    out = {}
    for name in names:
        kind, values, _ = SETTINGS[name]
        if kind not in pipes:
            continue
        pipe = pipes[kind]
        pipe.set_progress_bar_config(disable=True)
        options = fitted(pipe, values)
        pipe.use_scheduler(options.scheduler)
        inputs = synthetic_inputs(frames, pipe.config.width)
        start = time.perf_counter()
        run_stream(pipe, options, inputs, frames)
        out[name] = (time.perf_counter() - start) / frames
        print(f"cpu: {name}: {out[name]:.3f} s per frame", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------- quality


def overrides(values: dict[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, tuple | list):
            value = "[" + ",".join(str(v) for v in value) + "]"
        out.append(f"{key}={value}")
    return out


def quality(
    out: Path, teacher: Path, student: Path | None, frames: int, clips: int, names: list[str]
) -> dict[str, dict]:
    """The evaluation harness on every setting (resumable: finished videos are kept)."""
    from lmk2video.pipeline import LandmarkVideoPipeline
    from lmk2video.schedulers import SCHEDULERS

    models = {"teacher": teacher, "student": student}
    pipes = {kind: LandmarkVideoPipeline.from_pretrained(path) for kind, path in models.items() if path}
    results: dict[str, dict] = {}
    done: dict[tuple, str] = {}  # (model, fitted options) -> the setting that rendered them
    folders: dict[str, Path] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in names:
        kind, values, _ = SETTINGS[name]
        if models[kind] is None:
            continue
        options = fitted(pipes[kind], values)
        if options.scheduler is None:  # the model's own sampler: name it, so that "ddim" and "own DDIM" match
            own = type(pipes[kind].scheduler).__name__
            options = dataclasses.replace(
                options,
                scheduler=next((n for n, (c, extra) in SCHEDULERS.items() if c == own and not extra), own),
            )
        key = (kind, tuple(sorted(vars(options).items())))
        if key in done:  # the same sampling as an earlier setting: the same videos
            results[name], folders[name] = dict(results[done[key]]), folders[done[key]]
            continue
        done[key] = name
        folder = folders[name] = out / name
        command = [
            sys.executable, "-m", "lmk2video.benchmark", f"model={models[kind]}", f"out={folder}",
            f"frames={frames}", f"max_clips={clips}", *overrides(values),
        ]  # fmt: skip
        print(f"quality: {name}: {' '.join(command[2:])}", file=sys.stderr)
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        report = json.loads((folder / "report.json").read_text())["systems"]["ours"]["summary"]
        results[name] = {
            key: report[key]["mean"]
            for key in ("lmd_face", "lmd_mouth", "mouth_corr", "identity_cosine", "av_confidence", "psnr")
            if key in report and report[key].get("mean") is not None
        }
    for name in results:
        results[name]["psnr_vs_aniportrait"] = psnr_against(folders[name], folders["aniportrait"])
    return results


def psnr_against(folder: Path, base: Path) -> float:
    """Mean per-frame PSNR (the evaluation's :func:`common.evaluation.pixels.psnr`) of a benchmark output's
    videos against those of the same excerpts in ``base``."""
    from common.evaluation.media import read_clip
    from common.evaluation.pixels import psnr

    values = []
    for video in sorted((folder / "systems" / "ours").glob("*.mp4")):
        ours = read_clip(video, audio=False).frames
        theirs = read_clip(base / "systems" / "ours" / video.name, audio=False).frames
        values += [psnr(a, b) for a, b in zip(ours, theirs, strict=True)]
    return float(np.mean(values))


# ----------------------------------------------------------------------------------------------- GPU


def device_runs(
    flops: dict[str, dict],
    *,
    device: str = "cuda",
    model: str = "sd15",
    dtype: torch.dtype = torch.bfloat16,
    frames: int = 64,
    peak_tflops: float | None = None,
    compile_modes: tuple[bool, ...] = (False, True),
) -> dict[str, dict]:
    """frames/s and peak memory of ``aniportrait`` and ``fastest`` (random weights of the ``model`` config,
    channels-last), with and without ``torch.compile``; on a GPU also the fraction of ``peak_tflops`` reached."""
    from lmk2video.building import build_pipeline
    from lmk2video.rendering import speed_up

    target = torch.device(device)
    cuda = target.type == "cuda"
    out = {}
    for compiled in compile_modes:
        for name in ("aniportrait", "fastest"):
            kind, values, _ = SETTINGS[name]
            torch.manual_seed(0)
            with torch.no_grad(), target:
                pipe = build_pipeline(model_config(model))
            pipe = pipe.to(device=target, dtype=dtype, silence_dtype_warnings=True)
            pipe.set_progress_bar_config(disable=True)
            if kind == "student":
                as_student(pipe)
            speed_up(pipe, compile=compiled, channels_last=True)
            options = fitted(pipe, values)
            pipe.use_scheduler(options.scheduler)
            inputs = synthetic_inputs(frames, pipe.config.width)
            run_stream(
                pipe, options, inputs, min(frames, options.context_frames)
            )  # warm-up (and compilation)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            run_stream(pipe, options, inputs, frames)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            row = {"frames_per_second": frames / seconds}
            if cuda:
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if model == "sd15":
                counted = flops[name]["unet_tflops_per_frame"] * frames / seconds
                row["unet_tflops_per_second"] = counted
                if peak_tflops:
                    row["fraction_of_peak"] = counted / peak_tflops
            out[f"{name}{'_compiled' if compiled else ''}"] = row
            del pipe
            if cuda:
                torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------------- table


def table(results: dict[str, Any]) -> str:
    flops, cpu, qual = results["flops"], results.get("cpu_seconds_per_frame", {}), results.get("quality", {})
    gpu = results.get("gpu", {})
    head = ["setting", "UNet evals/frame", "UNet TFLOPs/frame", "x fewer FLOPs", "CPU s/frame", "CPU speed-up",
            "LMD face", "mouth r", "identity", "A/V conf", "PSNR vs aniportrait", "GPU fps (compiled)"]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for name, row in flops.items():
        q = qual.get(name, {})
        fps = gpu.get(name, {}).get("frames_per_second")
        fps_c = gpu.get(f"{name}_compiled", {}).get("frames_per_second")
        cells = [
            name,
            num(row["denoiser_evals_per_frame"], ".1f"),
            num(row["unet_tflops_per_frame"], ".1f"),
            num(row["fewer_flops_than_aniportrait"], ".1f"),
            num(cpu.get(name), ".3f"),
            num(cpu["aniportrait"] / cpu[name] if name in cpu and "aniportrait" in cpu else None, ".2f"),
            num(q.get("lmd_face"), ".4f"),
            num(q.get("mouth_corr"), ".2f"),
            num(q.get("identity_cosine"), ".3f"),
            num(q.get("av_confidence"), ".3f"),
            num(q.get("psnr_vs_aniportrait"), ".1f"),
            "-" if fps is None else f"{fps:.1f} ({num(fps_c, '.1f')})",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flops-only", action="store_true", help="only the hardware-independent part")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--frames", type=int, default=120, help="video length of the FLOP count (4 s at 30 fps)"
    )
    parser.add_argument("--cpu-frames", type=int, default=48, help="frames of each CPU timing")
    parser.add_argument(
        "--teacher", type=Path, default=SAMPLE_MODEL, help="the model of CPU time and quality"
    )
    parser.add_argument(
        "--student",
        type=Path,
        default=SAMPLE_STUDENT,
        help="its distilled student (rows skipped when absent)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench_generate", help="quality videos"
    )
    parser.add_argument("--quality-frames", type=int, default=64)
    parser.add_argument("--quality-clips", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true", help="skip the evaluation harness")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU timing")
    parser.add_argument("--gpu", action="store_true", help="also frames/s and memory on a CUDA GPU")
    parser.add_argument("--gpu-frames", type=int, default=64)
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100: 989)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}"
    )
    args = parser.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["aniportrait", *(n for n in args.settings.split(",") if n and n != "aniportrait")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    student = args.student if (args.student / "model_index.json").is_file() else None
    results: dict[str, Any] = {"torch": torch.__version__, "frames": args.frames}
    results["settings"] = flops_table(args.frames, names)
    results["flops"] = results["settings"]
    if not args.flops_only:
        if not args.no_cpu:
            results["cpu_threads"] = torch.get_num_threads()
            results["cpu_seconds_per_frame"] = cpu_times(args.cpu_frames, args.teacher, student, names)
        if not args.no_quality:
            results["quality"] = quality(
                args.out, args.teacher, student, args.quality_frames, args.quality_clips, names
            )
        if args.gpu:
            if not torch.cuda.is_available():
                raise SystemExit("--gpu needs a CUDA device")
            results["gpu_device"] = torch.cuda.get_device_name()
            results["gpu"] = device_runs(
                results["settings"], frames=args.gpu_frames, peak_tflops=args.peak_tflops
            )
    print(table(results))
    if student is None and not args.flops_only:
        print(f"\n(no student at {args.student}: its rows have FLOPs only)")
    if args.json is not None:
        payload = {k: v for k, v in results.items() if k != "flops"}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
