"""Speed and memory of lmk2video generation (LandmarkVideoPipeline), at full SD1.5 shapes or tiny.

Run from the project root::

    python bench/bench_generate.py                       # GPU if available: full size, bf16
    python bench/bench_generate.py --device cpu          # CPU: the tiny model's step time
    python bench/bench_generate.py --device cpu --full-step   # + ONE full-size step (minutes, ~12 GB RAM)

Full size = the ``sd15`` model config with AnimateDiff v2 motion modules (``experiments/lmk2video/
experiment/sd15_stage2.yaml``), randomly initialised (speed and memory do not depend on the weights),
512x512, 25 DDIM steps, classifier-free guidance 3.5 (batched: 2 x 16 frames per UNet call), 16-frame
windows overlapping by 4. It runs the real pipeline stages: reference encoding (VAE + CLIP + reference
UNet), pose features of every frame, the windowed denoising loop, chunked VAE decoding.

Reported: seconds per stage, seconds per output frame and frames/s, the denoising UNet's FLOPs per window
call (counted with ``torch.utils.flop_counter`` on the meta device, so no compute is spent counting), the
FLOP rate reached during denoising, also as the brief's "SD1.5-equivalent" rate (0.67 TFLOP per frame per
UNet forward at 512x512), and on a GPU the fraction of its dense bf16 peak (``--peak-tflops``, default
989 for an H100 SXM) and the peak memory (``torch.cuda.max_memory_allocated``). On the CPU the peak memory
is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
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
from lmk2video.building import build_pipeline  # noqa: E402
from lmk2video.context import context_windows  # noqa: E402
from lmk2video.pipeline import LandmarkVideoPipeline  # noqa: E402

SD15_TFLOP_PER_FRAME = 0.67  # one SD1.5 UNet forward at 512x512 (64x64 latents), the brief's figure


def model_config(name: str) -> dict[str, Any]:
    """The model config of experiment ``{name}_stage2`` (with motion modules)."""
    config = OmegaConf.load(CONF_DIR / "lmk2video" / "groups" / "model" / f"{name}.yaml")
    experiment = OmegaConf.load(EXPERIMENTS_DIR / "lmk2video" / "experiment" / f"{name}_stage2.yaml")
    config.motion_module = experiment.model.motion_module
    return OmegaConf.to_container(config, resolve=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args, **kwargs) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - start


def unet_flops_per_call(config: dict[str, Any], frames: int, batch: int, size: int) -> int:
    """FLOPs of one denoising-UNet call (batch x frames at size x size pixels, with reference attention,
    the uncond half masked, pose residuals), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from lmk2video.models.denoising_unet import DenoisingUNet, config_from_diffusers_unet
    from lmk2video.models.reference_unet import ReferenceUNet

    latent = size // 8
    with torch.device("meta"):
        unet = DenoisingUNet(
            **config_from_diffusers_unet(config["unet"], source="bench"),
            motion_module=config["motion_module"],
        )
        reference = ReferenceUNet(**config["unet"])
        x = torch.zeros(batch, 4, frames, latent, latent)
        context = torch.zeros(batch, 1, config["unet"]["cross_attention_dim"])
        bank = reference.compute_reference_hidden_states(x[:1, :, 0], context[:1], 0)
        mask = torch.tensor([False, True][:batch])
        counter = FlopCounterMode(display=False)
        with counter:
            unet(x, 500, context, reference_hidden_states=bank, reference_mask=mask)
    return int(counter.get_total_flops())


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build(name: str, device: torch.device, dtype: torch.dtype) -> LandmarkVideoPipeline:
    torch.manual_seed(0)
    init_device = device if device.type == "cuda" else torch.device("cpu")
    with torch.no_grad(), init_device:
        pipe = build_pipeline(model_config(name))
    pipe = pipe.to(device=device, dtype=dtype, silence_dtype_warnings=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(frames: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
    )


def run_generation(pipe, args, device: torch.device) -> dict[str, Any]:
    """Every stage of one generation of ``args.frames`` frames, timed."""
    size = pipe.config.width
    image, drawings, reference_drawing = inputs(args.frames, size)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        reference, t_reference = timed(device, pipe.encode_reference, image)
        pose, t_pose = timed(device, pipe.encode_landmarks, drawings, reference_drawing)
        latents, t_denoise = timed(
            device,
            pipe.denoise,
            reference,
            pose,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            generator=generator,
            context_frames=args.context_frames,
            context_overlap=args.context_overlap,
        )
        _, t_decode = timed(device, lambda: list(pipe.decode(latents, args.decode_chunk)))
    windows = len(context_windows(args.frames, args.context_frames, args.context_overlap))
    total = t_reference + t_pose + t_denoise + t_decode
    return {
        "frames": args.frames,
        "size": size,
        "steps": args.steps,
        "cfg": args.cfg,
        "windows": windows,
        "seconds": {
            "reference": t_reference,
            "pose_features": t_pose,
            "denoise": t_denoise,
            "decode": t_decode,
            "total": total,
        },
        "seconds_per_step": t_denoise / args.steps,
        "seconds_per_window_step": t_denoise / (args.steps * windows),
        "seconds_per_frame": total / args.frames,
        "frames_per_second": args.frames / total,
        "peak_memory_gib": peak_memory_gib(device),
    }


def flop_rates(
    result: dict[str, Any], config: dict[str, Any], args, peak_tflops: float | None
) -> dict[str, Any]:
    batch = 2 if args.cfg > 1 else 1
    per_call = unet_flops_per_call(config, args.context_frames, batch, result["size"])
    calls = result["windows"] * args.steps
    rate = per_call * calls / result["seconds"]["denoise"] / 1e12
    out = {"unet_tflop_per_window_call": per_call / 1e12, "denoise_tflops_counted": rate}
    if peak_tflops:
        out["fraction_of_peak_counted"] = rate / peak_tflops
    if args.model == "sd15":
        equivalent = SD15_TFLOP_PER_FRAME * batch * args.context_frames * calls / result["seconds"]["denoise"]
        out["denoise_tflops_sd15_equivalent"] = equivalent
        if peak_tflops:
            out["fraction_of_peak_sd15_equivalent"] = equivalent / peak_tflops
    return out


def full_size_cpu_step(args) -> dict[str, Any]:
    """ONE denoising step of ONE 16-frame window with CFG at full size, fp32, on the CPU (plus its inputs)."""
    device = torch.device("cpu")
    pipe, t_build = timed(device, build, "sd15", device, torch.float32)
    image, drawings, reference_drawing = inputs(args.context_frames, pipe.config.width)
    with torch.no_grad():
        reference, t_reference = timed(device, pipe.encode_reference, image)
        pose, t_pose = timed(device, pipe.encode_landmarks, drawings, reference_drawing)
        _, t_step = timed(
            device,
            pipe.denoise,
            reference,
            pose,
            num_inference_steps=1,
            guidance_scale=args.cfg,
            generator=torch.Generator().manual_seed(0),
            context_frames=args.context_frames,
        )
    batch = 2 if args.cfg > 1 else 1
    per_call = unet_flops_per_call(model_config("sd15"), args.context_frames, batch, pipe.config.width)
    return {
        "what": f"one step, one {args.context_frames}-frame window, CFG batch {batch}, 512x512, fp32",
        "seconds": {
            "build_random_init": t_build,
            "reference": t_reference,
            "pose_features": t_pose,
            "step": t_step,
        },
        "unet_tflop_per_window_call": per_call / 1e12,
        "tflops": per_call / t_step / 1e12,
        "peak_rss_gib": peak_memory_gib(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--model", default=None, help="sd15 | tiny (default: sd15 on GPU, tiny on CPU)")
    parser.add_argument(
        "--dtype", default=None, help="bf16 | fp16 | fp32 (default: bf16 on GPU, fp32 on CPU)"
    )
    parser.add_argument("--frames", type=int, default=None, help="frames generated (default 64 GPU, 48 CPU)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=3.5)
    parser.add_argument("--context-frames", type=int, default=16)
    parser.add_argument("--context-overlap", type=int, default=4)
    parser.add_argument("--decode-chunk", type=int, default=4)
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)"
    )
    parser.add_argument("--full-step", action="store_true", help="CPU: also time one full-size step")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    on_gpu = device.type == "cuda"
    args.model = args.model or ("sd15" if on_gpu else "tiny")
    args.frames = args.frames or (64 if on_gpu else 48)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes[args.dtype or ("bf16" if on_gpu else "fp32")]

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if on_gpu
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": args.model,
        "dtype": str(dtype).replace("torch.", ""),
    }
    pipe = build(args.model, device, dtype)
    warm = argparse.Namespace(**{**vars(args), "frames": min(args.frames, args.context_frames), "steps": 1})
    run_generation(pipe, warm, device)  # warm-up: kernels, allocator, autotuning
    results["generation"] = run_generation(pipe, args, device)
    results["generation"].update(
        flop_rates(
            results["generation"], model_config(args.model), args, args.peak_tflops if on_gpu else None
        )
    )
    del pipe
    if args.full_step and not on_gpu:
        results["full_size_cpu_step"] = full_size_cpu_step(args)
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
