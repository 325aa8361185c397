"""Stable Diffusion 1.5 shaped configs, for building full-size models without downloading weights.

The values are those of SD1.5's ``unet/config.json`` (diffusers ``UNet2DConditionModel``) and of
AnimateDiff v2 / AniPortrait's ``inference_v2.yaml`` motion modules. Use them to instantiate
randomly initialised full-size models for benchmarks and memory checks::

    DenoisingUNet.from_config(sd15_denoising_unet_config())
    ReferenceUNet.from_config(sd15_unet_config())
"""

from __future__ import annotations

import copy
from typing import Any

from lmk2video.models.motion_module import MotionModuleConfig

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
"""SD1.5 UNet config (diffusers names). ``attention_head_dim`` is, by diffusers' legacy naming, the
number of heads (8 heads of 40/80/160 channels)."""


def sd15_unet_config(**overrides: Any) -> dict[str, Any]:
    """SD1.5 UNet config for ``UNet2DConditionModel`` / :class:`ReferenceUNet`, with ``overrides`` applied."""
    config = copy.deepcopy(SD15_UNET_CONFIG)
    config.update(overrides)
    return config


def animatediff_v2_motion_config(**overrides: Any) -> dict[str, Any]:
    """Motion-module sub-config of ``mm_sd_v15_v2`` / AniPortrait (8 heads, 1 block, 2 temporal
    self-attentions, 32 positions, all four resolutions and the mid block)."""
    return MotionModuleConfig.from_dict({**MotionModuleConfig().to_dict(), **overrides}).to_dict()


def sd15_denoising_unet_config(
    motion_module: bool | dict[str, Any] = True, **overrides: Any
) -> dict[str, Any]:
    """:class:`DenoisingUNet` config: SD1.5 UNet plus AnimateDiff v2 motion modules.

    ``motion_module``: True for the AnimateDiff v2 layout, False for none (stage-1 training), or a
    dict of motion-module settings that override the v2 values.
    """
    config = sd15_unet_config(**overrides)
    if motion_module is True:
        config["motion_module"] = animatediff_v2_motion_config()
    elif motion_module is False:
        config["motion_module"] = None
    else:
        config["motion_module"] = animatediff_v2_motion_config(**motion_module)
    return config
