"""Pose guider: encodes landmark drawings into residuals for every resolution of the denoising UNet's down path.

Contract with the denoising UNet (the ControlNet names, AniPortrait's injection points)
-------------------------------------------------------------------------------------
``PoseGuider(landmarks, reference_landmarks)`` returns :class:`PoseGuiderOutput` with
``down_block_res_samples`` = ``len(unet_block_out_channels) + 1`` tensors of shape ``(B, C_k, F, h_k, w_k)``:

* entry 0 has ``unet_block_out_channels[0]`` channels at the latent resolution ``(H / s, W / s)``
  (``s`` = :attr:`PoseGuider.downsample_factor`, 8 for SD's VAE); the UNet adds it to ``conv_in``'s output;
* entry ``i + 1`` has ``unet_block_out_channels[i]`` channels at the resolution of down block ``i``'s output
  (every down block halves the resolution except the last, as in diffusers' UNets); the UNet adds it to that
  block's output hidden state, the tensor passed on to the next block / the mid block.

``mid_block_res_sample`` (``mid_block_residual=True`` only, else ``None``) matches the mid block's output.

Two architectures, chosen by the config field ``architecture``
---------------------------------------------------------------
``"default"`` (ours), a ControlNet-style encoder:

1. ``stem``: the landmark image goes to the latent resolution through ControlNet's conditioning-embedding
   layout (3x3 convs + SiLU, one stride-2 conv per step of ``block_out_channels``; no normalisation, as in
   ControlNet) and a 3x3 conv to ``unet_block_out_channels[0]`` channels.
2. ``stages[i]`` mirrors UNet down block ``i``: ``layers_per_block`` diffusers ``ResnetBlock2D`` (GroupNorm +
   SiLU) to ``unet_block_out_channels[i]`` channels, then a stride-2 3x3 conv unless ``i`` is the last block.
   GroupNorm rather than AniPortrait's BatchNorm: video diffusion trains with 1-4 clips per GPU and
   BatchNorm's batch statistics over so few, highly correlated frames are noisy, differ between training and
   inference, and mix frames of one clip (its statistics leak information across the batch).
3. ``attentions[i]`` (``reference_attention=True``): reference-landmark cross-attention. With ``T_t`` the
   stage-``i`` features of target frame ``t`` and ``R`` those of the reference landmark image (the same
   stem/stages run once per batch item on ``reference_landmarks``, never per frame), for each position ``p``

       Q = GN_q(T_t) W_q,   K = GN_r(R) W_k,   V = GN_r(R) W_v       (tokens = pixels, per head of width d)
       T'_t[p] = T_t[p] + W_o concat_heads( softmax_j(Q[p] . K[j] / sqrt(d)) V[j] )

   ``W_o`` (and its bias) start at zero, so a new block is the identity. Softmax rows are independent, so the
   ``F * h * w`` queries of all frames of one batch item form one query sequence against the item's ``h * w``
   reference tokens: one scaled-dot-product attention call, keys/values projected once per item.
4. ``zero_convs[k]``: a zero-initialised 1x1 conv on every output (and ``mid_block_zero_conv``), so a new
   guider returns exact zeros and leaves the UNet unchanged; gradients reach the zero convs first, then the
   encoder (and the attention output projections after that).

``"aniportrait"`` reproduces AniPortrait's released ``PoseGuider`` (``src/models/pose_guider.py``, weights
``pose_guider.pth``) exactly, with our module names (see :func:`convert_aniportrait_pose_guider`):

* stem: eight conv + BatchNorm + ReLU layers (3x3 convs; three 4x4 stride-2 convs) to 128 channels at 1/8,
  a 1x1 ``proj`` to ``unet_block_out_channels[0]`` (zero-initialised), times a learnable ``scale`` (init 2);
* stages: conv3x3 + BN + ReLU, then a stride-2 conv3x3 + BN + ReLU to the block's channels (last stage: the
  first conv only) -- for SD1.5 320@1/16, 640@1/32, 1280@1/64, 1280@1/64 of the image size;
* ``attentions[i]``: diffusers ``Transformer2DModel`` (16 heads x 88, GroupNorm 32, GEGLU feed-forward) built,
  as released, with ``cross_attention_dim=None``: its ``BasicTransformerBlock`` has no cross-attention layer,
  so the reference features passed to it are ignored and each block is a per-frame self-attention block.
  Outputs therefore never depend on ``reference_landmarks``. In training mode the released module still runs
  the reference through the BatchNorm layers (updating their running statistics); we do the same, under
  ``no_grad``, so fine-tuning keeps identical BatchNorm buffers.
* outputs are not zero-initialised: only the stem's ``proj`` starts at zero; with attention the other four
  outputs of a fresh model are non-zero (``proj_in``'s bias survives the zero input).

Input scaling (both architectures): landmark drawings as RGB in ``[-1, 1]`` (``pixel / 127.5 - 1``), the VAE's
scaling. AniPortrait trains on ``pixel / 255`` followed by ``Normalize(0.5, 0.5)`` and infers through
``VaeImageProcessor(do_normalize=True)``: also ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, Transformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.utils import BaseOutput
from torch import nn

from common.errors import UserError
from common.weights import StrictLoadMixin, load_checkpoint

ARCHITECTURES = ("default", "aniportrait")
_MAX_LISTED_KEYS = 20


@dataclass
class PoseGuiderOutput(BaseOutput):
    """Residuals for the denoising UNet.

    Attributes:
        down_block_res_samples: ``len(unet_block_out_channels) + 1`` tensors ``(B, C_k, F, h_k, w_k)``; entry 0
            for ``conv_in``'s output, entry ``i + 1`` for down block ``i``'s output.
        mid_block_res_sample: ``(B, C_last, F, h_last, w_last)`` for the mid block's output, or ``None``.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------- default


