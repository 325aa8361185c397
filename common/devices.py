"""The ``device=`` option of every command: checked against this machine before any model is loaded."""

from __future__ import annotations

import torch

from common.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when available, else cpu) or a torch device name that exists on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but no CUDA GPU is available; use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device={name} but this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise UserError(f"device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device
