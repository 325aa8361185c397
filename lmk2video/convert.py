"""Convert third-party checkpoints into lmk2video model folders.

    python -m lmk2video.convert aniportrait SRC DST [--config conversion.json] [--overwrite]
    python -m lmk2video.convert aniportrait --from-hub DST [--revision REPO=REV] [--cache-dir DIR]

``aniportrait``: SRC is a folder with AniPortrait's ``denoising_unet.pth``, ``reference_unet.pth``,
``pose_guider.pth`` and ``motion_module.pth`` (plain ``torch.save``-d state dicts). DST receives
``denoising_unet/``, ``reference_unet/`` and ``pose_guider/`` (``save_pretrained`` folders, loadable
with ``DenoisingUNet.from_pretrained`` etc.) and ``conversion_report.txt``, which lists every
target key with the file and key it came from and every source key that was not used, with why.
Everything is written into a temporary folder beside DST and renamed at the end: a failed
conversion leaves nothing behind.

AniPortrait key facts (from its ``src/models``):

- ``denoising_unet.pth`` (``UNet3DConditionModel`` saved after stage 1): exactly diffusers'
  ``UNet2DConditionModel`` key names for SD1.5 (``InflatedConv3d`` subclasses ``nn.Conv2d``, the 3D
  transformer holds the same ``norm/proj_in/transformer_blocks.0.{norm1,attn1,norm2,attn2,norm3,ff}/
  proj_out`` as the 2D one and no temporal-attention keys since ``unet_use_temporal_attention`` is
  false). Motion-module keys, if a file holds any, are ignored in favour of ``motion_module.pth``.
- ``reference_unet.pth`` (its copy of ``UNet2DConditionModel``): diffusers' key names without
  ``conv_norm_out`` and ``conv_out`` (AniPortrait deletes the output head; so does ``ReferenceUNet``).
- ``motion_module.pth``: only the ``*.motion_modules.*`` keys of the stage-2 UNet, in AnimateDiff's
  layout, including the ``pos_encoder.pe`` tables (32 positions, AnimateDiff v2 layout with a
  mid-block module; ``configs/inference/inference_v2.yaml``).
- ``pose_guider.pth``: converted by ``lmk2video.models.pose_guider.convert_aniportrait_pose_guider``.

The UNet keys therefore map one to one; the converter's value is the strict check (every key of
our models filled, no source key silently dropped) and the diffusers folders it writes.

With ``--vae DIR --image-encoder DIR`` (AniPortrait's ``sd-vae-ft-mse`` and the ``image_encoder`` of
``lambdalabs/sd-image-variations-diffusers``) DST is instead a complete model folder that
``python -m lmk2video.generate model=DST`` loads: the three converted components plus the VAE and image
encoder (strictly loaded), CLIP's image processor, AniPortrait's DDIM scheduler
(:data:`ANIPORTRAIT_SCHEDULER`: v-prediction, zero-terminal-SNR rescale, trailing spacing), its
landmark drawing style (``aniportrait``) and 512 x 512 output.

``--from-hub DST`` downloads what a complete model folder needs (AniPortrait's four files from
``ZJYang/AniPortrait``, ``stabilityai/sd-vae-ft-mse`` and the ``image_encoder`` of
``lambdalabs/sd-image-variations-diffusers``) at the revisions pinned in :data:`common.hub.REVISIONS`
(``--revision REPO=REV`` overrides one), then converts them as ``SRC DST --vae --image-encoder`` does.

``--config`` (JSON, all sections optional) sets the architecture when the weights are not SD1.5-sized:
``{"unet": {diffusers UNet config values}, "motion_module": {MotionModuleConfig values},
"pose_guider": {"num_attention_heads": 16, "norm_num_groups": 32}}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from common import hub
from common.atomic import atomic_folder, check_output_folder
from common.errors import UserError, exit_on_user_error
from common.weights import assert_materialised, check_state_dict, load_checkpoint
from lmk2video.models.denoising_unet import MOTION_KEY, DenoisingUNet, config_from_diffusers_unet
from lmk2video.models.motion_module import MotionModuleConfig
from lmk2video.models.reference_unet import OUTPUT_HEAD_PREFIXES, ReferenceUNet
from lmk2video.models.sd15 import sd15_unet_config

# AniPortrait's configs/inference/inference_v2.yaml noise_scheduler_kwargs (sampler DDIM).
ANIPORTRAIT_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}

ANIPORTRAIT_FILES = {
    "denoising_unet": "denoising_unet.pth",
    "reference_unet": "reference_unet.pth",
    "pose_guider": "pose_guider.pth",
    "motion_module": "motion_module.pth",
}
REPORT_NAME = "conversion_report.txt"
ANIPORTRAIT_REPO = "ZJYang/AniPortrait"
VAE_REPO = "stabilityai/sd-vae-ft-mse"  # AniPortrait's pretrained_vae_path
IMAGE_ENCODER_REPO = "lambdalabs/sd-image-variations-diffusers"  # its image_encoder_path
# Files in order of preference (the first the revision has is downloaded).
VAE_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
IMAGE_ENCODER_FILES = ("image_encoder/model.safetensors", "image_encoder/pytorch_model.bin")
CONFIG_SECTIONS = ("unet", "motion_module", "pose_guider")


def _is_motion_key(key: str) -> bool:
    return MOTION_KEY in f".{key}"


# ----------------------------------------------------------------------------- key mappings


def convert_aniportrait_motion_module(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "motion_module.pth"
) -> dict[str, torch.Tensor]:
    """AniPortrait ``motion_module.pth`` -> DenoisingUNet motion-module keys (same AnimateDiff names).

    Every key must be a motion-module key (``...motion_modules.{j}.temporal_transformer...``).
    """
    other = [k for k in state_dict if not _is_motion_key(k)]
    if other:
        raise UserError(
            f"{source} holds keys that are not motion-module keys: {', '.join(sorted(other)[:20])}; "
            "pass AniPortrait's motion_module.pth"
        )
    return dict(state_dict)


def convert_aniportrait_denoising_unet(
    state_dict: Mapping[str, torch.Tensor],
    motion_state_dict: Mapping[str, torch.Tensor] | None,
    *,
    source: str = "motion_module.pth",
) -> dict[str, torch.Tensor]:
    """AniPortrait ``denoising_unet.pth`` (+ ``motion_module.pth``) -> DenoisingUNet keys.

    The 2D keys are diffusers' and map to themselves; motion-module keys in ``state_dict`` are
    ignored and taken from ``motion_state_dict`` instead (None: a UNet without motion modules).
    """
    converted = {k: v for k, v in state_dict.items() if not _is_motion_key(k)}
    if motion_state_dict is not None:
        converted.update(convert_aniportrait_motion_module(motion_state_dict, source=source))
    return converted


def convert_aniportrait_reference_unet(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "reference_unet.pth"
) -> dict[str, torch.Tensor]:
    """AniPortrait ``reference_unet.pth`` -> ReferenceUNet keys (diffusers names; output head dropped if present)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(OUTPUT_HEAD_PREFIXES)}