class _ConditioningStem(nn.Module):
    """Landmark image ``(N, C_in, H, W)`` -> ``(N, out_channels, H / 2**(len(bc) - 1), W / ...)``.

    Same layout and names as diffusers' ``ControlNetConditioningEmbedding`` (``conv_in``, ``blocks``,
    ``conv_out``), but ``conv_out`` keeps its default initialisation: our zero convs sit after it.
    """

    def __init__(self, in_channels: int, block_out_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in pairwise(block_out_channels):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(x))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


class _EncoderStage(nn.Module):
    """Mirror of one UNet down block: ResNet blocks at the input resolution, then an optional stride-2 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, norm_num_groups: int, downsample: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                in_channels=in_channels if k == 0 else out_channels,
                out_channels=out_channels,
                temb_channels=None,
                groups=norm_num_groups,
            )
            for k in range(num_layers)
        )
        self.downsampler = (
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1) if downsample else None
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            h = resnet(h, None)
        return h if self.downsampler is None else self.downsampler(h)


class _ReferenceAttention(nn.Module):
    """Target features ``(B * F, C, h, w)`` attend to reference features ``(B, C, h, w)``; residual output.

    See the module docstring for the math; ``attn.to_out`` starts at zero, so a new block is the identity.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, norm_num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.norm_reference = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.attn = Attention(
            query_dim=channels, cross_attention_dim=channels, heads=heads, dim_head=head_dim, bias=False
        )
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, hidden: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        bf, c, h, w = hidden.shape
        b = reference.shape[0]
        f = bf // b
        # (B*F, C, h, w) -> (B, F*h*w, C): all frames of one item query the same keys.
        query = self.norm(hidden).reshape(b, f, c, h * w).permute(0, 1, 3, 2).reshape(b, f * h * w, c)
        context = self.norm_reference(reference).reshape(b, c, -1).transpose(1, 2)  # (B, h*w, C)
        out = self.attn(query, encoder_hidden_states=context)  # (B, F*h*w, C)
        out = out.reshape(b, f, h * w, c).permute(0, 1, 3, 2).reshape(bf, c, h, w)
        return hidden + out


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


