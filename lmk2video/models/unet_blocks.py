"""Down, mid and up blocks of the denoising UNet: diffusers' 2D layers plus AnimateDiff motion modules.

Each block holds exactly the submodules of diffusers' ``CrossAttnDownBlock2D`` / ``DownBlock2D`` /
``UNetMidBlock2DCrossAttn`` / ``CrossAttnUpBlock2D`` / ``UpBlock2D`` under the same names
(``resnets``, ``attentions``, ``downsamplers``, ``upsamplers``), built from the same diffusers classes
with the same arguments, plus ``motion_modules`` (one per resnet/attention pair). Frames are folded
into the batch: every tensor here is (B*F, C, H, W) with the frame index fastest; only the motion
modules look across frames. Order inside a layer (AnimateDiff/AniPortrait): resnet -> attention ->
motion module; in the mid block: resnet -> (attention -> motion module -> resnet).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from lmk2video.models.motion_module import MotionModule, MotionModuleConfig


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """Settings shared by every block of one UNet (diffusers' UNet-level config values)."""

    temb_channels: int
    resnet_eps: float
    resnet_act_fn: str
    resnet_groups: int
    dropout: float
    cross_attention_dim: int
    use_linear_projection: bool
    upcast_attention: bool
    motion: MotionModuleConfig | None = None

    def resnet(self, in_channels: int, out_channels: int, output_scale_factor: float = 1.0) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=self.temb_channels,
            eps=self.resnet_eps,
            groups=self.resnet_groups,
            dropout=self.dropout,
            time_embedding_norm="default",
            non_linearity=self.resnet_act_fn,
            output_scale_factor=output_scale_factor,
            pre_norm=True,
        )

    def transformer(self, channels: int, num_heads: int) -> Transformer2DModel:
        return Transformer2DModel(
            num_heads,
            channels // num_heads,
            in_channels=channels,
            num_layers=1,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.resnet_groups,
            use_linear_projection=self.use_linear_projection,
            upcast_attention=self.upcast_attention,
        )

    def motion_modules(self, channels: int, count: int, enabled: bool) -> nn.ModuleList:
        if self.motion is None or not enabled:
            return nn.ModuleList()
        groups = self.motion.norm_num_groups or self.resnet_groups
        return nn.ModuleList(MotionModule(channels, self.motion, groups) for _ in range(count))


class _Block3D(nn.Module):
    """Shared layer runners; ``gradient_checkpointing`` is switched by ``ModelMixin.enable_gradient_checkpointing``."""

    gradient_checkpointing: bool
    _gradient_checkpointing_func: Any

    def _checkpointing(self) -> bool:
        return torch.is_grad_enabled() and self.gradient_checkpointing

    def _resnet(self, resnet: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self._checkpointing():
            return self._gradient_checkpointing_func(resnet, hidden_states, temb)
        return resnet(hidden_states, temb)

    @staticmethod
    def _attention(
        attention: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cross_attention_kwargs: dict[str, Any] | None,
    ) -> torch.Tensor:
        # Transformer2DModel checkpoints its own transformer blocks when checkpointing is on.
        return attention(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs=cross_attention_kwargs,
            return_dict=False,
        )[0]

    def _motion(self, module: nn.Module, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self._checkpointing():
            return self._gradient_checkpointing_func(module, hidden_states, num_frames)
        return module(hidden_states, num_frames)


class DownBlock3D(_Block3D):
    """``num_layers`` x (resnet [-> cross-attention transformer] [-> motion module]) [-> downsampler]."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        has_cross_attention: bool,
        num_attention_heads: int,
        add_downsample: bool,
        downsample_padding: int,
        use_motion_modules: bool,
        options: BlockOptions,
    ) -> None:
        super().__init__()
        self.has_cross_attention = has_cross_attention
        self.resnets = nn.ModuleList(
            options.resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            options.transformer(out_channels, num_attention_heads)
            for _ in range(num_layers if has_cross_attention else 0)
        )
        self.motion_modules = options.motion_modules(out_channels, num_layers, use_motion_modules)
        self.downsamplers = (
            nn.ModuleList(
                [
                    Downsample2D(
                        out_channels,
                        use_conv=True,
                        out_channels=out_channels,
                        padding=downsample_padding,
                        name="op",
                    )
                ]
            )
            if add_downsample
            else None
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        num_frames: int,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B*F, C_in, H, W) -> ((B*F, C_out, H', W'), skip tensors for the up path)."""
        skips: tuple[torch.Tensor, ...] = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = self._resnet(resnet, hidden_states, temb)
            if self.attentions:
                hidden_states = self._attention(
                    self.attentions[i], hidden_states, encoder_hidden_states, cross_attention_kwargs
                )
            if self.motion_modules:
                hidden_states = self._motion(self.motion_modules[i], hidden_states, num_frames)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class MidBlock3D(_Block3D):
    """resnet -> cross-attention transformer [-> motion module] -> resnet, at constant width."""

    def __init__(
        self,
        *,
        channels: int,
        num_attention_heads: int,
        output_scale_factor: float,
        use_motion_modules: bool,
        options: BlockOptions,
    ) -> None:
        super().__init__()
        self.has_cross_attention = True
        self.resnets = nn.ModuleList(
            options.resnet(channels, channels, output_scale_factor) for _ in range(2)
        )
        self.attentions = nn.ModuleList([options.transformer(channels, num_attention_heads)])
        self.motion_modules = options.motion_modules(channels, 1, use_motion_modules)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        num_frames: int,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """(B*F, C, H, W) -> (B*F, C, H, W)."""
        hidden_states = self._resnet(self.resnets[0], hidden_states, temb)
        hidden_states = self._attention(
            self.attentions[0], hidden_states, encoder_hidden_states, cross_attention_kwargs
        )
        if self.motion_modules:
            hidden_states = self._motion(self.motion_modules[0], hidden_states, num_frames)
        return self._resnet(self.resnets[1], hidden_states, temb)


class UpBlock3D(_Block3D):
    """``num_layers`` x (concat skip -> resnet [-> cross-attention transformer] [-> motion module]) [-> upsampler]."""

    def __init__(
        self,
        *,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        num_layers: int,
        has_cross_attention: bool,
        num_attention_heads: int,
        add_upsample: bool,
        use_motion_modules: bool,
        options: BlockOptions,
    ) -> None:
        super().__init__()
        self.has_cross_attention = has_cross_attention
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(options.resnet(resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(
            options.transformer(out_channels, num_attention_heads)
            for _ in range(num_layers if has_cross_attention else 0)
        )
        self.motion_modules = options.motion_modules(out_channels, num_layers, use_motion_modules)
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        num_frames: int,
        cross_attention_kwargs: dict[str, Any] | None = None,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """(B*F, C_prev, H, W) plus this block's skip tensors (consumed last-first) -> (B*F, C_out, H', W')."""
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips[-1 - i]], dim=1)
            hidden_states = self._resnet(resnet, hidden_states, temb)
            if self.attentions:
                hidden_states = self._attention(
                    self.attentions[i], hidden_states, encoder_hidden_states, cross_attention_kwargs
                )
            if self.motion_modules:
                hidden_states = self._motion(self.motion_modules[i], hidden_states, num_frames)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states
