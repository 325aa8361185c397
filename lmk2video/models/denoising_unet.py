"""Denoising UNet: SD1.5's UNet over video frames, with reference attention, motion modules and pose injection.

Parameter names equal diffusers' ``UNet2DConditionModel`` for every 2D part (``conv_in``,
``time_embedding``, ``down_blocks.{i}.resnets/attentions/downsamplers``, ``mid_block``, ``up_blocks``,
``conv_norm_out``, ``conv_out``), so a Stable Diffusion 1.5 ``unet`` folder loads strictly, and the
motion modules use AnimateDiff's layout (``{down,up}_blocks.{i}.motion_modules.{j}.temporal_transformer...``,
``mid_block.motion_modules.0...``), so ``mm_sd_v15_v2`` and AniPortrait checkpoints load as they are.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from common.atomic import atomic_output
from common.errors import UserError
from common.weights import (
    StrictLoadMixin,
    adopt_state_dict,
    assert_materialised,
    check_state_dict,
    load_checkpoint,
    read_unet_folder,
    resolve_unet_folder,
)
from lmk2video.models.motion_module import (
    MotionModule,
    MotionModuleConfig,
    is_positional_table,
    positional_table_length,
)
from lmk2video.models.reference_attention import (
    MASK_KWARG,
    READ_KWARG,
    ReferenceBank,
    install_reference_processors,
    reference_processors_installed,
)
from lmk2video.models.unet_blocks import BlockOptions, DownBlock3D, MidBlock3D, UpBlock3D

CROSS_ATTN_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock3D")
PLAIN_DOWN = ("DownBlock2D", "DownBlock3D")
CROSS_ATTN_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock3D")
PLAIN_UP = ("UpBlock2D", "UpBlock3D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock3DCrossAttn")
MOTION_KEY = ".motion_modules."

# diffusers UNet2DConditionModel settings this model does not implement, with the only accepted value.
_FIXED_DIFFUSERS_SETTINGS: dict[str, Any] = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "dual_cross_attention": False,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "projection_class_embeddings_input_dim": None,
    "addition_time_embed_dim": None,
}
# Settings that only matter when an unsupported feature above is on.
_IRRELEVANT_DIFFUSERS_SETTINGS = {"addition_embed_type_num_heads"}


@dataclasses.dataclass
class DeepCache:
    """The input of the last up block, kept from a full UNet pass for the following ``reuse`` passes
    (DeepCache, Ma et al. 2024: deep features change slowly from one denoising step to the next). One per
    context window; ``reuse`` is set by the sampler on the steps that skip the deep blocks."""

    reuse: bool = False
    features: torch.Tensor | None = None


@dataclasses.dataclass
class DenoisingUNetOutput(BaseOutput):
    """``sample``: (B, C_out, F, H, W) prediction (noise, v or x0, whatever the scheduler was trained for)."""

    sample: torch.Tensor


class DenoisingUNet(StrictLoadMixin, ModelMixin, ConfigMixin):
    """SD1.5 UNet over (B, C, F, H, W) latents: frames folded into the batch for every 2D layer.

    Config names are diffusers' (``attention_head_dim`` is, as in diffusers, the number of heads per
    block), plus ``motion_module``: a :class:`MotionModuleConfig` dict, or None for no motion modules.

    Conditioning, all optional:

    - ``reference_hidden_states`` (dict from :meth:`ReferenceUNet.compute_reference_hidden_states`):
      every self-attention also attends to the reference UNet's tokens of the same layer.
    - ``down_block_res_samples`` / ``mid_block_res_sample`` (the pose guider's ControlNet-contract
      outputs), injected at AniPortrait's points, which differ from ControlNet's: entry 0 is added
      to the sample right after ``conv_in`` (so the first skip connection carries it too); entry
      ``i + 1`` is added to the sample that down block ``i`` passes on, *after* the block has emitted
      its skip tensors (so it reaches the next block, not the skips); ``mid_block_res_sample`` is added
      to the mid block's output. Shapes: entry 0 (B, C_0, F, H, W); entry ``i + 1`` the output of
      down block ``i``, (B, C_i, F, H/2^(i+1), W/2^(i+1)) except that the last block does not downsample.
    """

    _supports_gradient_checkpointing = True
    strict_load_hint = (
        "for a Stable Diffusion 'unet' folder use DenoisingUNet.from_pretrained_2d; otherwise save the model "
        "again with save_pretrained or convert the original checkpoint (python -m lmk2video.convert)"
    )

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        attention_head_dim: int | tuple[int, ...] = 8,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        motion_module: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        num_blocks = len(block_out_channels)
        if len(down_block_types) != num_blocks or len(up_block_types) != num_blocks:
            raise ValueError(
                "down_block_types, up_block_types and block_out_channels must have the same length"
            )
        unknown = [t for t in down_block_types if t not in CROSS_ATTN_DOWN + PLAIN_DOWN]
        unknown += [t for t in up_block_types if t not in CROSS_ATTN_UP + PLAIN_UP]
        if unknown:
            raise ValueError(f"unsupported block types {unknown}")
        heads = (
            (attention_head_dim,) * num_blocks
            if isinstance(attention_head_dim, int)
            else tuple(attention_head_dim)
        )
        if len(heads) != num_blocks:
            raise ValueError("attention_head_dim must be an int or one value per block")
        motion = MotionModuleConfig.from_dict(motion_module) if motion_module is not None else None
        if motion is not None:  # store every motion-module setting, not just the ones given
            self.register_to_config(motion_module=motion.to_dict())

        time_embed_dim = block_out_channels[0] * 4
        options = BlockOptions(
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            dropout=dropout,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            motion=motion,
        )

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                DownBlock3D(
                    in_channels=in_ch,
                    out_channels=out_ch,
                    num_layers=layers_per_block,
                    has_cross_attention=block_type in CROSS_ATTN_DOWN,
                    num_attention_heads=heads[i],
                    add_downsample=i < num_blocks - 1,
                    downsample_padding=downsample_padding,
                    use_motion_modules=motion is not None and motion.in_down_block(i),
                    options=options,
                )
            )

        self.mid_block = MidBlock3D(
            channels=block_out_channels[-1],
            num_attention_heads=heads[-1],
            output_scale_factor=mid_block_scale_factor,
            use_motion_modules=motion is not None and motion.mid_block,
            options=options,
        )

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(heads))
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            in_ch = reversed_channels[min(i + 1, num_blocks - 1)]
            self.up_blocks.append(
                UpBlock3D(
                    in_channels=in_ch,
                    prev_output_channel=prev_ch,
                    out_channels=out_ch,
                    num_layers=layers_per_block + 1,
                    has_cross_attention=block_type in CROSS_ATTN_UP,
                    num_attention_heads=reversed_heads[i],
                    add_upsample=i < num_blocks - 1,
                    use_motion_modules=motion is not None and motion.in_up_block(i, num_blocks),
                    options=options,
                )
            )
        self.num_upsamplers = num_blocks - 1

        self.conv_norm_out = nn.GroupNorm(
            num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps
        )
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

        self.reference_attention_names: list[str] = install_reference_processors(self, "read")

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        reference_hidden_states: ReferenceBank | None = None,
        down_block_res_samples: tuple[torch.Tensor, ...] | None = None,
        mid_block_res_sample: torch.Tensor | None = None,
        reference_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        deep_cache: DeepCache | None = None,
    ) -> DenoisingUNetOutput | tuple[torch.Tensor]:
        """Denoise a clip.

        Args:
            sample: (B, C_in, F, H, W) noisy latents.
            timestep: scalar or (B,) diffusion timesteps (shared by the frames of a sample).
            encoder_hidden_states: (B, L, cross_attention_dim) conditioning tokens (e.g. CLIP image
                embeddings), shared by the frames of a sample.
            reference_hidden_states: reference bank, name -> (B, L_i, C_i) (or batch 1, shared).
            down_block_res_samples: len(down_blocks) + 1 tensors (B, C, F, h, w) (or None entries);
                see the class docstring.
            mid_block_res_sample: (B, C_last, F, h, w) added to the mid block's output.
            reference_mask: (B,) bool; False switches reference attention off for that sample
                (AniPortrait's unconditional branch under classifier-free guidance).
            return_dict: return :class:`DenoisingUNetOutput` (True) or a 1-tuple.
            deep_cache: DeepCache-style reuse (:class:`DeepCache`): with ``reuse`` set and features stored, only
                ``conv_in``, the first down block and the last up block run, on the stored input of that up block;
                otherwise the whole UNet runs and that input is stored.

        Returns:
            (B, C_out, F, H, W) prediction.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, C, F, H, W), got shape {tuple(sample.shape)}")
        batch, channels, frames, height, width = sample.shape
        if channels != self.config.in_channels:
            raise ValueError(f"sample has {channels} channels, the UNet expects {self.config.in_channels}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states must be (B={batch}, L, D), got shape {tuple(encoder_hidden_states.shape)}"
            )
        x = _fold(sample)
        cross_attention_kwargs = self._reference_kwargs(reference_hidden_states, reference_mask, batch)
        injections = self._fold_injections(down_block_res_samples, mid_block_res_sample, batch, frames)

        forward_upsample_size = any(s % 2**self.num_upsamplers for s in (height, width))
        if self.config.center_input_sample:
            x = 2 * x - 1.0

        emb = self._time_embedding(timestep, batch, x).repeat_interleave(frames, dim=0)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)

        x = self.conv_in(x)
        if injections[0] is not None:
            x = _add_checked(x, injections[0], "down_block_res_samples[0] (after conv_in)")
        skips: tuple[torch.Tensor, ...] = (x,)
        reuse = deep_cache is not None and deep_cache.reuse and deep_cache.features is not None
        if reuse and (deep_cache.features.shape[0] != x.shape[0] or len(self.up_blocks) < 2):
            reuse = False  # stored for another batch (guidance switched on or off): compute afresh
        last = len(self.up_blocks) - 1
        for i, block in enumerate(self.down_blocks[:1] if reuse else self.down_blocks):
            x, block_skips = block(x, emb, context, frames, cross_attention_kwargs)
            skips += block_skips
            if injections[i + 1] is not None:
                x = _add_checked(
                    x, injections[i + 1], f"down_block_res_samples[{i + 1}] (after down block {i})"
                )

        if reuse:
            x = deep_cache.features
            skips = skips[: len(self.up_blocks[last].resnets)]  # the shallow skips the last up block takes
        else:
            x = self.mid_block(x, emb, context, frames, cross_attention_kwargs)
            if injections[-1] is not None:
                x = _add_checked(x, injections[-1], "mid_block_res_sample")

        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            if reuse and i < last:
                continue
            if i == last and deep_cache is not None and not reuse:
                deep_cache.features = x
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            if i < last and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            x = block(x, block_skips, emb, context, frames, cross_attention_kwargs, upsample_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = _unfold(x, batch)
        return DenoisingUNetOutput(sample=out) if return_dict else (out,)

    def _time_embedding(
        self, timestep: torch.Tensor | float | int, batch: int, like: torch.Tensor
    ) -> torch.Tensor:
        """(B, 4 * block_out_channels[0]) embedding, computed as diffusers' UNet2DConditionModel does."""
        if not torch.is_tensor(timestep):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if like.device.type == "mps":
                dtype = torch.float32 if dtype == torch.float64 else torch.int32
            timestep = torch.tensor([timestep], dtype=dtype, device=like.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(like.device)
        if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
            raise ValueError(f"timestep must be a scalar or (B={batch},), got shape {tuple(timestep.shape)}")
        t_emb = self.time_proj(timestep.expand(batch)).to(dtype=like.dtype)
        return self.time_embedding(t_emb)

    def _reference_kwargs(
        self, bank: ReferenceBank | None, mask: torch.Tensor | None, batch: int
    ) -> dict[str, Any] | None:
        if bank is None:
            if mask is not None:
                raise ValueError("reference_mask needs reference_hidden_states")
            return None
        if not reference_processors_installed(self, "read"):
            install_reference_processors(self, "read")
        missing = sorted(set(self.reference_attention_names) - set(bank))
        unexpected = sorted(set(bank) - set(self.reference_attention_names))
        if missing or unexpected:
            raise ValueError(
                f"reference_hidden_states do not match this UNet's self-attentions: missing {missing}, "
                f"unexpected {unexpected}; compute them with a ReferenceUNet of the same architecture"
            )
        fixed = {}
        for name, value in bank.items():
            if value.ndim != 3 or value.shape[0] not in (1, batch):
                raise ValueError(
                    f"reference_hidden_states[{name!r}] must be (B={batch} or 1, L, C), got {tuple(value.shape)}"
                )
            fixed[name] = value.expand(batch, -1, -1) if value.shape[0] != batch else value
        if mask is not None and tuple(mask.shape) != (batch,):
            raise ValueError(f"reference_mask must be (B={batch},), got {tuple(mask.shape)}")
        return {READ_KWARG: fixed, MASK_KWARG: mask}

    def _fold_injections(
        self,
        down: tuple[torch.Tensor, ...] | None,
        mid: torch.Tensor | None,
        batch: int,
        frames: int,
    ) -> list[torch.Tensor | None]:
        """Folded pose-guider residuals: len(down_blocks) + 1 down entries, then the mid entry (None: nothing)."""
        expected = len(self.down_blocks) + 1
        if down is None:
            down = (None,) * expected
        elif len(down) != expected:
            raise ValueError(
                f"down_block_res_samples must hold {expected} tensors (one after conv_in, one per down block), "
                f"got {len(down)}"
            )
        folded: list[torch.Tensor | None] = []
        for i, tensor in enumerate([*down, mid]):
            if tensor is None:
                folded.append(None)
                continue
            name = f"down_block_res_samples[{i}]" if i < expected else "mid_block_res_sample"
            if tensor.ndim != 5 or tensor.shape[0] != batch or tensor.shape[2] != frames:
                raise ValueError(
                    f"{name} must be (B={batch}, C, F={frames}, h, w), got {tuple(tensor.shape)}"
                )
            folded.append(_fold(tensor))
        return folded

    # ------------------------------------------------------------------ parameters and freezing

    @property
    def has_motion_modules(self) -> bool:
        return self.config.motion_module is not None

    def named_motion_module_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters of the motion modules (stage 2 trains only these)."""
        return ((n, p) for n, p in self.named_parameters() if MOTION_KEY in f".{n}")

    def named_2d_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter outside the motion modules (the SD1.5 UNet's; stage 1 trains these)."""
        return ((n, p) for n, p in self.named_parameters() if MOTION_KEY not in f".{n}")

    def set_motion_modules_trainable(self, trainable: bool) -> None:
        for _, p in self.named_motion_module_parameters():
            p.requires_grad_(trainable)

    def set_2d_trainable(self, trainable: bool) -> None:
        for _, p in self.named_2d_parameters():
            p.requires_grad_(trainable)

    # ------------------------------------------------------------------ loading

    def motion_module_state_dict(self) -> dict[str, torch.Tensor]:
        """Motion-module weights in AnimateDiff's key layout (includes the ``pos_encoder.pe`` tables)."""
        return {k: v for k, v in self.state_dict().items() if MOTION_KEY in f".{k}"}

    def save_motion_modules(self, path: str | os.PathLike) -> None:
        """Write :meth:`motion_module_state_dict` to ``path`` (.safetensors, or .pth/.ckpt via torch.save)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.motion_module_state_dict().items()}
        with atomic_output(path) as tmp:
            if Path(path).suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(state, str(tmp))
            else:
                torch.save(state, tmp)

    def load_motion_modules(self, path: str | os.PathLike) -> None:
        """Load AnimateDiff-format motion modules (``mm_sd_v15_v2.ckpt``, AniPortrait's ``motion_module.pth``).

        Every motion-module key is required and no other key is allowed. The positional tables
        (``...pos_encoder.pe``) are deterministic and may be absent; when present their length must
        equal the config's ``max_position``.
        """
        self.load_motion_module_state_dict(load_checkpoint(path), source=str(path))

    def load_motion_module_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Strictly load a motion-module state dict (see :meth:`load_motion_modules`)."""
        expected = self.motion_module_state_dict()
        if not expected:
            raise UserError(
                f"cannot load motion modules from {source}: this DenoisingUNet has none (motion_module=None); "
                "build it with a motion_module config"
            )
        state = dict(state_dict)
        length = positional_table_length(state)
        if length is not None and length != self.config.motion_module["max_position"]:
            raise UserError(
                f"{source} has positional tables for {length} frames but the model's motion_module.max_position "
                f"is {self.config.motion_module['max_position']}; set max_position={length} "
                "(AnimateDiff v1: 24, v2: 32)"
            )
        for key, value in expected.items():
            if is_positional_table(key) and key not in state:
                state[key] = value
        check_state_dict(
            expected,
            state,
            source,
            fix="pass an AnimateDiff motion-module checkpoint whose layout matches the motion_module config",
        )
        self.load_state_dict(state, strict=False)

    @classmethod
    def from_pretrained_2d(
        cls,
        unet_path: str | os.PathLike,
        motion_module_path: str | os.PathLike | None = None,
        *,
        subfolder: str | None = None,
        **config_overrides: Any,
    ) -> DenoisingUNet:
        """Build from a diffusers SD1.5 ``unet`` folder, plus AnimateDiff motion modules.

        Args:
            unet_path: the ``unet`` folder (config.json + diffusion_pytorch_model.safetensors/.bin) or
                the pipeline folder that holds it. Loaded strictly into the 2D part.
            motion_module_path: AnimateDiff checkpoint (.ckpt/.pth/.safetensors), loaded strictly;
                None keeps freshly initialised motion modules (zero output projection: identity).
            subfolder: explicit subfolder of ``unet_path``.
            config_overrides: DenoisingUNet config values to change; ``motion_module`` defaults to the
                AnimateDiff v2 layout, ``motion_module=None`` builds none.
        """
        folder = resolve_unet_folder(unet_path, subfolder)
        raw_config, state_dict = read_unet_folder(folder)
        config = config_from_diffusers_unet(raw_config, source=str(folder / "config.json"))
        config["motion_module"] = MotionModuleConfig().to_dict()
        valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config_overrides) - valid)
        if unknown:
            raise UserError(
                f"unknown DenoisingUNet config overrides {unknown}; valid names are {sorted(valid)}"
            )
        config.update(config_overrides)
        with torch.device("meta"):  # no time spent on a random init that the weights replace
            model = cls.from_config(config)
        expected_2d = {k: v for k, v in model.state_dict().items() if MOTION_KEY not in f".{k}"}
        check_state_dict(expected_2d, state_dict, str(folder), fix="pass a Stable Diffusion 1.5 style UNet")
        adopt_state_dict(model, state_dict)
        for module in model.modules():
            if isinstance(module, MotionModule):
                module.to_empty(device="cpu")
                module.reset_parameters()
        assert_materialised(model)
        if motion_module_path is not None:
            model.load_motion_modules(motion_module_path)
        return model


def config_from_diffusers_unet(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """DenoisingUNet config values from a diffusers ``UNet2DConditionModel`` config (motion_module unset).

    Settings of features this model does not implement must hold their default; anything else is an error.
    """
    names = [
        n for n in inspect.signature(DenoisingUNet.__init__).parameters if n not in ("self", "motion_module")
    ]
    config: dict[str, Any] = {}
    unsupported = []
    for key, value in raw.items():
        if key.startswith("_") or key in _IRRELEVANT_DIFFUSERS_SETTINGS:
            continue
        if key in names:
            config[key] = value
        elif key == "mid_block_type":
            if value not in MID_BLOCK_TYPES:
                unsupported.append(f"{key}={value!r}")
        elif key in _FIXED_DIFFUSERS_SETTINGS:
            fixed = _FIXED_DIFFUSERS_SETTINGS[key]
            ok = value == fixed or (isinstance(value, list | tuple) and all(v == fixed for v in value))
            if not ok and not (fixed is None and value in (False, [])):
                unsupported.append(f"{key}={value!r}")
        else:
            unsupported.append(f"{key}={value!r} (unknown setting)")
    if isinstance(config.get("layers_per_block"), list | tuple):
        values = set(config["layers_per_block"])
        if len(values) != 1:
            unsupported.append(f"layers_per_block={config['layers_per_block']!r}")
        else:
            config["layers_per_block"] = values.pop()
    if isinstance(config.get("cross_attention_dim"), list | tuple):
        unsupported.append(f"cross_attention_dim={config['cross_attention_dim']!r}")
    if unsupported:
        raise UserError(
            f"{source}: unsupported UNet settings {', '.join(unsupported)}; DenoisingUNet supports "
            "Stable Diffusion 1.x/2.x style UNets (no class/addition embeddings, one transformer layer per block)"
        )
    return config


def _fold(video: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frame index fastest."""
    b, c, f, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _unfold(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    bf, c, h, w = frames.shape
    return frames.reshape(batch, bf // batch, c, h, w).permute(0, 2, 1, 3, 4)


def _add_checked(x: torch.Tensor, residual: torch.Tensor, name: str) -> torch.Tensor:
    if residual.shape != x.shape:
        raise ValueError(
            f"{name} has (folded) shape {tuple(residual.shape)} but the UNet sample there is {tuple(x.shape)}"
        )
    return x + residual
