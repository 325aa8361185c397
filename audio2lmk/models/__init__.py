"""audio2lmk networks: diffusers ``ModelMixin`` + ``ConfigMixin`` models with safetensors folders."""

from __future__ import annotations

from audio2lmk.models.audio2mesh import Audio2MeshModel
from audio2lmk.models.audio2pose import Audio2PoseModel, shift_poses

__all__ = ["Audio2MeshModel", "Audio2PoseModel", "shift_poses"]