# ----------------------------------------------------------------------------------------- aniportrait


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=kernel_size, stride=stride, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class _AniPortraitStem(nn.Module):
    """AniPortrait's ``conv_layers`` -> ``final_proj`` -> ``* scale``: ``(N, C_in, H, W)`` -> ``(N, C0, H/8, W/8)``."""

    def __init__(self, in_channels: int, block_out_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = block_out_channels
        self.layers = nn.Sequential(
            *_conv_bn_relu(in_channels, in_channels, 3, 1),
            *_conv_bn_relu(in_channels, c1, 4, 2),
            *_conv_bn_relu(c1, c1, 3, 1),
            *_conv_bn_relu(c1, c2, 4, 2),
            *_conv_bn_relu(c2, c2, 3, 1),
            *_conv_bn_relu(c2, c3, 4, 2),
            *_conv_bn_relu(c3, c3, 3, 1),
            *_conv_bn_relu(c3, c4, 3, 1),
        )
        self.proj = nn.Conv2d(c4, out_channels, kernel_size=1)
        self.scale = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layers(x)) * self.scale


def _aniportrait_stage(c_in: int, c_out: int, downsample: bool) -> nn.Sequential:
    layers = _conv_bn_relu(c_in, c_in, 3, 1)
    if downsample:
        layers += _conv_bn_relu(c_in, c_out, 3, 2)
    return nn.Sequential(*layers)


