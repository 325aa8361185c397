"""LandmarkVideoPipeline: pose guider + denoising UNet together, context windows, guidance, seeds, decoding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from common.errors import UserError
from lmk2video.context import context_windows, window_weights
from lmk2video.models.denoising_unet import DenoisingUNet
from lmk2video.models.pose_guider import PoseGuider
from tests.l2v_models import single_thread, tiny_model_config, tiny_pipeline
from tests.l2v_tiny import randomize_

SIZE = 64  # tiny model: 64x64 frames, 8x8 latents


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def inputs(frames: int, seed: int = 0, size: tuple[int, int] = (SIZE, SIZE)):
    """Seeded reference image, landmark drawings and reference drawing (uint8)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    drawings = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    return image, drawings, reference


# ------------------------------------------------------------------------ pose guider + denoising UNet


def _unet_and_guider(seed: int = 0) -> tuple[DenoisingUNet, PoseGuider]:
    config = tiny_model_config(motion=True)
    unet = randomize_(DenoisingUNet(**config["unet"], motion_module=config["motion_module"]), seed).eval()
    guider = PoseGuider(**config["pose_guider"], unet_block_out_channels=config["unet"]["block_out_channels"])
    return unet, guider.eval()


def _unet_inputs(seed: int = 0, frames: int = 3):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, frames, 8, 8, generator=g)
    context = torch.randn(1, 1, 8, generator=g)
    landmarks = torch.rand(1, 3, frames, SIZE, SIZE, generator=g) * 2 - 1
    reference = torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1
    return sample, context, landmarks, reference


@torch.no_grad()
def _denoise_with(
    unet: DenoisingUNet, guider: PoseGuider, sample, context, landmarks, reference
) -> torch.Tensor:
    pose = guider(landmarks, reference)
    return unet(
        sample,
        500,
        context,
        down_block_res_samples=pose.down_block_res_samples,
        mid_block_res_sample=pose.mid_block_res_sample,
    ).sample


def test_zero_initialised_pose_guider_leaves_the_unet_output_unchanged() -> None:
    unet, guider = _unet_and_guider()
    sample, context, landmarks, reference = _unet_inputs()
    with torch.no_grad():
        plain = unet(sample, 500, context).sample
        pose = guider(landmarks, reference)
    assert all(torch.count_nonzero(x) == 0 for x in pose.down_block_res_samples)
    guided = _denoise_with(unet, guider, sample, context, landmarks, reference)
    assert torch.equal(guided, plain)


def test_trained_pose_guider_changes_the_unet_output_with_the_landmarks() -> None:
    unet, guider = _unet_and_guider()
    randomize_(guider, 7)
    sample, context, landmarks, reference = _unet_inputs()
    with torch.no_grad():
        plain = unet(sample, 500, context).sample
    guided = _denoise_with(unet, guider, sample, context, landmarks, reference)
    assert (guided - plain).abs().max() > 1e-2
    other_landmarks = _unet_inputs(seed=1)[2]
    moved = _denoise_with(unet, guider, sample, context, other_landmarks, reference)
    assert (moved - guided).abs().max() > 1e-2


def test_reference_landmark_attention_changes_the_output_with_the_reference_landmarks() -> None:
    unet, guider = _unet_and_guider()
    randomize_(guider, 7)
    sample, context, landmarks, reference = _unet_inputs()
    other_reference = _unet_inputs(seed=1)[3]
    first = _denoise_with(unet, guider, sample, context, landmarks, reference)
    second = _denoise_with(unet, guider, sample, context, landmarks, other_reference)
    assert (second - first).abs().max() > 1e-2
    # Without the attention blocks the reference landmarks have no way in.
    plain_guider = PoseGuider(**{**guider.config, "reference_attention": False}).eval()
    state = {k: v for k, v in guider.state_dict().items() if not k.startswith("attentions.")}
    plain_guider.load_state_dict(state, strict=True)
    a = _denoise_with(unet, plain_guider, sample, context, landmarks, reference)
    b = _denoise_with(unet, plain_guider, sample, context, landmarks, other_reference)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ context windows


