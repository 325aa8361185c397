"""ReferenceUNet and reference attention."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from lmk2video.models.denoising_unet import DenoisingUNet
from lmk2video.models.reference_attention import (
    PlainAttnProcessor,
    ReferenceReadProcessor,
    ReferenceWriteProcessor,
)
from lmk2video.models.reference_unet import ReferenceUNet
from tests.l2v_tiny import TINY_UNET, randomize_, tiny_denoising_config, video_inputs


def _models(motion: bool = True, seed: int = 3) -> tuple[ReferenceUNet, DenoisingUNet]:
    """A ReferenceUNet and a DenoisingUNet that share the same (seeded, random) 2D weights."""
    ref_unet = randomize_(ReferenceUNet(**TINY_UNET), seed).eval()
    denoiser = DenoisingUNet(**tiny_denoising_config(motion=motion)).eval()
    missing, unexpected = denoiser.load_state_dict(ref_unet.state_dict(), strict=False)
    assert not unexpected
    assert set(missing) == {
        k
        for k in denoiser.state_dict()
        if ".motion_modules." in k or k.startswith(("conv_norm_out.", "conv_out."))
    }
    with torch.no_grad():  # the output head, which the reference UNet lacks
        for name in ("conv_norm_out", "conv_out"):
            randomize_(getattr(denoiser, name), seed + 1)
    return ref_unet, denoiser


def test_bank_holds_every_self_attention_input() -> None:
    ref_unet = randomize_(ReferenceUNet(**TINY_UNET), 1).eval()
    plain = UNet2DConditionModel(**TINY_UNET)
    missing, unexpected = plain.load_state_dict(ref_unet.state_dict(), strict=False)
    assert sorted(missing) == [
        "conv_norm_out.bias",
        "conv_norm_out.weight",
        "conv_out.bias",
        "conv_out.weight",
    ]
    assert not unexpected
    captured = {}
    for name, module in plain.named_modules():
        if name.endswith(".attn1"):
            module.register_forward_pre_hook(lambda m, args, name=name: captured.__setitem__(name, args[0]))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bank = ref_unet.compute_reference_hidden_states(latents, context)
        plain(latents, 0, context)
    assert list(bank) == list(captured)  # both in execution order
    assert set(bank) == set(ref_unet.reference_attention_names)
    assert len(bank) == 2 * 2 + 1 + 2 * 3  # down (2 blocks x 2 layers), mid, up (2 blocks x 3 layers)
    for name, value in bank.items():
        torch.testing.assert_close(value, captured[name], rtol=0, atol=0)
    assert bank["down_blocks.0.attentions.0.transformer_blocks.0.attn1"].shape == (2, 64, 8)
    assert bank["mid_block.attentions.0.transformer_blocks.0.attn1"].shape == (2, 4, 16)


def test_reference_unet_has_no_output_head_and_keeps_diffusers_names() -> None:
    ref_keys = set(ReferenceUNet(**TINY_UNET).state_dict())
    diffusers_keys = set(UNet2DConditionModel(**TINY_UNET).state_dict())
    assert ref_keys == {k for k in diffusers_keys if not k.startswith(("conv_norm_out.", "conv_out."))}


def test_processors() -> None:
    ref_unet, denoiser = _models()
    for model, cls in ((ref_unet, ReferenceWriteProcessor), (denoiser, ReferenceReadProcessor)):
        for name, module in model.named_modules():
            if name.endswith(".attn1"):
                assert isinstance(module.processor, cls) and module.processor.name == name
            elif name.endswith(".attn2"):
                assert isinstance(module.processor, PlainAttnProcessor)
    assert set(denoiser.reference_attention_names) == set(ref_unet.reference_attention_names)


def test_self_reference_is_the_identity() -> None:
    """Attending to [h, h] equals attending to h (duplicated keys split the same softmax mass).

    With shared weights, a reference computed from the very latents the denoiser sees (identical frames,
    same timestep and context) reproduces each layer's own self-attention input, so the output must
    equal the plain forward at every layer, hence at the end. A different reference must change it.
    """
    ref_unet, denoiser = _models(motion=True)  # zero-initialised motion modules: identity on the way
    image, timesteps, context = video_inputs(batch=2, frames=1)
    clip = image.expand(-1, -1, 3, -1, -1)  # three identical frames
    other, _, _ = video_inputs(batch=2, frames=1, seed=9)
    with torch.no_grad():
        plain = denoiser(clip, timesteps, context).sample
        bank = ref_unet.compute_reference_hidden_states(image[:, :, 0], context, timesteps)
        same = denoiser(clip, timesteps, context, reference_hidden_states=bank).sample
        other_bank = ref_unet.compute_reference_hidden_states(other[:, :, 0], context, timesteps)
        changed = denoiser(clip, timesteps, context, reference_hidden_states=other_bank).sample
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-5)
    assert (changed - plain).abs().max() > 1e-2


def test_reference_mask_switches_reference_attention_off_per_sample() -> None:
    ref_unet, denoiser = _models(motion=False)
    sample, timesteps, context = video_inputs(batch=2, frames=2)
    ref_latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        bank = ref_unet.compute_reference_hidden_states(ref_latents, context)
        plain = denoiser(sample, timesteps, context).sample
        full = denoiser(sample, timesteps, context, reference_hidden_states=bank).sample
        mask = torch.tensor([False, True])  # AniPortrait's CFG: the unconditional half ignores the reference
        masked = denoiser(
            sample, timesteps, context, reference_hidden_states=bank, reference_mask=mask
        ).sample
    torch.testing.assert_close(masked[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[1], full[1], rtol=1e-5, atol=1e-5)
    assert (full[0] - plain[0]).abs().max() > 1e-2


def test_a_shared_reference_broadcasts_over_the_batch() -> None:
    ref_unet, denoiser = _models(motion=False)
    sample, timesteps, context = video_inputs(batch=2, frames=2)
    ref_latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        bank = ref_unet.compute_reference_hidden_states(ref_latents, context[:1])
        shared = denoiser(sample, timesteps, context, reference_hidden_states=bank).sample
        expanded = {k: v.expand(2, -1, -1) for k, v in bank.items()}
        explicit = denoiser(sample, timesteps, context, reference_hidden_states=expanded).sample
    torch.testing.assert_close(shared, explicit, rtol=0, atol=0)


def test_mismatched_banks_are_refused() -> None:
    ref_unet, denoiser = _models(motion=False)
    sample, timesteps, context = video_inputs(batch=2, frames=2)
    with torch.no_grad():
        bank = ref_unet.compute_reference_hidden_states(torch.randn(2, 4, 8, 8), context)
    name = "mid_block.attentions.0.transformer_blocks.0.attn1"
    partial = {k: v for k, v in bank.items() if k != name}
    with pytest.raises(ValueError, match=f"missing \\['{name}'\\]"):
        denoiser(sample, timesteps, context, reference_hidden_states=partial)
    with pytest.raises(ValueError, match=r"unexpected \['extra\.attn1'\]"):
        denoiser(sample, timesteps, context, reference_hidden_states={**bank, "extra.attn1": bank[name]})
    with pytest.raises(ValueError, match="reference_mask needs reference_hidden_states"):
        denoiser(sample, timesteps, context, reference_mask=torch.tensor([True, True]))


def test_gradients_reach_the_reference_unet_and_unused_parameters_are_frozen() -> None:
    ref_unet = randomize_(ReferenceUNet(**TINY_UNET), 2).train()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    bank = ref_unet.compute_reference_hidden_states(latents, context)
    gen = torch.Generator().manual_seed(2)
    sum(
        ((v * torch.randn(v.shape, generator=gen)).sum() for v in bank.values()), torch.tensor(0.0)
    ).backward()
    no_grad = {n for n, p in ref_unet.named_parameters() if p.grad is None}
    frozen = set(ref_unet.freeze_unused_parameters())
    assert frozen == no_grad
    assert {n for n, p in ref_unet.named_parameters() if not p.requires_grad} == frozen
    assert "up_blocks.2.attentions.2.proj_out.weight" in frozen
    assert "up_blocks.2.attentions.2.transformer_blocks.0.norm1.weight" not in frozen
