"""Audio2Mesh: speech -> per-frame offsets of the 468 MediaPipe face-mesh vertices.

``audio (B, N) -> audio encoder -> (B, T, D) -> MLP head -> (B, T, 468, 3)`` offsets in the mesh's
units (cm for :mod:`common.geometry`'s pose-free metric mesh), added to a reference (neutral)
mesh of the subject when one is given. The head's output layer is zero-initialised, so an
untrained model returns the reference mesh.

AniPortrait's audio2mesh is the configuration ``encoder={"type": "wav2vec2", ...}``,
``head_hidden_dims=(512,)``, ``head_activation=None`` (two linear layers with nothing between
them), ``fps=30``; :func:`audio2lmk.convert.convert_aniportrait_audio2mesh` loads its weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from audio2lmk.encoders import DEFAULT_WAV2VEC2, build_audio_encoder
from common.audio import num_frames_for
from common.geometry import NUM_VERTICES
from common.weights import StrictLoadMixin


class Audio2MeshModel(StrictLoadMixin, ModelMixin, ConfigMixin):
    """Audio encoder + MLP head predicting per-vertex mesh offsets.

    Args:
        encoder: audio encoder config ``{"type": "wav2vec2" | "mel", ...}``
            (:func:`audio2lmk.encoders.build_audio_encoder`). ``None``: wav2vec2 weights from
            ``facebook/wav2vec2-base-960h`` (downloads on first use). The stored config always
            holds the resolved architecture, so a saved folder reloads offline.
        head_hidden_dims: hidden widths of the head; ``(512,)`` is AniPortrait's.
        head_activation: activation between head layers (a diffusers ``get_activation`` name such
            as ``"gelu"`` or ``"silu"``); ``None`` is AniPortrait's purely linear head.
        num_vertices: mesh vertices (MediaPipe's 468).
        fps: video frame rate; sets the default frame count of an audio clip.
    """

    @register_to_config
    def __init__(
        self,
        encoder: Mapping[str, Any] | None = None,
        head_hidden_dims: Sequence[int] = (512,),
        head_activation: str | None = None,
        num_vertices: int = NUM_VERTICES,
        fps: float = 30.0,
    ) -> None:
        super().__init__()
        self.audio_encoder = build_audio_encoder(
            encoder if encoder is not None else {"type": "wav2vec2", "pretrained": DEFAULT_WAV2VEC2}
        )
        self.register_to_config(encoder=self.audio_encoder.to_config())
        dims = [self.audio_encoder.output_dim, *[int(d) for d in head_hidden_dims], num_vertices * 3]
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.activation = get_activation(head_activation) if head_activation else nn.Identity()
        self.num_vertices = num_vertices

    def num_frames(self, num_samples: int) -> int:
        """Frames covered by ``num_samples`` 16 kHz samples at the model's fps (rounded up)."""
        return num_frames_for(num_samples, self.config.fps, self.audio_encoder.sample_rate)

    def freeze_feature_encoder(self) -> None:
        """Freeze the audio encoder's frame-local front end (wav2vec2's CNN)."""
        self.audio_encoder.freeze_feature_encoder()

    def forward(
        self,
        audio: torch.Tensor,
        num_frames: int | None = None,
        reference_mesh: torch.Tensor | None = None,
        phones: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the mesh sequence.

        Args:
            audio: ``(B, N)`` float waveforms, 16 kHz mono.
            num_frames: output frames ``T``; default :meth:`num_frames` of ``N``.
            reference_mesh: ``(468, 3)`` or ``(B, 468, 3)`` neutral mesh to add the offsets to.
            phones: the audio's phone ids for a phoneme encoder (:meth:`AudioEncoder.encode`), if known.

        Returns:
            ``(B, T, 468, 3)``: offsets, or reference mesh + offsets when one is given.
        """
        frames = self.num_frames(audio.shape[1]) if num_frames is None else int(num_frames)
        hidden = self.audio_encoder.encode(audio, frames, phones)
        for layer in self.head[:-1]:
            hidden = self.activation(layer(hidden))
        offsets = self.head[-1](hidden).unflatten(-1, (self.num_vertices, 3))
        if reference_mesh is None:
            return offsets
        reference_mesh = reference_mesh.to(offsets)
        if reference_mesh.ndim == 2:
            reference_mesh = reference_mesh[None]
        return offsets + reference_mesh[:, None]