@pytest.mark.parametrize(
    ("frames", "size", "overlap", "stride"),
    [
        *itertools.product((1, 5, 16, 17, 23, 40, 100), (8, 16), (0, 4, 7), (1,)),
        *itertools.product((17, 40, 100), (8, 16), (0, 4), (2, 3)),
    ],
)
def test_windows_cover_every_frame_with_full_length_overlapping_runs(frames, size, overlap, stride) -> None:
    windows = context_windows(frames, size, overlap, stride)
    covered = sorted({f for w in windows for f in w})
    assert covered == list(range(frames))
    for window in windows:
        assert len(window) == min(size, frames)
        assert len(set(window)) == len(window) and all(0 <= f < frames for f in window)
        steps = np.diff(window)
        assert (steps > 0).all() and len(set(steps.tolist())) <= 1  # evenly spaced, increasing
    contiguous = [w for w in windows if len(w) < 2 or w[1] - w[0] == 1]
    assert contiguous[0][0] == 0 and contiguous[-1][-1] == frames - 1
    for a, b in itertools.pairwise(contiguous):
        assert b[0] > a[0] and len(set(a) & set(b)) >= overlap


def test_short_video_is_one_window_and_bad_settings_are_refused() -> None:
    assert context_windows(12, 16, 4) == [list(range(12))]
    assert context_windows(16, 16, 4) == [list(range(16))]
    assert context_windows(20, 16, 4) == [list(range(16)), list(range(4, 20))]
    assert context_windows(10, 4, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    for bad in ((0, 0, 1), (8, 8, 1), (8, -1, 1), (8, 2, 0)):
        with pytest.raises(UserError):
            context_windows(20, *bad)
    assert window_weights(4, "pyramid").tolist() == [1, 2, 2, 1]
    assert window_weights(3).tolist() == [1, 1, 1]
    with pytest.raises(UserError, match="context_weighting"):
        window_weights(3, "gaussian")


def test_shifted_window_grids_move_every_step_and_still_cover_every_frame() -> None:
    from lmk2video.context import ordered_halving, step_offset

    assert [ordered_halving(i) for i in range(6)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625]
    offsets = [step_offset(i, 16, 4) for i in range(8)]
    assert offsets == [0, 6, 3, 9, 1, 7, 4, 10] and all(0 <= o < 12 for o in offsets)
    assert context_windows(40, 16, 4, offset=0) == context_windows(40, 16, 4)
    seams = set()
    for offset in offsets:
        windows = context_windows(40, 16, 4, offset=offset)
        assert sorted({f for w in windows for f in w}) == list(range(40))
        assert windows[0][0] == 0 and windows[-1][-1] == 39 and all(len(w) == 16 for w in windows)
        for a, b in itertools.pairwise(windows):
            assert len(set(a) & set(b)) >= 4
        seams |= {w[0] for w in windows[1:]}
    # The grid's window starts (where a seam can be) land on many frames, not on the same few at every step.
    assert len(seams) >= 8


def test_shifted_windows_change_a_motion_model_s_video_but_not_a_frame_model_s() -> None:
    image, drawings, reference = inputs(frames=10)
    for motion in (True, False):
        pipe = tiny_pipeline(motion=motion)
        ref = pipe.encode_reference(image)
        pose = pipe.encode_landmarks(drawings, reference)
        noise = pipe.prepare_noise(10, SIZE, SIZE, torch.Generator().manual_seed(3))
        kwargs = {"num_inference_steps": 3, "latents": noise, "context_frames": 4, "context_overlap": 1}
        fixed = pipe.denoise(ref, pose, **kwargs)
        shifted = pipe.denoise(ref, pose, context_shift=True, **kwargs)
        if motion:
            assert (shifted - fixed).abs().max() > 1e-4
        else:
            torch.testing.assert_close(shifted, fixed, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="cannot be combined"):
        pipe.denoise(ref, pose, context_shift=True, cache_interval=2, **kwargs)


def _reference_sampler(pipe, image, drawings, reference_drawing, steps, cfg, noise) -> torch.Tensor:
    """An independent single-window sampler: the whole video in one UNet call per half, guidance, DDIM steps."""
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference_drawing)
    unet = pipe.denoising_unet
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    latents = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            kwargs = {"down_block_res_samples": tuple(pose.down), "mid_block_res_sample": pose.mid}
            cond = unet(latents, t, ref.image_embeds, reference_hidden_states=ref.bank, **kwargs).sample
            uncond = unet(latents, t, torch.zeros_like(ref.image_embeds), **kwargs).sample
            latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents).prev_sample
    return latents