def _he_normal_(modules: Iterable[nn.Module]) -> None:
    """AniPortrait's init: conv weights ~ N(0, 2 / (k_h * k_w * C_in)), biases zero."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            fan_in = m.kernel_size[0] * m.kernel_size[1] * m.in_channels
            nn.init.normal_(m.weight, mean=0.0, std=(2.0 / fan_in) ** 0.5)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------- model


class PoseGuider(StrictLoadMixin, ModelMixin, ConfigMixin):
    """Landmark-image encoder producing the denoising UNet's down-path residuals (see the module docstring).

    Args:
        conditioning_channels: channels of the landmark images (3: RGB drawings).
        unet_block_out_channels: the denoising UNet's ``block_out_channels``; sets the outputs' channels and
            resolutions (down block ``i`` halves the resolution except the last).
        block_out_channels: the stem's channels; it downsamples by ``2 ** (len - 1)`` (4 entries: 8, SD's VAE).
            ``"aniportrait"``: exactly 4 entries, released ``(16, 32, 64, 128)``.
        layers_per_block: ResNet blocks per stage (``"default"``); must be 1 for ``"aniportrait"``.
        norm_num_groups: GroupNorm groups of the ResNet blocks and attention blocks.
        reference_attention: ``"default"``: reference-landmark cross-attention after every stage (then
            ``reference_landmarks`` is required). ``"aniportrait"``: the released ``use_ca`` blocks.
        attention_head_dim: width of one attention head.
        num_attention_heads: heads per attention block; ``None`` = ``channels // attention_head_dim``
            (``"default"`` only; ``"aniportrait"`` needs a number, released 16 x 88).
        mid_block_residual: also return ``mid_block_res_sample`` (``"default"`` only).
        architecture: ``"default"`` (ours) or ``"aniportrait"`` (released AniPortrait guider, exactly). Named
            ``architecture`` because ``variant`` is a ``from_pretrained`` argument (weight-file variant).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        conditioning_channels: int = 3,
        unet_block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        reference_attention: bool = True,
        attention_head_dim: int = 64,
        num_attention_heads: int | None = None,
        mid_block_residual: bool = False,
        architecture: str = "default",
    ) -> None:
        super().__init__()
        unet_channels = tuple(unet_block_out_channels)
        stem_channels = tuple(block_out_channels)
        _check_config(
            unet_channels,
            stem_channels,
            layers_per_block,
            norm_num_groups,
            reference_attention,
            attention_head_dim,
            num_attention_heads,
            mid_block_residual,
            architecture,
        )
        # JSON round trips turn tuples into lists; keep the config in one form.
        self.register_to_config(unet_block_out_channels=unet_channels, block_out_channels=stem_channels)
        self.gradient_checkpointing = False
        if architecture == "aniportrait":
            self._build_aniportrait(conditioning_channels, unet_channels, stem_channels)
        else:
            self._build_default(conditioning_channels, unet_channels, stem_channels)

    def _build_default(
        self, conditioning_channels: int, unet_channels: tuple[int, ...], stem_channels: tuple[int, ...]
    ) -> None:
        cfg = self.config
        last = len(unet_channels) - 1
        previous = (unet_channels[0], *unet_channels[:-1])
        self.stem = _ConditioningStem(conditioning_channels, stem_channels, unet_channels[0])
        self.stages = nn.ModuleList(
            _EncoderStage(c_in, c_out, cfg.layers_per_block, cfg.norm_num_groups, downsample=i < last)
            for i, (c_in, c_out) in enumerate(zip(previous, unet_channels))
        )
        self.attentions = None
        if cfg.reference_attention:
            self.attentions = nn.ModuleList(
                _ReferenceAttention(
                    c,
                    cfg.num_attention_heads or c // cfg.attention_head_dim,
                    cfg.attention_head_dim,
                    cfg.norm_num_groups,
                )
                for c in unet_channels
            )
        self.zero_convs = nn.ModuleList(_zero_conv(c) for c in (unet_channels[0], *unet_channels))
        self.mid_block_zero_conv = _zero_conv(unet_channels[-1]) if cfg.mid_block_residual else None

    def _build_aniportrait(
        self, conditioning_channels: int, unet_channels: tuple[int, ...], stem_channels: tuple[int, ...]
    ) -> None:
        cfg = self.config
        last = len(unet_channels) - 1
        previous = (unet_channels[0], *unet_channels[:-1])
        self.stem = _AniPortraitStem(conditioning_channels, stem_channels, unet_channels[0])
        self.stages = nn.ModuleList(
            _aniportrait_stage(c_in, c_out, i < last)
            for i, (c_in, c_out) in enumerate(zip(previous, unet_channels))
        )
        self.attentions = None
        if cfg.reference_attention:  # released as `use_ca`: self-attention blocks, see the module docstring
            self.attentions = nn.ModuleList(
                Transformer2DModel(
                    num_attention_heads=cfg.num_attention_heads,
                    attention_head_dim=cfg.attention_head_dim,
                    in_channels=c,
                    norm_num_groups=cfg.norm_num_groups,
                    cross_attention_dim=None,
                )
                for c in unet_channels
            )
        _he_normal_([*self.stem.layers, *(m for stage in self.stages for m in stage)])
        nn.init.zeros_(self.stem.proj.weight)
        nn.init.zeros_(self.stem.proj.bias)

    # ------------------------------------------------------------------------------------------ API

    @classmethod
    def aniportrait(
        cls,
        noise_latent_channels: int = 320,
        use_ca: bool = True,
        *,
        conditioning_channels: int = 3,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        norm_num_groups: int = 32,
    ) -> PoseGuider:
        """AniPortrait's released guider (``PoseGuider(noise_latent_channels=320, use_ca=True)`` by default).

        ``noise_latent_channels`` ``c`` gives outputs of ``(c, c, 2c, 4c, 4c)`` channels; the smaller-than-
        released head and group settings exist for tests.
        """
        c = noise_latent_channels
        return cls(
            conditioning_channels=conditioning_channels,
            unet_block_out_channels=(c, 2 * c, 4 * c, 4 * c),
            block_out_channels=(16, 32, 64, 128),
            layers_per_block=1,
            norm_num_groups=norm_num_groups,
            reference_attention=use_ca,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            mid_block_residual=False,
            architecture="aniportrait",
        )

    @classmethod
    def from_aniportrait(
        cls, path: str | Path, *, num_attention_heads: int = 16, norm_num_groups: int = 32
    ) -> PoseGuider:
        """Load AniPortrait's ``pose_guider.pth`` (or a ``.safetensors`` of it) strictly.

        The architecture is read from the weights' shapes; head count and GroupNorm groups do not show in
        the shapes, so they default to the released 16 heads and 32 groups. Raises :class:`UserError` naming
        the file and listing missing / unexpected / mis-shaped keys.
        """
        path = Path(path)
        state_dict = load_checkpoint(path)
        config = aniportrait_config_from_state_dict(
            state_dict,
            num_attention_heads=num_attention_heads,
            norm_num_groups=norm_num_groups,
            source=str(path),
        )
        model = cls(**config)
        model.load_state_dict(convert_aniportrait_pose_guider(state_dict, source=str(path)), strict=True)
        return model

    @property
    def downsample_factor(self) -> int:
        """Landmark-image pixels per latent pixel (input H and W must be multiples of it)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(
        self,
        landmarks: torch.Tensor,
        reference_landmarks: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> PoseGuiderOutput | tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """Encode landmark drawings.

        Args:
            landmarks: ``(B, C_in, F, H, W)`` target landmark drawings in ``[-1, 1]``; ``H`` and ``W`` multiples
                of :attr:`downsample_factor`.
            reference_landmarks: ``(B, C_in, H, W)`` drawing of the reference image's landmarks in ``[-1, 1]``.
                Required by ``"default"`` with ``reference_attention``; ``"aniportrait"`` accepts and ignores it
                (except for BatchNorm statistics in training mode, as released).
            return_dict: return :class:`PoseGuiderOutput` (else a tuple ``(down_block_res_samples, mid)``).
        """
        self._check_inputs(landmarks, reference_landmarks)
        b, c, f, h, w = landmarks.shape
        frames = landmarks.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # frame-major like AniPortrait
        if self.config.architecture == "aniportrait":
            down, mid = self._forward_aniportrait(frames, reference_landmarks), None
        else:
            down, mid = self._forward_default(frames, reference_landmarks)
        down = tuple(_to_video(x, b) for x in down)
        mid = None if mid is None else _to_video(mid, b)
        if not return_dict:
            return down, mid
        return PoseGuiderOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    # ------------------------------------------------------------------------------------ internals

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def _encode_reference(self, reference: torch.Tensor) -> list[torch.Tensor]:
        """Stage features of the reference drawing, computed once per batch item: ``(B, C_i, h_i, w_i)``."""
        r = self._run(self.stem, reference)
        features = []
        for stage in self.stages:
            r = self._run(stage, r)
            features.append(r)
        return features

    def _forward_default(
        self, frames: torch.Tensor, reference: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        h = self._run(self.stem, frames)
        references = None if self.attentions is None else self._encode_reference(reference)
        down = [self.zero_convs[0](h)]
        for i, stage in enumerate(self.stages):
            h = self._run(stage, h)
            if references is not None:
                h = self._run(self.attentions[i], h, references[i])
            down.append(self.zero_convs[i + 1](h))
        mid = None if self.mid_block_zero_conv is None else self.mid_block_zero_conv(h)
        return down, mid

    def _forward_aniportrait(
        self, frames: torch.Tensor, reference: torch.Tensor | None
    ) -> list[torch.Tensor]:
        # BatchNorm layers are not checkpointed (recomputation would update running statistics twice).
        h = self.stem(frames)
        down = [h]
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if self.attentions is not None:
                h = self.attentions[i](h, return_dict=False)[0]
            down.append(h)
        if self.training and self.attentions is not None and reference is not None:
            # The released forward also pushes the reference through every BatchNorm (after the target, per
            # layer); its features then go unused. Same running statistics, no graph.
            with torch.no_grad():
                r = self.stem(reference)
                for stage in self.stages:
                    r = stage(r)
        return down

    def _check_inputs(self, landmarks: torch.Tensor, reference: torch.Tensor | None) -> None:
        cfg = self.config
        if landmarks.ndim != 5 or landmarks.shape[1] != cfg.conditioning_channels:
            raise ValueError(
                f"PoseGuider: landmarks must be (B, {cfg.conditioning_channels}, F, H, W), "
                f"got {tuple(landmarks.shape)}"
            )
        b, c, _, h, w = landmarks.shape
        s = self.downsample_factor
        if h % s or w % s:
            raise ValueError(
                f"PoseGuider: landmark images are {h}x{w}; height and width must be multiples of {s}"
            )
        if reference is None:
            if cfg.architecture == "default" and cfg.reference_attention:
                raise ValueError(
                    "PoseGuider: reference_landmarks (B, C, H, W) is required when reference_attention=True"
                )
            return
        if tuple(reference.shape) != (b, c, h, w):
            raise ValueError(
                f"PoseGuider: reference_landmarks must be (B, C, H, W) = {(b, c, h, w)} to match landmarks, "
                f"got {tuple(reference.shape)}"
            )


def _to_video(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B * F, C, h, w)`` -> ``(B, C, F, h, w)`` (a view)."""
    bf, c, h, w = x.shape
    return x.reshape(batch, bf // batch, c, h, w).permute(0, 2, 1, 3, 4)


def _check_config(
    unet_channels: tuple[int, ...],
    stem_channels: tuple[int, ...],
    layers_per_block: int,
    norm_num_groups: int,
    reference_attention: bool,
    attention_head_dim: int,
    num_attention_heads: int | None,
    mid_block_residual: bool,
    architecture: str,
) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"PoseGuider: architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if not unet_channels or not stem_channels:
        raise ValueError("PoseGuider: unet_block_out_channels and block_out_channels must not be empty")
    if any(c % norm_num_groups for c in unet_channels):
        raise ValueError(
            f"PoseGuider: norm_num_groups={norm_num_groups} must divide every unet_block_out_channels "
            f"entry {unet_channels}"
        )
    if architecture == "aniportrait":
        problems = []
        if len(stem_channels) != 4:
            problems.append(
                f"block_out_channels needs 4 entries (released (16, 32, 64, 128)), got {stem_channels}"
            )
        if len(unet_channels) > 1 and unet_channels[-1] != unet_channels[-2]:
            problems.append(f"the last two unet_block_out_channels must be equal, got {unet_channels}")
        if layers_per_block != 1:
            problems.append(f"layers_per_block must be 1, got {layers_per_block}")
        if mid_block_residual:
            problems.append("mid_block_residual is not part of the released guider")
        if reference_attention and num_attention_heads is None:
            problems.append("num_attention_heads is required (released 16)")
        if problems:
            raise ValueError("PoseGuider(architecture='aniportrait'): " + "; ".join(problems))
        return
    if (
        reference_attention
        and num_attention_heads is None
        and any(c % attention_head_dim for c in unet_channels)
    ):
        raise ValueError(
            f"PoseGuider: attention_head_dim={attention_head_dim} must divide every unet_block_out_channels entry "
            f"{unet_channels} (or set num_attention_heads)"
        )


# ------------------------------------------------------------------------------- AniPortrait weights


def _aniportrait_renames(num_stages: int) -> list[tuple[str, str]]:
    """(AniPortrait prefix, our prefix) pairs; ``scale`` is a whole key, the others are prefixes."""
    renames = [("conv_layers.", "stem.layers."), ("final_proj.", "stem.proj."), ("scale", "stem.scale")]
    for i in range(num_stages):
        renames.append((f"conv_layers_{i + 1}.", f"stages.{i}."))
        renames.append((f"cross_attn{i + 1}.", f"attentions.{i}."))
    return renames


def _rename(key: str, renames: list[tuple[str, str]]) -> str | None:
    for old, new in renames:
        if (old.endswith(".") and key.startswith(old)) or key == old:
            return new + key[len(old) :]
    return None


def _num_aniportrait_stages(keys: Iterable[str]) -> int:
    n = 0
    while any(k.startswith(f"conv_layers_{n + 1}.") for k in keys):
        n += 1
    return n


def aniportrait_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_attention_heads: int = 16,
    norm_num_groups: int = 32,
    source: str = "state dict",
) -> dict[str, Any]:
    """PoseGuider config of an AniPortrait pose-guider state dict, read from its shapes.

    The head count and GroupNorm groups do not show in the shapes: the released 16 heads and 32 groups unless
    given. Raises :class:`UserError` when the state dict is not shaped like AniPortrait's guider.
    """

    def dim(key: str, axis: int) -> int:
        if key not in state_dict:
            raise UserError(
                f"{source}: not an AniPortrait pose guider state dict (no {key}; "
                f"found {_format_keys(sorted(state_dict))}); pass AniPortrait's pose_guider.pth"
            )
        return int(state_dict[key].shape[axis])

    n = max(_num_aniportrait_stages(state_dict), 1)
    unet_channels = [dim(f"conv_layers_{i + 1}.3.weight", 0) for i in range(n - 1)]
    unet_channels.append(dim(f"conv_layers_{n}.0.weight", 0))
    dim("final_proj.weight", 0)
    use_ca = any(k.startswith("cross_attn") for k in state_dict)
    head_dim = 88
    if use_ca:
        inner = dim("cross_attn1.proj_in.weight", 0)
        if inner % num_attention_heads:
            raise UserError(
                f"{source}: attention width {inner} is not a multiple of num_attention_heads={num_attention_heads}"
            )
        head_dim = inner // num_attention_heads
    return {
        "conditioning_channels": dim("conv_layers.0.weight", 1),
        "unet_block_out_channels": tuple(unet_channels),
        "block_out_channels": tuple(dim(f"conv_layers.{j}.weight", 0) for j in (3, 9, 15, 21)),
        "layers_per_block": 1,
        "norm_num_groups": norm_num_groups,
        "reference_attention": use_ca,
        "attention_head_dim": head_dim,
        "num_attention_heads": num_attention_heads,
        "mid_block_residual": False,
        "architecture": "aniportrait",
    }


