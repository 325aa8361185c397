"""Reference UNet: an SD1.5 2D UNet run once per video on the reference image's latents.

Its only product is the reference bank: the input of every self-attention (see
:mod:`lmk2video.models.reference_attention`). Like AniPortrait's reference UNet it has no output
head (``conv_norm_out`` / ``conv_out``): the image it would predict is never used.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from common.weights import (
    StrictLoadMixin,
    adopt_state_dict,
    assert_materialised,
    check_state_dict,
    read_unet_folder,
    resolve_unet_folder,
)
from lmk2video.models.reference_attention import (
    WRITE_KWARG,
    ReferenceBank,
    install_reference_processors,
    reference_processors_installed,
)

OUTPUT_HEAD_PREFIXES = ("conv_norm_out.", "conv_out.")


class ReferenceUNet(StrictLoadMixin, UNet2DConditionModel):
    """diffusers ``UNet2DConditionModel`` (same config, same keys) without the output head.

    ``forward`` is diffusers' and returns the last up block's features; use
    :meth:`compute_reference_hidden_states` to get the bank.
    """

    strict_load_hint = (
        "for a Stable Diffusion 'unet' folder use ReferenceUNet.from_pretrained_2d; otherwise save the model "
        "again with save_pretrained or convert the original checkpoint (python -m lmk2video.convert)"
    )

    @functools.wraps(UNet2DConditionModel.__init__)  # keeps diffusers' signature for ConfigMixin
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conv_norm_out = None
        self.conv_act = None
        self.conv_out = nn.Identity()
        self.reference_attention_names: list[str] = install_reference_processors(self, "write")

    def compute_reference_hidden_states(
        self,
        sample: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int = 0,
    ) -> ReferenceBank:
        """Run once on the reference latents and return the bank.

        Args:
            sample: (B, C, H, W) reference image latents (VAE-scaled).
            encoder_hidden_states: (B, L, cross_attention_dim) conditioning tokens.
            timestep: AniPortrait uses 0 (a clean reference).

        Returns:
            dict: self-attention module name (``...transformer_blocks.{k}.attn1``) -> (B, L_i, C_i),
            the LayerNorm-ed hidden states that attention received. Gradients flow through them.
        """
        if sample.ndim != 4:
            raise ValueError(f"reference sample must be (B, C, H, W), got shape {tuple(sample.shape)}")
        if not reference_processors_installed(self, "write"):
            install_reference_processors(self, "write")
        bank: ReferenceBank = {}
        self(
            sample,
            timestep,
            encoder_hidden_states,
            cross_attention_kwargs={WRITE_KWARG: bank},
            return_dict=False,
        )
        return bank

    def freeze_unused_parameters(self) -> list[str]:
        """Freeze the parameters that cannot influence the bank; return their names.

        Everything after the last self-attention's input is unused: that attention itself, the rest
        of its transformer block (norm2, attn2, norm3, ff), its transformer's ``proj_out``, the rest of
        its up block (its upsampler) and any later up block without attention layers. Freezing them
        keeps DistributedDataParallel from waiting for gradients that never come.
        """
        with_attention = [i for i, b in enumerate(self.up_blocks) if getattr(b, "attentions", None)]
        if not with_attention:
            raise ValueError("freeze_unused_parameters expects an up block with attention layers")
        index = with_attention[-1]
        last_block = self.up_blocks[index]
        transformer = last_block.attentions[-1]
        prefix = f"up_blocks.{index}.attentions.{len(last_block.attentions) - 1}"
        block_index = len(transformer.transformer_blocks) - 1
        block = transformer.transformer_blocks[block_index]
        unused: list[tuple[str, nn.Module | None]] = [
            (f"{prefix}.transformer_blocks.{block_index}.{name}", getattr(block, name, None))
            for name in ("attn1", "norm2", "attn2", "norm3", "ff")
        ]
        unused.append((f"{prefix}.proj_out", transformer.proj_out))
        unused.append((f"up_blocks.{index}.upsamplers", getattr(last_block, "upsamplers", None)))
        unused += [(f"up_blocks.{i}", self.up_blocks[i]) for i in range(index + 1, len(self.up_blocks))]
        names = []
        for sub, module in unused:
            if module is None:
                continue
            for name, param in module.named_parameters():
                param.requires_grad_(False)
                names.append(f"{sub}.{name}")
        return names

    @classmethod
    def from_pretrained_2d(
        cls, unet_path: str | os.PathLike, *, subfolder: str | None = None
    ) -> ReferenceUNet:
        """Build from a diffusers SD ``unet`` folder (or its pipeline folder), strictly.

        The folder's ``conv_norm_out`` / ``conv_out`` weights are dropped (this model has no output
        head); every other key must match.
        """
        folder = resolve_unet_folder(unet_path, subfolder)
        config, state_dict = read_unet_folder(folder)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(OUTPUT_HEAD_PREFIXES)}
        with torch.device("meta"):  # no time spent on a random init that the weights replace
            model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        check_state_dict(
            model.state_dict(), state_dict, str(folder), fix="pass a Stable Diffusion UNet folder"
        )
        adopt_state_dict(model, state_dict)
        assert_materialised(model)
        return model