def test_window_as_long_as_the_video_equals_single_window_generation() -> None:
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=6)
    noise = pipe.prepare_noise(6, SIZE, SIZE, torch.Generator().manual_seed(3))
    expected = _reference_sampler(pipe, image, drawings, reference, steps=3, cfg=3.5, noise=noise)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference, chunk=4)  # chunked pose features are exact
    results = [
        pipe.denoise(
            ref, pose, num_inference_steps=3, guidance_scale=3.5, latents=noise, context_frames=window
        )
        for window in (6, 8)
    ]
    assert torch.equal(results[0], results[1])
    # Batched guidance and unbatched halves differ only in float rounding.
    torch.testing.assert_close(results[0], expected, rtol=1e-4, atol=1e-4)


def test_overlapping_windows_average_to_single_window_without_motion_modules() -> None:
    """Without motion modules frames are denoised independently, so any window layout gives the same video."""
    pipe = tiny_pipeline(motion=False)
    image, drawings, reference = inputs(frames=11)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference)
    noise = pipe.prepare_noise(11, SIZE, SIZE, torch.Generator().manual_seed(3))
    single = pipe.denoise(ref, pose, num_inference_steps=2, latents=noise, context_frames=11)
    for frames, overlap, stride, weighting in ((4, 1, 1, "uniform"), (3, 2, 2, "pyramid")):
        windowed = pipe.denoise(
            ref,
            pose,
            num_inference_steps=2,
            latents=noise,
            context_frames=frames,
            context_overlap=overlap,
            context_stride=stride,
            context_weighting=weighting,
        )
        torch.testing.assert_close(windowed, single, rtol=1e-4, atol=1e-4)


def test_windows_matter_with_motion_modules_and_respect_their_length() -> None:
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=10)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference)
    noise = pipe.prepare_noise(10, SIZE, SIZE, torch.Generator().manual_seed(3))
    single = pipe.denoise(ref, pose, num_inference_steps=2, latents=noise, context_frames=10)
    windowed = pipe.denoise(
        ref, pose, num_inference_steps=2, latents=noise, context_frames=4, context_overlap=2
    )
    assert (windowed - single).abs().max() > 1e-3
    with pytest.raises(UserError, match="max_position=16"):
        long = pipe.encode_landmarks(inputs(frames=20)[1], reference)
        pipe.denoise(ref, long, num_inference_steps=1, context_frames=20)


def test_initial_noise_depends_on_neither_the_windows_nor_the_length() -> None:
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=9)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference)
    expected = pipe.prepare_noise(9, SIZE, SIZE, torch.Generator().manual_seed(11))[0]  # (C, F, h, w)
    for frames, overlap in ((9, 0), (4, 1), (5, 3)):
        samples: list[torch.Tensor] = []
        hook = pipe.denoising_unet.register_forward_pre_hook(
            lambda m, args, samples=samples: samples.append(args[0][-1].clone())
        )
        try:  # one step: the UNet sees the initial noise (DDIM's init_noise_sigma is 1)
            pipe.denoise(
                ref,
                pose,
                num_inference_steps=1,
                guidance_scale=2.0,
                generator=torch.Generator().manual_seed(11),
                context_frames=frames,
                context_overlap=overlap,
            )
        finally:
            hook.remove()
        windows = context_windows(9, frames, overlap)
        assert len(samples) == len(windows)
        for window, sample in zip(windows, samples):
            assert torch.equal(sample, expected[:, window])
    longer = pipe.prepare_noise(14, SIZE, SIZE, torch.Generator().manual_seed(11))
    assert torch.equal(longer[0, :, :9], expected)


