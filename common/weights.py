"""Reading checkpoint files and loading them strictly.

Every loader in lmk2video goes through :func:`strict_load`: a missing key, an unexpected key or a
shape mismatch is a :class:`common.errors.UserError` that lists the offending keys and names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from torch import nn

from common.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
_MAX_LISTED = 30


def format_keys(keys: Iterable[str], limit: int = _MAX_LISTED) -> str:
    """Sorted, comma-separated key list, cut after ``limit`` names with a count of the rest."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    if len(keys) > limit:
        shown += f", ... ({len(keys) - limit} more)"
    return shown


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, ``.bin``, ``.pth``, ``.pt`` or ``.ckpt`` onto the CPU.

    A dict nested under ``"state_dict"`` (PyTorch Lightning, AnimateDiff training checkpoints) is
    unwrapped. Entries that are not tensors (``global_step``, config strings) are dropped: they are
    metadata, not weights. Pickle files are read with ``weights_only=True``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(
            f"checkpoint {path} has an unknown extension {path.suffix!r}; "
            f"expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    data = read_checkpoint_file(path)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise UserError(f"checkpoint {path} holds a {type(data).__name__}, not a state dict")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"checkpoint {path} holds no tensors")
    check_finite(tensors, str(path))
    return tensors


def read_checkpoint_file(path: Path, hint: str = "") -> Any:
    """What a ``.safetensors`` file or a ``torch.save`` file (read with ``weights_only=True``) holds, on the CPU.

    An empty or unreadable file is a :class:`UserError` saying why, in our words (``hint``: what to pass
    instead, appended to the unreadable case)."""
    if path.stat().st_size == 0:
        raise UserError(
            f"checkpoint {path} is empty (0 bytes): the download or copy did not finish; fetch it again"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, wrong format, pickled code objects
        reason = unreadable_reason(path, err) + (f"; {hint}" if hint else "")
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None


def unreadable_reason(path: Path, err: Exception) -> str:
    """Why a checkpoint file could not be read, in our words (not the library's advice), and what to do."""
    text = str(err)
    if "weights_only" in text or "Unsupported global" in text:
        return (
            "it holds Python objects besides tensors, which are not loaded (a checkpoint must not run "
            "code); save its state dict from a trusted copy (torch.save(model.state_dict(), ...)) or "
            "convert it to .safetensors"
        )
    if path.suffix.lower() == ".safetensors":
        return "not a complete .safetensors file (truncated or damaged); download or save it again"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "the file is truncated or damaged (its zip archive is incomplete); download or save it again"
    return (
        "not a PyTorch checkpoint (or one truncated or damaged beyond recognition); "
        "check that it is the right file and download it again"
    )


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity: they would only show as a broken output much later."""
    bad = [
        k
        for k, v in state.items()
        if (v.is_floating_point() or v.is_complex()) and v.numel() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise UserError(
            f"{source} holds NaN or infinite values in {len(bad)} weight(s): {format_keys(bad)}; the model "
            "diverged when it was trained or the file is damaged: use an earlier checkpoint or fetch it again"
        )


def check_state_dict(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], source: str, fix: str = ""
) -> None:
    """Raise a :class:`UserError` listing missing keys, unexpected keys and shape mismatches.

    ``expected`` is usually ``module.state_dict()``; ``source`` names the file (or files) the
    weights came from; ``fix`` is appended to the message as the suggested remedy.
    """
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    mismatched = [
        f"{k} (checkpoint {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {format_keys(mismatched)}")
    if problems:
        message = f"weights from {source} do not fit the model: " + "; ".join(problems)
        raise UserError(message + (f"; {fix}" if fix else ""))


def strict_load(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, fix: str = ""
) -> None:
    """Load ``state_dict`` into ``module`` with every key required and none unexpected."""
    check_state_dict(module.state_dict(), state_dict, source, fix)
    module.load_state_dict(state_dict, strict=True)


def adopt_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Make the tensors of ``state_dict`` the parameters of a model built on the meta device.

    Keys must already be checked (:func:`check_state_dict`); tensors are cast to the model's dtype.
    Parameters not in ``state_dict`` stay on the meta device for the caller to materialise.
    """
    expected = model.state_dict()
    state = {k: v.to(dtype=expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state, strict=False, assign=True)


def assert_materialised(model: nn.Module) -> None:
    """Raise if a parameter or buffer of ``model`` is still on the meta device (a loader bug)."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__} kept uninitialised tensors after loading: {left[:10]}")


def resolve_unet_folder(path: str | os.PathLike, subfolder: str | None = None) -> Path:
    """The folder holding a diffusers UNet's ``config.json``.

    Accepts the UNet folder itself or a pipeline root with a ``unet/`` subfolder (Stable Diffusion
    layout); ``subfolder`` picks another subfolder explicitly.
    """
    root = Path(path).expanduser()
    folder = root / subfolder if subfolder else root
    if (
        not (folder / "config.json").is_file()
        and subfolder is None
        and (root / "unet" / "config.json").is_file()
    ):
        folder = root / "unet"
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{folder} is not a diffusers UNet folder (no config.json); pass the Stable Diffusion 1.5 "
            "'unet' folder or the pipeline folder that contains it"
        )
    return folder


def read_unet_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config dict and state dict of a diffusers model folder (safetensors preferred over .bin)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {folder / 'config.json'}: {err}") from None
    for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME):
        if (folder / name).is_file():
            return config, load_checkpoint(folder / name)
    others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
    hint = f" (found {', '.join(others)}; pass the full-precision files)" if others else ""
    raise UserError(f"{folder} has no {SAFETENSORS_WEIGHTS_NAME} or {WEIGHTS_NAME}{hint}")


class StrictLoadMixin:
    """Makes diffusers' ``from_pretrained`` strict: missing or unexpected keys raise a :class:`UserError`.

    diffusers only logs a warning for both; put this mixin before ``ModelMixin`` in the bases.
    ``strict_load_hint`` is appended to the error as the suggested fix.
    """

    strict_load_hint = "save the model again with save_pretrained or convert the original checkpoint"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        want_info = kwargs.pop("output_loading_info", False)
        folder = Path(pretrained_model_name_or_path).expanduser()
        if folder.is_dir():
            check_model_folder(folder, cls.__name__, kwargs.get("subfolder"))
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, output_loading_info=True, **kwargs
            )
        except UserError:
            raise
        except Exception as err:  # no folder, unreadable files: diffusers' advice does not apply to users
            if folder.is_dir():
                cls._diagnose(folder / kwargs["subfolder"] if kwargs.get("subfolder") else folder)
            reason = str(err).split("\n")[0] if isinstance(err, OSError) and not folder.is_dir() else ""
            raise UserError(
                f"cannot load {cls.__name__} from {pretrained_model_name_or_path}"
                + (f" ({reason})" if reason else "")
                + f"; pass a folder written by {cls.__name__}.save_pretrained"
            ) from None
        problems = []
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = [k if isinstance(k, str) else str(k[0]) for k in info.get(kind, [])]
            if keys:
                problems.append(f"{len(keys)} {kind.replace('_', ' ')}: {format_keys(keys)}")
        if problems:
            raise UserError(
                f"{pretrained_model_name_or_path} does not hold a complete {cls.__name__}: "
                + "; ".join(problems)
                + f"; {cls.strict_load_hint}"
            )
        check_finite(dict(model.state_dict()), str(pretrained_model_name_or_path))
        return (model, info) if want_info else model

    @classmethod
    def _diagnose(cls, folder: Path) -> None:
        """After a failed load: compare the folder's weights with the model its config describes, and raise
        our error listing missing, unexpected or mis-shaped keys (returns when that finds nothing)."""
        try:
            config = json.loads((folder / "config.json").read_text())
            expected = cls.from_config(config).state_dict()
        except Exception:  # the config itself is the problem: the generic message says so
            return
        for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME):
            if (folder / name).is_file():
                check_state_dict(
                    expected, load_checkpoint(folder / name), str(folder / name), cls.strict_load_hint
                )
                return


def check_model_folder(folder: Path, what: str, subfolder: str | None = None) -> None:
    """Read a ``save_pretrained`` folder's config and weight files ourselves, so that an unreadable one is
    reported in our words (empty, truncated, not JSON) before a library gives its own advice."""
    folder = folder / subfolder if subfolder else folder
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{folder} has no config.json; pass a folder written by {what}.save_pretrained")
    try:
        json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"{config} is not valid JSON ({err}); save the model again or fetch it again"
        ) from None
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        if weights.stat().st_size == 0:
            raise UserError(
                f"{weights} is empty (0 bytes): the copy or download did not finish; fetch it again"
            )
        if weights.suffix == ".safetensors":
            _check_safetensors_header(weights)


def _check_safetensors_header(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the data: check that all of it is
    there (a truncated file is otherwise reported by the library as an obscure parse error)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        try:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length)) if 0 < length <= size - 8 else None
        except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise UserError(
            f"{path} is not a complete .safetensors file (damaged header); fetch or save it again"
        )
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise UserError(
            f"{path} is truncated ({size} of {8 + length + end} bytes); the copy or download did not finish: "
            "fetch it again"
        )