def _unused_reason(component: str, key: str) -> str:
    if component == "denoising_unet" and _is_motion_key(key):
        return "motion modules come from motion_module.pth"
    if component == "reference_unet" and key.startswith(OUTPUT_HEAD_PREFIXES):
        return "ReferenceUNet has no output head"
    return "not used by the converter"


# ----------------------------------------------------------------------------- conversion


def _read_config(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    path = Path(path).expanduser()
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read conversion config {path}: {err}; give a JSON file") from None
    if not isinstance(config, dict) or set(config) - set(CONFIG_SECTIONS):
        raise UserError(f"{path}: expected a JSON object with optional sections {', '.join(CONFIG_SECTIONS)}")
    return config


def _pose_guider_module() -> Any:
    """The pose guider module (imported lazily: the UNet conversion does not need it)."""
    try:
        module = importlib.import_module("lmk2video.models.pose_guider")
    except ModuleNotFoundError as err:
        raise UserError(
            f"cannot convert pose_guider.pth: {err}; install the full lmk2video package"
        ) from None
    for name in ("PoseGuider", "convert_aniportrait_pose_guider", "aniportrait_config_from_state_dict"):
        if not hasattr(module, name):
            raise UserError(f"lmk2video.models.pose_guider lacks {name}; update lmk2video")
    return module


def _convert_pose_guider(
    state_dict: dict[str, torch.Tensor], source: str, options: Mapping[str, Any], unet_channels: Sequence[int]
) -> Any:
    """Pose-guider hook: AniPortrait weights -> a loaded ``PoseGuider`` (architecture read from the shapes).

    The guider must produce residuals for the converted UNet: its ``unet_block_out_channels`` must
    equal the UNet's ``block_out_channels``.
    """
    pose_guider = _pose_guider_module()
    config = pose_guider.aniportrait_config_from_state_dict(state_dict, source=source, **options)
    guider_channels = config.get("unet_block_out_channels")
    if guider_channels is not None and tuple(guider_channels) != tuple(unet_channels):
        raise UserError(
            f"{source} produces residuals for UNet channels {tuple(guider_channels)} but the UNets have "
            f"block_out_channels {tuple(unet_channels)}; the four files must come from one AniPortrait model"
        )
    converted = pose_guider.convert_aniportrait_pose_guider(state_dict, source=source)
    model = pose_guider.PoseGuider(**config)
    check_state_dict(model.state_dict(), converted, source)
    model.load_state_dict(converted, strict=True)
    return model, converted


def _build_and_load(
    model_cls: Any, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str, fix: str
) -> Any:
    """Instantiate on the meta device and adopt the checkpoint's tensors (no second copy of the weights)."""
    with torch.device("meta"):
        model = model_cls.from_config(dict(config))
    check_state_dict(model.state_dict(), state, source, fix)
    model.load_state_dict(state, strict=True, assign=True)
    assert_materialised(model)
    return model


def _report_section(
    title: str,
    target: Mapping[str, torch.Tensor],
    sources: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
    unused: Callable[[str], str],
) -> list[str]:
    """Report lines: ``target_key <- file:key`` for every target key, then unused source keys."""
    origin: dict[int, str] = {}
    for file_name, state in sources:
        for key, value in state.items():
            origin.setdefault(id(value), f"{file_name}:{key}")
    used = set()
    lines = ["", f"[{title}] {len(target)} keys"]
    for key in sorted(target):
        where = origin.get(id(target[key]), "(computed by the converter)")
        used.add(where)
        lines.append(f"  {key} <- {where}")
    for file_name, state in sources:
        for key in sorted(state):
            if f"{file_name}:{key}" not in used:
                lines.append(f"  unused {file_name}:{key} ({unused(key)})")
    return lines


def convert_aniportrait(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    vae: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
) -> Path:
    """Convert AniPortrait's four ``.pth`` files in ``src`` into model folders under ``dst``.

    ``vae`` and ``image_encoder`` (both or neither): make ``dst`` a complete model folder (see the module
    docstring) instead of the three component folders.

    ``config``: optional sections ``unet`` (diffusers UNet config values; default SD1.5),
    ``motion_module`` (MotionModuleConfig values; default AnimateDiff v2 = AniPortrait) and
    ``pose_guider`` (``num_attention_heads`` / ``norm_num_groups``; default the released 16 / 32).
    Returns the path of the report. Raises :class:`UserError` on missing files or mismatched weights.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    config = dict(config or {})
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; pass the folder holding AniPortrait's .pth files")
    missing = [name for name in ANIPORTRAIT_FILES.values() if not (src / name).is_file()]
    if missing:
        raise UserError(
            f"{src} lacks {', '.join(missing)}; it must hold {', '.join(ANIPORTRAIT_FILES.values())}"
        )
    check_output_folder(dst, overwrite, "--overwrite")
    if (vae is None) != (image_encoder is None):
        raise UserError(
            "--vae and --image-encoder go together (a complete model folder needs both); pass both or neither"
        )
    extra = _pipeline_parts(vae, image_encoder) if vae is not None else None

    unet_config = sd15_unet_config(**config.get("unet", {}))
    motion_config = MotionModuleConfig.from_dict(config.get("motion_module", {})).to_dict()
    files = {part: str(src / name) for part, name in ANIPORTRAIT_FILES.items()}
    raw = {part: load_checkpoint(path) for part, path in files.items()}
    names = ANIPORTRAIT_FILES

    unet_fix = "if the weights are not SD1.5-sized, describe the architecture with --config"
    denoising_state = convert_aniportrait_denoising_unet(
        raw["denoising_unet"], raw["motion_module"], source=files["motion_module"]
    )
    denoising = _build_and_load(
        DenoisingUNet,
        {**config_from_diffusers_unet(unet_config, source="--config 'unet'"), "motion_module": motion_config},
        denoising_state,
        f"{files['denoising_unet']} + {files['motion_module']}",
        unet_fix,
    )
    reference_state = convert_aniportrait_reference_unet(
        raw["reference_unet"], source=files["reference_unet"]
    )
    reference = _build_and_load(
        ReferenceUNet, unet_config, reference_state, files["reference_unet"], unet_fix
    )
    pose_guider, pose_state = _convert_pose_guider(
        raw["pose_guider"],
        files["pose_guider"],
        config.get("pose_guider", {}),
        unet_config["block_out_channels"],
    )

    report = [f"lmk2video.convert aniportrait: {src} -> {dst}"]
    report += _report_section(
        "denoising_unet",
        denoising_state,
        [(names["denoising_unet"], raw["denoising_unet"]), (names["motion_module"], raw["motion_module"])],
        lambda k: _unused_reason("denoising_unet", k),
    )
    report += _report_section(
        "reference_unet",
        reference_state,
        [(names["reference_unet"], raw["reference_unet"])],
        lambda k: _unused_reason("reference_unet", k),
    )
    report += _report_section(
        "pose_guider",
        pose_state,
        [(names["pose_guider"], raw["pose_guider"])],
        lambda k: _unused_reason("pose_guider", k),
    )

    with atomic_folder(dst, overwrite) as tmp:
        if extra is None:
            denoising.save_pretrained(tmp / "denoising_unet")
            reference.save_pretrained(tmp / "reference_unet")
            pose_guider.save_pretrained(tmp / "pose_guider")
        else:
            pipe = _complete_pipeline(extra, reference, denoising, pose_guider)
            pipe.save_pretrained(tmp)
            report.append(f"vae: {vae}")
            report.append(f"image_encoder: {image_encoder}")
            report.append(f"scheduler: DDIMScheduler {json.dumps(ANIPORTRAIT_SCHEDULER)}")
        (tmp / REPORT_NAME).write_text("\n".join(report) + "\n")
    return dst / REPORT_NAME


def download_aniportrait(
    revisions: Mapping[str, str] | None = None, cache_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Download a complete AniPortrait model's files -> ``{"src", "vae", "image_encoder"}`` folders."""

    def get(repo: str, names: str | Sequence[str]) -> Path:
        return hub.download(repo, names, revisions=revisions, cache_dir=cache_dir)

    src = [get(ANIPORTRAIT_REPO, name) for name in ANIPORTRAIT_FILES.values()]
    get(VAE_REPO, "config.json")
    vae = get(VAE_REPO, VAE_FILES)
    get(IMAGE_ENCODER_REPO, "image_encoder/config.json")
    encoder = get(IMAGE_ENCODER_REPO, IMAGE_ENCODER_FILES)
    return {"src": src[0].parent, "vae": vae.parent, "image_encoder": encoder.parent}


def _pipeline_parts(vae: str | os.PathLike, image_encoder: str | os.PathLike) -> dict[str, Any]:
    """The VAE and image encoder of a complete AniPortrait model folder, strictly loaded."""
    from lmk2video.building import build_image_encoder, build_vae

    vae_path, encoder_path = Path(vae).expanduser(), Path(image_encoder).expanduser()
    for flag, path in (("--vae", vae_path), ("--image-encoder", encoder_path)):
        if not path.exists():
            raise UserError(f"{flag} {path} does not exist; check the path")
    return {"vae": build_vae({}, vae_path, None), "image_encoder": build_image_encoder({}, encoder_path)}


def _complete_pipeline(parts: Mapping[str, Any], reference: Any, denoising: Any, pose_guider: Any) -> Any:
    from diffusers import DDIMScheduler
    from transformers import CLIPImageProcessorPil

    from lmk2video.pipeline import LandmarkVideoPipeline

    size = int(parts["image_encoder"].config.image_size)
    pipe = LandmarkVideoPipeline(
        vae=parts["vae"],
        image_encoder=parts["image_encoder"],
        feature_extractor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        reference_unet=reference.eval(),
        denoising_unet=denoising.eval(),
        pose_guider=pose_guider.eval(),
        scheduler=DDIMScheduler(**ANIPORTRAIT_SCHEDULER),
        landmark_style="aniportrait",
        width=512,
        height=512,
    )
    pipe.check_components("the converted AniPortrait model")
    return pipe


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lmk2video.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="format", required=True)
    ani = sub.add_parser(
        "aniportrait",
        help="AniPortrait's denoising_unet/reference_unet/pose_guider/motion_module .pth files",
        description="Convert AniPortrait's four .pth files into lmk2video model folders.",
    )
    ani.add_argument(
        "paths",
        nargs="+",
        metavar="[SRC] DST",
        help="SRC: folder holding denoising_unet.pth, reference_unet.pth, pose_guider.pth, motion_module.pth "
        "(not with --from-hub); DST: output folder (denoising_unet/, reference_unet/, pose_guider/, report)",
    )
    hub.add_hub_arguments(
        ani,
        f"download AniPortrait ({ANIPORTRAIT_REPO}), its VAE and image encoder, and write a complete "
        "model folder to DST",
    )
    ani.add_argument(
        "--config", default=None, help="JSON with optional 'unet', 'motion_module', 'pose_guider' sections"
    )
    ani.add_argument(
        "--vae", default=None, help="AutoencoderKL folder (sd-vae-ft-mse): write a complete model"
    )
    ani.add_argument(
        "--image-encoder", default=None, help="CLIPVisionModelWithProjection folder: write a complete model"
    )
    ani.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _read_config(args.config)
    download = hub.hub_options(args)
    if download is not None:
        if len(args.paths) != 1 or args.vae or args.image_encoder:
            raise UserError(
                "--from-hub takes only DST (it downloads SRC, the VAE and the image encoder itself)"
            )
        dst = check_output_folder(args.paths[0], args.overwrite, "--overwrite")  # before gigabytes download
        sources = download_aniportrait(**download)
    elif len(args.paths) != 2:
        raise UserError("pass SRC and DST (or --from-hub DST)")
    else:
        dst = Path(args.paths[1])
        sources = {"src": args.paths[0], "vae": args.vae, "image_encoder": args.image_encoder}
    report = convert_aniportrait(dst=dst, config=config, overwrite=args.overwrite, **sources)
    print(f"wrote {report.parent} (see {report.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
