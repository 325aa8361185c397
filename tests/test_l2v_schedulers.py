"""generate's samplers (lmk2video.schedulers): configured like the model's own, each reaching the data an exact
denoiser describes, and usable through the pipeline with the same seeds."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
import torch

from common.errors import UserError
from lmk2video.context import context_windows
from lmk2video.convert import ANIPORTRAIT_SCHEDULER
from lmk2video.schedulers import SCHEDULERS, check_scheduler, make_scheduler
from tests.l2v_models import single_thread, tiny_pipeline
from tests.test_l2v_pipeline import inputs


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_sampler_keeps_the_model_s_prediction_type_and_zero_snr(name: str) -> None:
    scheduler = make_scheduler(name, ANIPORTRAIT_SCHEDULER, distilled=True)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr is True
    assert scheduler.config.timestep_spacing == "trailing"
    scheduler.set_timesteps(8)
    assert len(scheduler.timesteps) == 8 and int(scheduler.timesteps[0]) == 999


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [4, 25])
def test_an_exact_denoiser_leads_every_sampler_to_its_data(name: str, steps: int) -> None:
    """When the model predicts v exactly for one clean sample x0, sampling from pure noise must end at x0:
    a sampler misconfigured for v-prediction or zero terminal SNR does not."""
    scheduler = make_scheduler(name, ANIPORTRAIT_SCHEDULER, distilled=True)
    alphas = scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 2, 8, 8, generator=g, dtype=torch.float64).clamp(-2, 2)
    params = inspect.signature(scheduler.step).parameters  # as the pipeline calls it: eta 0, a generator
    step_kwargs = {
        k: v for k, v in (("eta", 0.0), ("generator", torch.Generator().manual_seed(1))) if k in params
    }
    scheduler.set_timesteps(steps)
    x = torch.randn(x0.shape, generator=g, dtype=torch.float64) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_t = scheduler.scale_model_input(x, t)  # the variance-preserving sample the UNet sees
        a = alphas[int(t)]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        x = scheduler.step(v, t, x, **step_kwargs).prev_sample
    # TCD stops at timestep 0, not at clean data: what is left is that timestep's noise level.
    atol = 4 * float((1 - alphas[0]).sqrt()) if name == "tcd" else 2e-3
    torch.testing.assert_close(x, x0, atol=atol, rtol=0)


def test_the_pipeline_samples_with_any_of_them_and_returns_to_its_own() -> None:
    with single_thread():
        pipe = tiny_pipeline(motion=False)
        own = pipe.scheduler
        image, drawings, reference = inputs(frames=2)

        def run(name: str | None, seed: int = 0) -> np.ndarray:
            pipe.use_scheduler(name)
            generator = torch.Generator().manual_seed(seed)
            return pipe(image, drawings, reference, num_inference_steps=3, generator=generator).frames

        videos = {name: run(name) for name in SCHEDULERS}
        for name, video in videos.items():
            assert video.shape == (2, 64, 64, 3), name
            assert np.array_equal(video, run(name)), f"{name} is not repeatable with its seed"
        assert not np.array_equal(videos["ddim"], videos["dpmpp_2m"])
        pipe.use_scheduler(None)
        assert pipe.scheduler is own


def test_unknown_names_and_consistency_samplers_on_undistilled_models(caplog) -> None:
    with pytest.raises(UserError, match="scheduler='ddpm'; choose one of ddim, dpmpp_2m"):
        check_scheduler("ddpm")
    check_scheduler(None)
    make_scheduler("lcm", ANIPORTRAIT_SCHEDULER, source="models/x")
    assert "scheduler=lcm on models/x, a model not distilled for it" in caplog.text


def test_guidance_on_part_of_the_schedule_halves_the_unet_work_elsewhere() -> None:
    """cfg_interval=[a, b]: the UNet runs on 2 samples inside it, on 1 outside; [0, 1] is plain guidance."""
    with single_thread():
        pipe = tiny_pipeline(motion=False)
        image, drawings, reference = inputs(frames=2)
        batches: list[int] = []
        forward = pipe.denoising_unet.forward

        def counting(sample, *args, **kwargs):
            batches.append(sample.shape[0])
            return forward(sample, *args, **kwargs)

        pipe.denoising_unet.forward = counting

        def run(**kwargs) -> np.ndarray:
            batches.clear()
            generator = torch.Generator().manual_seed(0)
            return pipe(
                image, drawings, reference, num_inference_steps=5, generator=generator, **kwargs
            ).frames

        full = run(guidance_scale=3.5)
        assert batches == [2] * 5
        assert np.array_equal(run(guidance_scale=3.5, cfg_interval=(0.0, 1.0)), full)
        part = run(guidance_scale=3.5, cfg_interval=(0.0, 0.5))
        assert batches == [2, 2, 2, 1, 1]  # steps at 0, 0.25, 0.5 are guided
        assert not np.array_equal(part, full)
        none = run(guidance_scale=1.0)
        assert batches == [1] * 5
        last = run(guidance_scale=3.5, cfg_interval=(1.0, 1.0))
        assert batches == [1, 1, 1, 1, 2]  # only the last step
        assert not np.array_equal(last, none) and not np.array_equal(last, full)


def test_reference_and_pose_features_are_computed_once_per_video() -> None:
    """Over all steps and context windows, the reference UNet and the image encoder run once per video and the
    pose guider once per chunk of frames; only the denoising UNet runs per step and window."""
    with single_thread():
        pipe = tiny_pipeline(motion=True)
        image, drawings, reference = inputs(frames=10)
        calls = {"reference_unet": 0, "image_encoder": 0, "pose_guider": 0, "denoising_unet": 0}

        def counted(module, name):
            forward = module.forward

            def wrapper(*args, **kwargs):
                calls[name] += 1
                return forward(*args, **kwargs)

            module.forward = wrapper

        for name in calls:
            counted(getattr(pipe, name), name)
        steps, frames, overlap = 4, 6, 2
        generator = torch.Generator().manual_seed(0)
        pipe(image, drawings, reference, num_inference_steps=steps, generator=generator, context_frames=frames,
             context_overlap=overlap, pose_chunk=4)  # fmt: skip
        windows = len(context_windows(10, frames, overlap, 1))
        assert windows >= 2
        assert calls["reference_unet"] == 1 and calls["image_encoder"] == 1
        assert calls["pose_guider"] == 3  # ceil(10 / 4) chunks
        assert calls["denoising_unet"] == steps * windows


def test_deep_cache_reuses_the_deep_features_and_recomputes_the_shallow_blocks() -> None:
    """A reuse pass on the inputs it stored from gives the full pass's output exactly (only the deep
    blocks are skipped); cache_interval=N runs the mid block on every N-th step of every window only."""
    from lmk2video.models.denoising_unet import DeepCache

    with single_thread():
        pipe = tiny_pipeline(motion=True)
        unet = pipe.denoising_unet
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(2, 4, 3, 8, 8, generator=g)
        context = torch.randn(2, 1, unet.config.cross_attention_dim, generator=g)
        cache = DeepCache()
        with torch.no_grad():
            full = unet(sample, 500, context, deep_cache=cache).sample
            assert cache.features is not None
            cache.reuse = True
            again = unet(sample, 500, context, deep_cache=cache).sample
            other = unet(sample * 0.5, 400, context, deep_cache=cache).sample
            fresh = unet(sample * 0.5, 400, context).sample
        torch.testing.assert_close(again, full, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(other, fresh)  # the deep features were reused, not recomputed

        mids = []
        forward = unet.mid_block.forward
        unet.mid_block.forward = lambda *a, **k: (mids.append(1), forward(*a, **k))[1]
        image, drawings, reference = inputs(frames=6)

        def run(interval: int) -> np.ndarray:
            mids.clear()
            generator = torch.Generator().manual_seed(0)
            return pipe(image, drawings, reference, num_inference_steps=6, generator=generator, context_frames=4,
                        context_overlap=2, cache_interval=interval).frames  # fmt: skip

        windows = len(context_windows(6, 4, 2, 1))
        plain = run(1)
        assert len(mids) == 6 * windows
        cached = run(3)
        assert len(mids) == 2 * windows  # steps 0 and 3
        assert cached.shape == plain.shape and not np.array_equal(cached, plain)


def test_sampler_options_from_a_hydra_config() -> None:
    """The benchmark hands its composed config over as is: a ListConfig interval must be accepted."""
    from omegaconf import OmegaConf

    from lmk2video.rendering import SamplerOptions

    cfg = OmegaConf.create(
        {"steps": 10, "scheduler": "unipc", "cfg_interval": [0.0, 0.5], "cache_interval": 2}
    )
    options = SamplerOptions.from_values(dict(cfg)).check()
    assert options.cfg_interval == (0.0, 0.5) and options.scheduler == "unipc" and options.cache_interval == 2


def test_presets_fill_only_what_is_not_given_and_know_distilled_students(caplog) -> None:
    from types import SimpleNamespace

    from lmk2video.rendering import PRESETS, SamplerOptions

    teacher = SimpleNamespace(
        max_context_frames=16, sampling_defaults={"steps": 25, "cfg": 3.5}, config={"distilled": False}
    )
    student = SimpleNamespace(
        max_context_frames=16, sampling_defaults={"steps": 4, "cfg": 1.0}, config={"distilled": True}
    )

    def fitted(pipe, **values):
        o = SamplerOptions(**values).check().fit(pipe, strict=True)
        return o.scheduler, o.steps, o.cfg, o.cfg_interval, o.cache_interval

    # No preset and "quality": the model's own sampler and recommendation.
    for preset in (None, "quality"):
        assert fitted(teacher, preset=preset) == (None, 25, 3.5, (0.0, 1.0), 1)
        assert fitted(student, preset=preset) == (None, 4, 1.0, (0.0, 1.0), 1)
    assert fitted(teacher, preset="balanced") == ("dpmpp_2m", 10, 3.5, (0.0, 1.0), 1)
    assert fitted(student, preset="balanced") == (None, 4, 1.0, (0.0, 1.0), 1)
    with caplog.at_level(logging.WARNING):
        assert fitted(teacher, preset="fastest") == ("dpmpp_2m", 10, 3.5, (0.0, 0.5), 1)
    assert "not distilled" in caplog.text
    assert fitted(student, preset="fastest") == (None, 4, 1.0, (0.0, 1.0), 1)
    # What the user gives wins over the preset.
    assert fitted(teacher, preset="fastest", steps=6, cfg_interval=[0, 1]) == ("dpmpp_2m", 6, 3.5, (0, 1), 1)
    assert set(PRESETS) == {"quality", "balanced", "fastest"}
    # Windows: 16 frames overlapping by 4, averaged with pyramid weights (measured better than uniform).
    defaults = SamplerOptions()
    assert (defaults.context_frames, defaults.context_overlap, defaults.context_weighting) == (
        16,
        4,
        "pyramid",
    )
    with pytest.raises(UserError, match="preset='turbo'"):
        SamplerOptions(preset="turbo").check()


def test_every_attention_runs_through_pytorch_sdpa(monkeypatch) -> None:
    """Spatial, cross, reference and temporal attention all call ``scaled_dot_product_attention`` (the flash and
    memory-efficient kernels on a GPU), once per attention layer; none computes scores by hand."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    from lmk2video.models.motion_module import TemporalSelfAttention

    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=4)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference)
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("attention scores computed by hand")

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    monkeypatch.setattr(torch, "baddbmm", forbidden)
    unet = pipe.denoising_unet
    layers = sum(isinstance(m, Attention | TemporalSelfAttention) for m in unet.modules())
    noise = pipe.prepare_noise(4, 64, 64, torch.Generator().manual_seed(0))
    down, mid = pose.window(torch.arange(4), 2, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        unet(
            noise.expand(2, -1, -1, -1, -1),
            torch.tensor(500),
            torch.cat([torch.zeros_like(ref.image_embeds), ref.image_embeds]),
            reference_hidden_states=ref.bank,
            down_block_res_samples=down,
            mid_block_res_sample=mid,
            reference_mask=torch.tensor([False, True]),
        )
    assert layers > 0 and len(calls) == layers


def _windowed_denoising():
    """A tiny motion pipeline and a function denoising 6 frames with it in overlapping windows (same noise)."""
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=6)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference)
    noise = pipe.prepare_noise(6, 64, 64, torch.Generator().manual_seed(3))
    kwargs = {"num_inference_steps": 2, "latents": noise, "context_frames": 4, "context_overlap": 1}
    return pipe, lambda: pipe.denoise(ref, pose, **kwargs)


def test_channels_last_and_compile_paths(monkeypatch) -> None:
    """``channels_last`` converts the convolutional networks and gives the same video; ``compile`` compiles the
    denoising UNet in place (its module type and weights stay; the compiled run itself is the slow test)."""
    from lmk2video.models.denoising_unet import DenoisingUNet
    from lmk2video.rendering import speed_up

    pipe, run = _windowed_denoising()
    base = run()
    speed_up(pipe, channels_last=True)
    assert pipe.denoising_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.reference_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(run(), base, rtol=1e-4, atol=1e-4)
    compiled = []
    monkeypatch.setattr(DenoisingUNet, "compile", lambda self, *a, **k: compiled.append(self))
    speed_up(pipe, compile=True)
    assert compiled == [pipe.denoising_unet]


@pytest.mark.slow
def test_compiled_denoising_gives_the_same_video() -> None:
    """torch.compile (inductor, on the CPU: minutes of compilation for the tiny model) changes no result."""
    from lmk2video.rendering import speed_up

    pipe, run = _windowed_denoising()
    base = run()
    speed_up(pipe, compile=True)
    torch.testing.assert_close(run(), base, rtol=1e-4, atol=1e-4)