def convert_aniportrait_pose_guider(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename AniPortrait ``pose_guider.pth`` keys to ``PoseGuider(architecture="aniportrait")`` keys.

    Mapping (prefixes; everything after them, e.g. ``transformer_blocks.0.attn1.to_q.weight`` or BatchNorm's
    ``running_mean``/``running_var``/``num_batches_tracked``, is kept)::

        conv_layers.{j}.     -> stem.layers.{j}.      (j = 0..23: conv at 0,3,..,21; BatchNorm at 1,4,..,22)
        final_proj.          -> stem.proj.
        scale                -> stem.scale
        conv_layers_{i+1}.   -> stages.{i}.           (i = 0..3: conv 0, BN 1 [, conv 3, BN 4])
        cross_attn{i+1}.     -> attentions.{i}.       (diffusers Transformer2DModel names, unchanged)

    Strict: keys matching no rule, keys the architecture (read from the shapes) needs but lacks, and shape
    mismatches raise :class:`UserError` listing them.
    """
    # One head and one group: neither changes a shape, and they fit any channel count.
    config = aniportrait_config_from_state_dict(
        state_dict, num_attention_heads=1, norm_num_groups=1, source=source
    )
    renames = _aniportrait_renames(len(config["unet_block_out_channels"]))
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        new_key = _rename(key, renames)
        if new_key is None:
            unexpected.append(key)
        else:
            converted[new_key] = value
    with torch.device("meta"):
        expected = PoseGuider(**config).state_dict()
    unexpected += [k for k in converted if k not in expected]
    missing = [k for k in expected if k not in converted]
    mismatched = [
        f"{k} {tuple(converted[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    problems = _describe_key_problems(missing, unexpected, mismatched)
    if problems:
        raise UserError(
            f"{source}: does not match AniPortrait's pose guider ({problems}); "
            "pass the unmodified pose_guider.pth of AniPortrait"
        )
    return converted


def convert_to_aniportrait_pose_guider(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_aniportrait_pose_guider`: ``architecture="aniportrait"`` keys -> AniPortrait's.

    The result loads into AniPortrait's own ``PoseGuider``; it is validated like an input of the forward
    converter (:class:`UserError` listing bad keys).
    """
    n = 0
    while any(k.startswith(f"stages.{n}.") for k in state_dict):
        n += 1
    inverse = [(new, old) for old, new in _aniportrait_renames(n)]
    converted, unexpected = {}, []
    for key, value in state_dict.items():
        old_key = _rename(key, inverse)
        if old_key is None:
            unexpected.append(key)
        else:
            converted[old_key] = value
    if unexpected:
        raise UserError(
            f"state dict is not a PoseGuider(architecture='aniportrait') one ({_describe_key_problems([], unexpected)})"
        )
    convert_aniportrait_pose_guider(converted, source="converted state dict")
    return converted


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def _describe_key_problems(missing: list[str], unexpected: list[str], mismatched: list[str] = ()) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_format_keys(list(missing))}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_format_keys(list(unexpected))}")
    if mismatched:
        parts.append(f"{len(mismatched)} keys with wrong shapes: {_format_keys(list(mismatched))}")
    return "; ".join(parts)