def test_unconditional_half_has_no_reference_attention_and_a_zero_image_token() -> None:
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=4)
    ref = pipe.encode_reference(image)
    pose = pipe.encode_landmarks(drawings, reference)
    captured = {}

    def keep(module, args, kwargs, output):
        captured.setdefault("call", (args, kwargs, output.sample))

    hook = pipe.denoising_unet.register_forward_hook(keep, with_kwargs=True)
    try:
        pipe.denoise(
            ref, pose, num_inference_steps=1, guidance_scale=3.5, generator=torch.Generator().manual_seed(0)
        )
    finally:
        hook.remove()
    (sample, t, embeds), kwargs, output = captured["call"]
    assert sample.shape[0] == 2 and torch.equal(embeds[0], torch.zeros_like(embeds[0]))
    assert kwargs["reference_mask"].tolist() == [False, True]
    with torch.no_grad():
        uncond = pipe.denoising_unet(
            sample[:1],
            t,
            embeds[:1],
            down_block_res_samples=tuple(x[:1] for x in kwargs["down_block_res_samples"]),
        ).sample
        cond = pipe.denoising_unet(
            sample[1:],
            t,
            embeds[1:],
            reference_hidden_states=ref.bank,
            down_block_res_samples=tuple(x[1:] for x in kwargs["down_block_res_samples"]),
        ).sample
    torch.testing.assert_close(output[:1], uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output[1:], cond, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------- end to end


def test_seeded_generation_is_reproducible_and_yields_one_frame_per_drawing() -> None:
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=7)

    def run(seed: int) -> list[np.ndarray]:
        return list(
            pipe.stream(
                image,
                drawings,
                reference,
                num_inference_steps=2,
                generator=torch.Generator().manual_seed(seed),
                context_frames=4,
                context_overlap=2,
                decode_chunk=3,
            )
        )

    first, again, other = run(5), run(5), run(6)
    assert [len(c) for c in first] == [3, 3, 1]
    video = np.concatenate(first)
    assert video.shape == (7, SIZE, SIZE, 3) and video.dtype == np.uint8
    assert np.array_equal(video, np.concatenate(again))
    assert not np.array_equal(video, np.concatenate(other))
    generator = torch.Generator().manual_seed(5)
    # __call__ is the stream collected (same decode chunks: VAE batches of another size may round a pixel
    # differently).
    kwargs = {"num_inference_steps": 2, "context_frames": 4, "context_overlap": 2, "decode_chunk": 3}
    whole = pipe(image, drawings, reference, generator=generator, **kwargs).frames
    assert np.array_equal(whole, video)


def test_non_square_frames_and_input_checks() -> None:
    pipe = tiny_pipeline(motion=True)
    image, drawings, reference = inputs(frames=3, size=(48, 64))
    video = pipe(
        image, drawings, reference, num_inference_steps=1, generator=torch.Generator().manual_seed(0)
    ).frames
    assert video.shape == (3, 48, 64, 3)
    with pytest.raises(UserError, match="multiple of 8"):
        pipe(*inputs(frames=2, size=(44, 64)), num_inference_steps=1)
    with pytest.raises(ValueError, match="landmark images"):
        pipe(image, inputs(frames=2)[1], reference, num_inference_steps=1)


def test_decoding_streams_chunks_of_the_requested_size() -> None:
    pipe = tiny_pipeline(motion=False)
    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    chunks = list(pipe.decode(latents, chunk=2))
    assert [c.shape for c in chunks] == [(2, SIZE, SIZE, 3), (2, SIZE, SIZE, 3), (1, SIZE, SIZE, 3)]
    single = np.concatenate(list(pipe.decode(latents, chunk=5)))
    np.testing.assert_allclose(np.concatenate(chunks).astype(int), single.astype(int), atol=1)


