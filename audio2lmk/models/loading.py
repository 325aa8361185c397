"""Strict weight loading for the audio2lmk models.

diffusers' ``ModelMixin.from_pretrained`` only warns about missing or unexpected weights; here they
are an error that lists the keys. :func:`load_state_dict_strict` is the same check for state dicts
built by the checkpoint converters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from common.errors import UserError


def _key_report(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {', '.join(sorted(missing))}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {', '.join(sorted(unexpected))}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {', '.join(sorted(mismatched))}")
    return "; ".join(parts)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``; any missing, unexpected or mis-shaped key is a UserError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise UserError(
            f"weights in {source} do not fit {type(model).__name__}: "
            f"{_key_report(missing, unexpected, mismatched)}; pass a checkpoint of this model"
        )
    model.load_state_dict(dict(state_dict), strict=True)


class StrictLoadingMixin:
    """Mixed into a diffusers ``ModelMixin`` subclass: ``from_pretrained`` fails on any key mismatch."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """diffusers' ``from_pretrained`` (folder with ``config.json`` + safetensors), strict.

        Raises:
            UserError: the folder cannot be read, or its weights miss or add keys.
        """
        return_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(  # type: ignore[misc]
                pretrained_model_name_or_path, output_loading_info=True, **kwargs
            )
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot load {cls.__name__} from {pretrained_model_name_or_path}: {err}; pass a folder "
                f"written by {cls.__name__}.save_pretrained"
            ) from None
        report = _key_report(
            list(info.get("missing_keys", [])),
            list(info.get("unexpected_keys", [])),
            [str(m) for m in info.get("mismatched_keys", [])],
        )
        if report:
            raise UserError(
                f"weights in {pretrained_model_name_or_path} do not fit {cls.__name__}: {report}; pass a "
                f"folder written by {cls.__name__}.save_pretrained"
            )
        return (model, info) if return_info else model
