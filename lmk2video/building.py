"""Building and writing lmk2video model folders (the library behind ``python -m lmk2video.init`` and training).

:func:`build_pipeline` makes the :class:`~lmk2video.pipeline.LandmarkVideoPipeline` that a ``model`` config
describes (``conf/lmk2video/groups/model/*.yaml``, chosen by an experiment):

* with ``model.pretrained.sd15_path``: both UNets' 2-D weights from a diffusers Stable Diffusion 1.5 folder
  (:meth:`DenoisingUNet.from_pretrained_2d`, :meth:`ReferenceUNet.from_pretrained_2d`; the architecture is
  the folder's), the VAE from ``vae_path`` or ``sd15_path/vae``; otherwise both UNets are randomly
  initialised with the *same* 2-D weights (as SD1.5 initialises both) and the VAE randomly;
  ``model.vae: null`` builds a pixel-space model (no VAE; the UNets denoise RGB frames, the pose guider
  must not downsample);
* the image encoder from ``image_encoder_path`` (a ``CLIPVisionModelWithProjection`` folder, or a folder
  holding one as ``image_encoder/``), else random; its image processor is CLIP's, at the encoder's size;
* motion modules (when ``model.motion_module`` is set) from ``motion_module_path`` (AnimateDiff format),
  else freshly initialised (identity: zero output projections);
* the pose guider always fresh, its outputs zero-initialised (the model starts as the unconditioned UNet);
* the scheduler from ``model.scheduler``.

Every pretrained file is loaded strictly. :func:`write_model_folder` writes a folder into a temporary folder
and renames it at the end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.atomic import atomic_folder
from common.errors import UserError

log = logging.getLogger(__name__)

PRETRAINED_KEYS = ("sd15_path", "vae_path", "image_encoder_path", "motion_module_path")


def _path(value: str | None, work_dir: Path) -> Path | None:
    return None if value is None else work_dir / Path(str(value)).expanduser()


def _scheduler(config: Mapping[str, Any]) -> Any:
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    values = dict(config)
    name = values.pop("class_name", "DDIMScheduler")
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise UserError(
            f"model.scheduler.class_name={name!r} is not a diffusers scheduler (e.g. DDIMScheduler)"
        )
    try:
        return cls(**values)
    except TypeError as err:
        raise UserError(f"model.scheduler: {err}; use {name}'s config names") from None


def build_image_encoder(model: Mapping[str, Any], path: Path | None) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from lmk2video.pipeline import load_pretrained_strict

    if path is None:
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**model["image_encoder"]))
    if not (path / "config.json").is_file() and (path / "image_encoder" / "config.json").is_file():
        path = path / "image_encoder"
    if not (path / "config.json").is_file():
        raise UserError(
            f"model.pretrained.image_encoder_path={path}: no config.json; pass a CLIPVisionModelWithProjection "
            "folder (e.g. the image_encoder/ folder of lambdalabs/sd-image-variations-diffusers)"
        )
    return load_pretrained_strict(
        CLIPVisionModelWithProjection, path, use_safetensors=None, hint="pass a complete CLIP image encoder"
    )


def build_vae(model: Mapping[str, Any], vae_path: Path | None, sd15_path: Path | None) -> Any:
    from diffusers import AutoencoderKL

    from lmk2video.pipeline import load_pretrained_strict

    # A pixel-space model: `vae: null` in the model config. (Without a `vae` key at all, e.g. the converter
    # asking for the VAE of a given folder, the folder decides.)
    if "vae" in model and model["vae"] is None:
        if vae_path is not None:
            raise UserError(
                "model.vae is null (a pixel-space model, no VAE) but model.pretrained.vae_path is set; "
                "set model.vae to an AutoencoderKL config or remove vae_path"
            )
        return None
    folder = vae_path if vae_path is not None else (sd15_path / "vae" if sd15_path is not None else None)
    if folder is None:
        if model.get("vae") is None:
            raise UserError("no VAE: give model.vae (an AutoencoderKL config) or model.pretrained.vae_path")
        return AutoencoderKL(**model["vae"])
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{folder} is not a diffusers AutoencoderKL folder (no config.json); set model.pretrained.vae_path"
        )
    return load_pretrained_strict(
        AutoencoderKL, folder, use_safetensors=None, hint="pass a complete VAE folder"
    )


def _unets(model: Mapping[str, Any], sd15_path: Path | None, motion_path: Path | None) -> tuple[Any, Any]:
    from lmk2video.models.denoising_unet import MOTION_KEY, DenoisingUNet, config_from_diffusers_unet
    from lmk2video.models.reference_unet import ReferenceUNet

    motion = model.get("motion_module")
    if motion_path is not None and motion is None:
        raise UserError(
            "model.pretrained.motion_module_path is set but model.motion_module is null; choose a stage-2 "
            "experiment or set model.motion_module"
        )
    if sd15_path is not None:
        log.info("UNets from %s (its architecture replaces model.unet)", sd15_path)
        reference = ReferenceUNet.from_pretrained_2d(sd15_path)
        denoising = DenoisingUNet.from_pretrained_2d(sd15_path, motion_path, motion_module=motion)
        return reference, denoising
    unet = dict(model["unet"])
    denoising = DenoisingUNet(**config_from_diffusers_unet(unet, source="model.unet"), motion_module=motion)
    reference = ReferenceUNet(**unet)
    # Same 2-D weights in both UNets, as when both start from SD1.5 (the reference UNet has no output head).
    shared = {k: v for k, v in denoising.state_dict().items() if MOTION_KEY not in f".{k}"}
    missing, unexpected = reference.load_state_dict(shared, strict=False)
    if missing or any(not k.startswith(("conv_norm_out.", "conv_out.")) for k in unexpected):
        raise RuntimeError(
            f"reference/denoising UNet layouts differ: missing {missing}, unexpected {unexpected}"
        )
    if motion_path is not None:
        denoising.load_motion_modules(motion_path)
    return reference, denoising


def build_pipeline(model: Mapping[str, Any] | DictConfig, work_dir: str | os.PathLike = ".") -> Any:
    """The :class:`LandmarkVideoPipeline` a ``model`` config describes (see the module docstring).

    ``work_dir``: the folder relative ``pretrained`` paths are taken from.
    """
    from transformers import CLIPImageProcessorPil

    from lmk2video.models.pose_guider import PoseGuider
    from lmk2video.pipeline import LandmarkVideoPipeline

    if isinstance(model, DictConfig):
        model = OmegaConf.to_container(model, resolve=True)
    model = dict(model)
    work_dir = Path(work_dir)
    pretrained = dict(model.get("pretrained") or {})
    unknown = sorted(set(pretrained) - set(PRETRAINED_KEYS))
    if unknown:
        raise UserError(f"unknown model.pretrained keys {unknown}; valid keys are {list(PRETRAINED_KEYS)}")
    paths = {key: _path(pretrained.get(key), work_dir) for key in PRETRAINED_KEYS}
    for key, path in paths.items():
        if path is not None and not path.exists():
            raise UserError(f"model.pretrained.{key}={path} does not exist; check the path")

    reference, denoising = _unets(model, paths["sd15_path"], paths["motion_module_path"])
    vae = build_vae(model, paths["vae_path"], paths["sd15_path"])
    image_encoder = build_image_encoder(model, paths["image_encoder_path"])
    size = int(image_encoder.config.image_size)
    feature_extractor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    guider_config = dict(model["pose_guider"])
    given = guider_config.pop("unet_block_out_channels", None)
    channels = tuple(denoising.config.block_out_channels)
    if given is not None and tuple(given) != channels:
        raise UserError(
            f"model.pose_guider.unet_block_out_channels {tuple(given)} differs from the UNet's {channels}; remove it"
        )
    pose_guider = PoseGuider(**guider_config, unet_block_out_channels=channels)
    pipe = LandmarkVideoPipeline(
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        reference_unet=reference.eval(),
        denoising_unet=denoising.eval(),
        pose_guider=pose_guider.eval(),
        scheduler=_scheduler(model["scheduler"]),
        landmark_style=model.get("landmark_style", "default"),
        width=int(model["width"]),
        height=int(model["height"]),
    )
    pipe.check_components("model config")
    return pipe


def add_motion_modules(
    pipe: Any, motion_module: Mapping[str, Any], motion_module_path: str | os.PathLike | None = None
) -> Any:
    """Give a pipeline without motion modules (a stage-1 model) a denoising UNet with them; returns ``pipe``.

    The new UNet has the old one's config plus ``motion_module`` (a :class:`MotionModuleConfig` dict) and
    its 2-D weights, copied strictly; the motion modules come from ``motion_module_path`` (AnimateDiff
    format, strict) or are fresh (identity: zero output projections).
    """
    from lmk2video.models.denoising_unet import MOTION_KEY, DenoisingUNet

    old = pipe.denoising_unet
    if old.has_motion_modules:
        raise ValueError("the denoising UNet already has motion modules")
    config = {k: v for k, v in old.config.items() if not k.startswith("_")}
    config["motion_module"] = dict(motion_module)
    new = DenoisingUNet(**config).to(dtype=old.dtype, device=old.device)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(MOTION_KEY not in f".{k}" for k in missing):
        raise RuntimeError(f"2-D weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if motion_module_path is not None:
        new.load_motion_modules(motion_module_path)
    pipe.register_modules(denoising_unet=new.eval())
    return pipe


def load_or_build(
    model: Mapping[str, Any] | DictConfig,
    init_from: str | os.PathLike | None,
    work_dir: str | os.PathLike = ".",
) -> Any:
    """The pipeline a training run starts from: the model folder ``init_from``, or :func:`build_pipeline`.

    With ``init_from`` the folder's components are used as saved; ``model.motion_module`` (when the folder's
    UNet has none: stage 2 from a stage-1 model) adds motion modules, loaded from
    ``model.pretrained.motion_module_path`` when set. Other ``model`` keys are not used.
    """
    from lmk2video.pipeline import LandmarkVideoPipeline

    if isinstance(model, DictConfig):
        model = OmegaConf.to_container(model, resolve=True)
    if init_from is None:
        return build_pipeline(model, work_dir)
    folder = Path(work_dir) / Path(str(init_from)).expanduser()
    pipe = LandmarkVideoPipeline.from_pretrained(folder)
    motion_path = _path((model.get("pretrained") or {}).get("motion_module_path"), Path(work_dir))
    if motion_path is not None and not motion_path.exists():
        raise UserError(f"model.pretrained.motion_module_path={motion_path} does not exist; check the path")
    motion = model.get("motion_module")
    if not pipe.denoising_unet.has_motion_modules:
        if motion is not None:
            log.info("adding motion modules to %s (%s)", folder, motion_path or "fresh")
            add_motion_modules(pipe, motion, motion_path)
        elif motion_path is not None:
            raise UserError(
                f"model.pretrained.motion_module_path is set but {folder} has no motion modules and "
                "model.motion_module is null; choose a stage-2 experiment or set model.motion_module"
            )
    elif motion_path is not None:
        pipe.denoising_unet.load_motion_modules(motion_path)
    return pipe


def write_model_folder(pipe: Any, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``pipe.save_pretrained`` into a temporary folder beside ``out``, renamed to ``out`` at the end."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose a new output folder or pass overwrite=true")
    with atomic_folder(out, overwrite) as tmp:
        pipe.save_pretrained(tmp)
    return out