# ------------------------------------------------------------------------------------------- sampler options


def test_sampler_options_fit_the_motion_modules_one_way_for_every_caller() -> None:
    """One clamp: strict (generate: the user asked for the window) refuses, lenient (validation, evaluation)
    shortens the window and keeps the overlap below it; a model without motion modules takes any window."""
    from types import SimpleNamespace

    from lmk2video.rendering import SamplerOptions

    options = SamplerOptions(
        context_frames=16, context_overlap=12, steps=7, cfg=2.0, cfg_interval=(0.0, 1.0), cache_interval=1
    )
    recommends = {"steps": 3, "cfg": 1.0}
    motion = SimpleNamespace(max_context_frames=8, sampling_defaults=recommends)
    fitted = options.fit(motion, strict=False)
    assert (fitted.context_frames, fitted.context_overlap) == (8, 7)
    assert fitted.steps == options.steps and fitted.cfg == options.cfg
    with pytest.raises(
        UserError, match=r"context_frames=16 .* max_position=8 \(MODEL\); set context_frames=8"
    ):
        options.fit(motion, strict=True, source="MODEL")
    anything = SimpleNamespace(max_context_frames=None, sampling_defaults=recommends)
    assert options.fit(anything, strict=True) == options
    assert (
        options.fit(SimpleNamespace(max_context_frames=16, sampling_defaults=recommends), strict=True)
        == options
    )
    # Steps and guidance left unset take the model's recommendation.
    unset = SamplerOptions(context_frames=16, context_overlap=12)
    assert (unset.fit(anything, strict=True).steps, unset.fit(anything, strict=True).cfg) == (3, 1.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"cfg": -1}, "cfg=-1"),
        ({"cfg": True}, "cfg=True"),
        ({"decode_chunk": 0}, "decode_chunk=0"),
        ({"context_frames": 0}, "context_frames=0"),
        ({"context_overlap": 16}, "context_overlap=16"),
        ({"context_stride": 0}, "context_stride=0"),
        ({"context_weighting": "cubic"}, "cubic"),
        ({"pad_mode": "wrap"}, "pad_mode='wrap'"),
        ({"context_shift": "yes"}, "context_shift='yes'"),
        ({"context_shift": True, "cache_interval": 2}, "cannot be combined"),
    ],
)
def test_sampler_options_refuse_values_that_cannot_sample(changes, message) -> None:
    from lmk2video.rendering import SamplerOptions

    SamplerOptions().check()
    with pytest.raises(UserError, match=message):
        SamplerOptions(**changes).check()


def test_the_training_framing_travels_in_the_model_folder(tmp_path) -> None:
    """``set_framing`` records the crop options (checked), save/load keeps them, and loading refuses bad ones."""
    import json

    from lmk2video.pipeline import LandmarkVideoPipeline

    pipe = tiny_pipeline(motion=False)
    assert pipe.framing_options == {}
    pipe.set_framing({"face_fraction": 0.4, "min_face_fraction": 0.35}, "data.framing")
    pipe.save_pretrained(tmp_path / "m")
    loaded = LandmarkVideoPipeline.from_pretrained(tmp_path / "m")
    assert loaded.framing_options == {"face_fraction": 0.4, "min_face_fraction": 0.35}
    with pytest.raises(UserError, match=r"data\.framing: unknown framing option\(s\) zoom"):
        pipe.set_framing({"zoom": 2}, "data.framing")
    with pytest.raises(UserError, match=r"data\.framing: face fractions must satisfy"):
        pipe.set_framing({"face_fraction": 0.9}, "data.framing")
    index = tmp_path / "m" / "model_index.json"
    config = json.loads(index.read_text())
    config["framing"] = {"vertical_center": 1.5}
    index.write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"framing: vertical_center=1\.5"):
        LandmarkVideoPipeline.from_pretrained(tmp_path / "m")
