"""Reference attention (AniPortrait / Animate Anyone "mutual self-attention") as diffusers attention processors.

The reference UNet runs once on the reference latents. A *write* processor on each of its
self-attentions (``...transformer_blocks.{k}.attn1``) records the attention's input, the
LayerNorm-ed hidden states (B, L, C), into a bank keyed by the module's name. In the denoising
UNet a *read* processor on the self-attention of the same name computes

    attn1(query = h, keys/values = concat[h, ref])        h: (B*F, L, C), ref repeated over the F frames

so every frame also attends to the reference image's tokens. Names match because both UNets use
diffusers' module layout. The bank travels through ``cross_attention_kwargs`` (never stored on the
modules), so gradient checkpointing recomputes with the same tensors.

Cross-attentions (``attn2``) get :class:`PlainAttnProcessor`, which accepts and ignores the bank
arguments so diffusers does not warn about unexpected ``cross_attention_kwargs``.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

ReferenceBank = dict[str, torch.Tensor]
"""Self-attention module name -> its input hidden states (B, L, C) in the reference UNet."""

WRITE_KWARG = "reference_bank"
READ_KWARG = "reference_hidden_states"
MASK_KWARG = "reference_mask"


class PlainAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor that tolerates (and ignores) the reference-attention kwargs."""

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_bank: ReferenceBank | None = None,
        reference_hidden_states: ReferenceBank | None = None,
        reference_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceWriteProcessor(AttnProcessor2_0):
    """Self-attention that stores its input (B, L, C) in ``reference_bank[name]`` when a bank is passed."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_bank: ReferenceBank | None = None,
        reference_hidden_states: ReferenceBank | None = None,
        reference_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if reference_bank is not None:
            reference_bank[self.name] = hidden_states
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceReadProcessor(AttnProcessor2_0):
    """Self-attention whose keys/values are extended with ``reference_hidden_states[name]``.

    ``reference_hidden_states[name]`` is (B, L_ref, C) for a query batch of B*F rows (frames folded
    into the batch, frame index fastest); each sample's reference tokens are shared by its F frames.
    ``reference_mask`` (B,) bool, optional: samples whose entry is False ignore the reference (their
    reference keys are masked out), e.g. the unconditional half under classifier-free guidance.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_bank: ReferenceBank | None = None,
        reference_hidden_states: ReferenceBank | None = None,
        reference_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if reference_hidden_states is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.name}: reference attention needs a plain self-attention (no mask)")
        reference = reference_hidden_states[self.name]
        rows, length, channels = hidden_states.shape
        batch = reference.shape[0]
        frames = rows // batch
        reference = reference.to(hidden_states.dtype)
        reference = reference[:, None].expand(batch, frames, *reference.shape[1:]).reshape(rows, -1, channels)
        keys_values = torch.cat([hidden_states, reference], dim=1)
        mask = None
        if reference_mask is not None:
            use_reference = reference_mask.to(device=hidden_states.device, dtype=torch.bool)
            use_reference = use_reference.repeat_interleave(frames)[:, None, None]  # (B*F, 1, 1)
            own = torch.ones(rows, 1, length, dtype=torch.bool, device=hidden_states.device)
            mask = torch.cat([own, use_reference.expand(rows, 1, reference.shape[1])], dim=-1)
        return super().__call__(attn, hidden_states, keys_values, mask, temb)


def self_attention_names(model: nn.Module) -> list[str]:
    """Names of the diffusers self-attention modules (``...attn1``) in execution-independent order."""
    return [name for name, m in model.named_modules() if isinstance(m, Attention) and name.endswith(".attn1")]


def install_reference_processors(model: nn.Module, mode: Literal["write", "read"]) -> list[str]:
    """Give every diffusers ``Attention`` in ``model`` its reference processor; return the attn1 names.

    Only diffusers ``Attention`` modules are touched (the motion modules' temporal attention is not one).
    """
    if mode not in ("write", "read"):
        raise ValueError(f"mode must be 'write' or 'read', got {mode!r}")
    processor_cls = ReferenceWriteProcessor if mode == "write" else ReferenceReadProcessor
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, Attention):
            continue
        if name.endswith(".attn1"):
            if module.is_cross_attention:
                raise ValueError(f"{name} is a cross-attention; reference attention needs self-attention")
            module.set_processor(processor_cls(name))
            names.append(name)
        else:
            module.set_processor(PlainAttnProcessor())
    return names


def reference_processors_installed(model: nn.Module, mode: Literal["write", "read"]) -> bool:
    """Whether every attn1 of ``model`` carries the ``mode`` processor under its own name."""
    processor_cls = ReferenceWriteProcessor if mode == "write" else ReferenceReadProcessor
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            processor = module.processor
            if name.endswith(".attn1"):
                if not (isinstance(processor, processor_cls) and processor.name == name):
                    return False
            elif not isinstance(processor, PlainAttnProcessor):
                return False
    return True
