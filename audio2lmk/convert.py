"""Load AniPortrait's released audio models (``audio2mesh.pt``, ``audio2pose.pt``) into ours.

    python -m audio2lmk.convert aniportrait --audio2mesh audio2mesh.pt --audio2pose audio2pose.pt -o DIR
        [--fps 30] [--wav2vec2 NAME_OR_FOLDER] [--wav2vec2-config FOLDER_OR_JSON] [--overwrite]
    python -m audio2lmk.convert aniportrait --from-hub -o DIR [--revision REPO=REV] [--cache-dir DIR]

writes an inference model folder (``audio2lmk.inference``; ``python -m audio2lmk.infer model=DIR``) with
either model or both, AniPortrait's demo pose post-processing (rotations x 0.5, 7-frame smoothing;
:data:`ANIPORTRAIT_POSE_POSTPROCESS`) and its style ids ``0 .. N-1``.

Both files are ``torch.save``d state dicts of AniPortrait's ``Audio2MeshModel`` /
``Audio2PoseModel`` (``src/audio_models/``). The conversion is strict: every key of the file is
used and every weight of our model is set, else a :class:`~common.errors.UserError` lists the keys.

Key mapping (AniPortrait -> ours; ``{i}`` is a decoder layer index, ``D`` the decoder width):

=========================================================  ===============================================
AniPortrait                                                ours
=========================================================  ===============================================
``audio_encoder.<k>`` (transformers ``Wav2Vec2Model``)     ``audio_encoder.model.<k>``
``audio_encoder.encoder.pos_conv_embed.conv.weight_g``     ``...conv.parametrizations.weight.original0``
``audio_encoder.encoder.pos_conv_embed.conv.weight_v``     ``...conv.parametrizations.weight.original1``
**audio2mesh**
``in_fn.{weight,bias}``                                    ``head.0.{weight,bias}``
``out_fn.{weight,bias}``                                   ``head.1.{weight,bias}``
**audio2pose**
``in_fn.*``                                                ``audio_proj.*``
``pose_map.*``                                             ``pose_in.*``
``id_embed.weight``                                        ``style_embedding.weight``
``pose_map_r.*``                                           ``pose_out.*``
``PPE.pe`` (1, 600, D) sinusoidal table                    not a weight: checked against
                                                           ``sinusoidal_positions``; sets
                                                           ``positional_encoding="sinusoidal"``,
                                                           ``attention_span=600``
``transformer_decoder.layers.{i}.self_attn.in_proj_*``     ``layers.{i}.self_attn.to_qkv.*``
``transformer_decoder.layers.{i}.self_attn.out_proj.*``    ``layers.{i}.self_attn.to_out.*``
``...layers.{i}.multihead_attn.in_proj_*`` rows ``[:D]``   ``layers.{i}.cross_attn.to_q.*``
``...layers.{i}.multihead_attn.in_proj_*`` rows ``[D:]``   ``layers.{i}.cross_attn.to_kv.*``
``...layers.{i}.multihead_attn.out_proj.*``                ``layers.{i}.cross_attn.to_out.*``
``...layers.{i}.linear1.*`` / ``linear2.*``                ``layers.{i}.ffn_in.*`` / ``ffn_out.*``
``...layers.{i}.norm1.*`` / ``norm2.*`` / ``norm3.*``      ``layers.{i}.norm_self.*`` / ``norm_cross.*`` /
                                                           ``norm_ffn.*``
=========================================================  ===============================================

AniPortrait's ``biased_mask`` (ALiBi, ``period=1``, 600 frames, 8 heads) is a plain attribute, not
in the files; ours computes the same bias (``pose_decoder.causal_alibi_bias``), and its
``enc_dec_mask`` is ``cross_attention_window=0``. The number of heads is not in the file (8, as
AniPortrait hard-codes). The wav2vec2 architecture is read from the tensor shapes on top of
``Wav2Vec2Config()`` (the base architecture of ``wav2vec2-base-960h``); what shapes cannot tell
(strides, heads, layer-norm order) comes from that base or from ``wav2vec2_config``.

``--from-hub`` downloads both files from the hub repository ``ZJYang/AniPortrait`` and the config of
``facebook/wav2vec2-base-960h`` (its weights too, only for a file without ``audio_encoder.*`` weights)
at the revisions pinned in :data:`common.hub.REVISIONS`, then converts them as above.

AniPortrait builds its models around a pretrained wav2vec2 and loads the files with
``strict=False``. A file that carries no ``audio_encoder.*`` weights at all can therefore be
converted with ``wav2vec2=NAME_OR_FOLDER`` (the encoder weights then come from that checkpoint,
as in AniPortrait); a file with some but not all of them is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from audio2lmk.models.audio2mesh import Audio2MeshModel
from audio2lmk.models.audio2pose import Audio2PoseModel, sinusoidal_positions
from common import hub, limits
from common.atomic import check_output_folder
from common.errors import UserError, exit_on_user_error
from common.weights import check_finite, read_checkpoint_file, strict_load

# AniPortrait's scripts/audio2vid.py: pose_seq[:, :3] *= 0.5, then smooth_pose_seq(pose_seq, 7).
ANIPORTRAIT_POSE_POSTPROCESS = {"rotation_scale": 0.5, "smooth": 7}
ENCODER_PREFIX = "audio_encoder."
_POS_CONV = "encoder.pos_conv_embed.conv."
# transformers' weight-norm parameter names: torch.nn.utils.weight_norm (AniPortrait's
# transformers 4.30 / torch 2.0) and torch.nn.utils.parametrizations.weight_norm (current).
_OLD_WEIGHT_NORM = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
_MESH_NAMES = {"head.0.": "in_fn.", "head.1.": "out_fn."}
_POSE_NAMES = {
    "audio_proj.": "in_fn.",
    "pose_in.": "pose_map.",
    "pose_out.": "pose_map_r.",
    "style_embedding.": "id_embed.",
}
_LAYER_NAMES = {
    "self_attn.to_qkv.weight": "self_attn.in_proj_weight",
    "self_attn.to_qkv.bias": "self_attn.in_proj_bias",
    "self_attn.to_out.": "self_attn.out_proj.",
    "cross_attn.to_q.weight": "multihead_attn.in_proj_weight",
    "cross_attn.to_q.bias": "multihead_attn.in_proj_bias",
    "cross_attn.to_kv.weight": "multihead_attn.in_proj_weight",
    "cross_attn.to_kv.bias": "multihead_attn.in_proj_bias",
    "cross_attn.to_out.": "multihead_attn.out_proj.",
    "ffn_in.": "linear1.",
    "ffn_out.": "linear2.",
    "norm_self.": "norm1.",
    "norm_cross.": "norm2.",
    "norm_ffn.": "norm3.",
}
ANIPORTRAIT_REPO = "ZJYang/AniPortrait"
WAV2VEC2_REPO = "facebook/wav2vec2-base-960h"  # AniPortrait's configs/prompts/animation_audio.yaml
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_OUR_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_THEIR_LAYER = re.compile(r"^transformer_decoder\.layers\.(\d+)\.")


# ---------------------------------------------------------------------- reading


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``torch.save``d state dict (tensors only, loaded with ``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path")
    state = read_checkpoint_file(path, hint="pass AniPortrait's audio2mesh.pt / audio2pose.pt")
    return _tensor_dict(state, str(path))


def _tensor_dict(state: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{source} is not a state dict of tensors; pass AniPortrait's audio2mesh.pt / audio2pose.pt"
        )
    check_finite(state, source)
    return dict(state)


def _as_state_dict(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[dict, str]:
    if isinstance(checkpoint, Mapping):
        return _tensor_dict(checkpoint, "the given state dict"), "the given state dict"
    return load_checkpoint(checkpoint), str(checkpoint)


# ---------------------------------------------------------------------- wav2vec2 part


def infer_wav2vec2_config(encoder_state: Mapping[str, torch.Tensor], base: Any = None):
    """A ``Wav2Vec2Config`` matching the shapes of a ``Wav2Vec2Model`` state dict (keys unprefixed).

    Shapes give: hidden size, layers, intermediate size, CNN channels/kernels/bias, CNN norm type,
    positional-convolution kernel/groups, whether SpecAugment's ``masked_spec_embed`` exists.
    Everything else (strides, attention heads, ``do_stable_layer_norm``, dropouts) comes from
    ``base`` (a ``Wav2Vec2Config`` or dict; default ``Wav2Vec2Config()``).
    """
    from transformers import Wav2Vec2Config

    if base is None:
        config = Wav2Vec2Config()
    elif isinstance(base, Wav2Vec2Config):
        config = Wav2Vec2Config.from_dict(base.to_dict())
    else:
        config = Wav2Vec2Config.from_dict(dict(base))

    def shape(key: str) -> tuple[int, ...]:
        if key not in encoder_state:
            raise UserError(
                f"wav2vec2 weights lack {ENCODER_PREFIX}{key}; pass a complete AniPortrait checkpoint"
            )
        return tuple(encoder_state[key].shape)

    conv = sorted(
        int(m.group(1))
        for k in encoder_state
        if (m := re.match(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))
    )
    if not conv or conv != list(range(len(conv))):
        raise UserError(
            "wav2vec2 weights have no CNN feature encoder; pass a complete AniPortrait checkpoint"
        )
    conv_shapes = [shape(f"feature_extractor.conv_layers.{i}.conv.weight") for i in conv]
    if len(config.conv_stride) != len(conv):
        raise UserError(
            f"the checkpoint's wav2vec2 has {len(conv)} CNN layers but the base config {len(config.conv_stride)} "
            "strides; pass wav2vec2_config with its conv_stride"
        )
    config.conv_dim = [s[0] for s in conv_shapes]
    config.conv_kernel = [s[2] for s in conv_shapes]
    config.num_feat_extract_layers = len(conv)
    config.conv_bias = "feature_extractor.conv_layers.0.conv.bias" in encoder_state
    layer_norm_everywhere = "feature_extractor.conv_layers.1.layer_norm.weight" in encoder_state
    config.feat_extract_norm = "layer" if layer_norm_everywhere else "group"
    config.hidden_size = shape("feature_projection.projection.weight")[0]
    layers = {int(m.group(1)) for k in encoder_state if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))}
    config.num_hidden_layers = len(layers)
    config.intermediate_size = shape("encoder.layers.0.feed_forward.intermediate_dense.weight")[0]
    pos_key = next(
        (
            _POS_CONV + n
            for n in ("weight_v", "parametrizations.weight.original1")
            if _POS_CONV + n in encoder_state
        ),
        None,
    )
    if pos_key is None:
        raise UserError(
            "wav2vec2 weights lack the positional convolution; pass a complete AniPortrait checkpoint"
        )
    out_channels, in_per_group, kernel = encoder_state[pos_key].shape
    config.num_conv_pos_embeddings = int(kernel)
    config.num_conv_pos_embedding_groups = int(out_channels // in_per_group)
    if "masked_spec_embed" not in encoder_state:
        config.mask_time_prob = 0.0
        config.mask_feature_prob = 0.0
    elif config.mask_time_prob <= 0 and config.mask_feature_prob <= 0:
        config.mask_time_prob = 0.05
    if config.hidden_size % config.num_attention_heads:
        raise UserError(
            f"hidden size {config.hidden_size} is not divisible by {config.num_attention_heads} heads; pass "
            "wav2vec2_config with the checkpoint's num_attention_heads"
        )
    return config


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """``key`` with the first matching prefix (or whole name) of ``table`` replaced, else None."""
    for ours, theirs in table.items():
        if key == ours or (ours.endswith(".") and key.startswith(ours)):
            return theirs + key[len(ours) :]
    return None


def _encoder_source_name(key: str, old_weight_norm: bool) -> str:
    """Our ``audio_encoder.model.<k>`` -> AniPortrait's ``audio_encoder.<k>``."""
    inner = key[len("audio_encoder.model.") :]
    if old_weight_norm and inner.startswith(_POS_CONV) and inner[len(_POS_CONV) :] in _OLD_WEIGHT_NORM:
        inner = _POS_CONV + _OLD_WEIGHT_NORM[inner[len(_POS_CONV) :]]
    return ENCODER_PREFIX + inner


def _mesh_source_name(key: str) -> str | None:
    return _rename(key, _MESH_NAMES)


def _pose_source_name(key: str) -> str | None:
    name = _rename(key, _POSE_NAMES)
    if name is None and (match := _OUR_LAYER.match(key)):
        inner = _rename(match.group(2), _LAYER_NAMES)
        name = None if inner is None else f"transformer_decoder.layers.{match.group(1)}.{inner}"
    return name


def _gather(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source_name,
    source: str,
    *,
    ignored: frozenset[str] = frozenset(),
    hidden: int | None = None,
) -> dict[str, torch.Tensor]:
    """Our state dict filled from AniPortrait's ``state`` through ``source_name`` (ours -> theirs).

    The check runs both ways and reports AniPortrait's names: keys our model needs that the file
    lacks, and keys of the file our model does not use (``ignored`` keys are checked elsewhere).
    Encoder weights come from the file when it has any, else from the model (``wav2vec2=``).
    """
    from_file = any(k.startswith(ENCODER_PREFIX) for k in state)
    old_weight_norm = any(k.endswith(_POS_CONV + "weight_g") for k in state)
    converted: dict[str, torch.Tensor] = {}
    wanted: dict[str, str] = {}
    for key, value in model.state_dict().items():
        if key.startswith("audio_encoder.model."):
            if not from_file:
                converted[key] = value
                continue
            wanted[key] = _encoder_source_name(key, old_weight_norm)
        else:
            name = source_name(key)
            if name is None:
                raise AssertionError(f"no AniPortrait name for {key}")  # a bug in this table, not input
            wanted[key] = name
    missing = sorted({name for name in wanted.values() if name not in state})
    unexpected = sorted(set(state) - set(wanted.values()) - ignored)
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys: {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {len(unexpected)} keys: {', '.join(unexpected)}"] if unexpected else []
        raise UserError(f"{source} does not match AniPortrait's model: {'; '.join(parts)}")
    for key, name in wanted.items():
        value = state[name]
        if ".cross_attn.to_q." in key:
            value = value[:hidden]
        elif ".cross_attn.to_kv." in key:
            value = value[hidden:]
        converted[key] = value
    return converted


def _encoder_config(
    state: Mapping[str, torch.Tensor], wav2vec2: str | None, wav2vec2_config: Any, source: str
):
    """The model's ``encoder`` config for a checkpoint's wav2vec2 part."""
    encoder_state = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if encoder_state:
        if wav2vec2 is not None:
            raise UserError(
                f"{source} carries its own wav2vec2 weights; drop the `wav2vec2` option (it is only for "
                "files without audio_encoder.* weights)"
            )
        config = infer_wav2vec2_config(encoder_state, wav2vec2_config)
        return {
            "type": "wav2vec2",
            "config": config.to_dict(),
            "normalize": True,
            "source": f"AniPortrait {source}",
        }
    if wav2vec2 is None:
        raise UserError(
            f"{source} has no audio_encoder.* (wav2vec2) weights; pass wav2vec2=NAME_OR_FOLDER (AniPortrait "
            "used facebook/wav2vec2-base-960h) to take them from that checkpoint"
        )
    return {"type": "wav2vec2", "pretrained": wav2vec2}


def _require(state: Mapping[str, torch.Tensor], keys: tuple[str, ...], source: str, what: str) -> None:
    for key in keys:
        if key not in state:
            raise UserError(f"{source} lacks {key}; is it AniPortrait's {what}?")


# ---------------------------------------------------------------------- the two models


def convert_aniportrait_audio2mesh(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    fps: float = 30.0,
    wav2vec2: str | None = None,
    wav2vec2_config: Any = None,
) -> Audio2MeshModel:
    """AniPortrait's ``audio2mesh.pt`` (path or state dict) -> :class:`Audio2MeshModel` in eval mode.

    ``fps``: frame rate the model is used at (AniPortrait's default 30). See the module docstring
    for ``wav2vec2`` / ``wav2vec2_config`` and the key mapping.
    """
    state, source = _as_state_dict(checkpoint)
    _require(state, ("in_fn.weight", "out_fn.weight"), source, "audio2mesh.pt")
    hidden, out_dim = int(state["in_fn.weight"].shape[0]), int(state["out_fn.weight"].shape[0])
    if out_dim % 3:
        raise UserError(f"{source}: out_fn has {out_dim} outputs, not 3 per vertex; is it audio2mesh.pt?")
    model = Audio2MeshModel(
        encoder=_encoder_config(state, wav2vec2, wav2vec2_config, source),
        head_hidden_dims=(hidden,),
        head_activation=None,
        num_vertices=out_dim // 3,
        fps=fps,
    )
    strict_load(model, _gather(model, state, _mesh_source_name, source), source)
    return model.eval()


def convert_aniportrait_audio2pose(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    fps: float = 30.0,
    num_heads: int = 8,
    wav2vec2: str | None = None,
    wav2vec2_config: Any = None,
) -> Audio2PoseModel:
    """AniPortrait's ``audio2pose.pt`` (path or state dict) -> :class:`Audio2PoseModel` in eval mode.

    ``num_heads``: decoder attention heads (not stored in the file; AniPortrait uses 8). See the
    module docstring for the mapping and the other options.
    """
    state, source = _as_state_dict(checkpoint)
    required = ("pose_map.weight", "id_embed.weight", "PPE.pe", "transformer_decoder.layers.0.linear1.weight")
    _require(state, required, source, "audio2pose.pt")
    hidden, pose_dim = (int(n) for n in state["pose_map.weight"].shape)
    table = state["PPE.pe"]
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != hidden:
        raise UserError(f"{source}: PPE.pe has shape {tuple(table.shape)}, expected (1, positions, {hidden})")
    if not torch.allclose(
        table[0].float(), sinusoidal_positions(torch.arange(table.shape[1]), hidden), atol=1e-4
    ):
        raise UserError(
            f"{source}: PPE.pe is not the sinusoidal table AniPortrait builds; the file is not supported"
        )
    layers = {int(m.group(1)) for k in state if (m := _THEIR_LAYER.match(k))}
    model = Audio2PoseModel(
        encoder=_encoder_config(state, wav2vec2, wav2vec2_config, source),
        hidden_size=hidden,
        num_layers=len(layers),
        num_heads=num_heads,
        ffn_dim=int(state["transformer_decoder.layers.0.linear1.weight"].shape[0]),
        dropout=0.1,
        activation="relu",
        pose_dim=pose_dim,
        num_styles=int(state["id_embed.weight"].shape[0]),
        positional_encoding="sinusoidal",
        attention_span=int(table.shape[1]),
        cross_attention_window=0,
        fps=fps,
    )
    converted = _gather(model, state, _pose_source_name, source, ignored=frozenset({"PPE.pe"}), hidden=hidden)
    strict_load(model, converted, source)
    return model.eval()


# ---------------------------------------------------------------------- command line


def _wav2vec2_config_option(value: str | None) -> dict[str, Any] | None:
    """``--wav2vec2-config``: a wav2vec2 folder (its config.json) or a JSON file."""
    if value is None:
        return None
    path = Path(value).expanduser()
    path = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"--wav2vec2-config {value}: cannot read a JSON config ({err}); pass a wav2vec2 folder"
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"--wav2vec2-config {value}: not a JSON object; pass a wav2vec2 config.json")
    return config


def convert_aniportrait_folder(
    out: str | os.PathLike,
    *,
    audio2mesh: str | os.PathLike | None = None,
    audio2pose: str | os.PathLike | None = None,
    fps: float = 30.0,
    wav2vec2: str | None = None,
    wav2vec2_config: Any = None,
    overwrite: bool = False,
) -> Path:
    """AniPortrait's ``audio2mesh.pt`` and/or ``audio2pose.pt`` -> an inference model folder ``out``."""
    from audio2lmk.inference import export_audio2lmk

    if audio2mesh is None and audio2pose is None:
        raise UserError(
            "pass --audio2mesh FILE, --audio2pose FILE or both (AniPortrait's audio2mesh.pt / audio2pose.pt)"
        )
    limits.number(fps, "--fps", 0, limits.MAX_FPS, low_open=True, hint="AniPortrait's models run at 30")
    out = check_output_folder(out, overwrite, "--overwrite")
    options = {"fps": fps, "wav2vec2": wav2vec2, "wav2vec2_config": wav2vec2_config}
    mesh = convert_aniportrait_audio2mesh(audio2mesh, **options) if audio2mesh is not None else None
    pose = convert_aniportrait_audio2pose(audio2pose, **options) if audio2pose is not None else None
    return export_audio2lmk(
        out,
        mesh_model=mesh,
        pose_model=pose,
        fps=fps,
        styles=[],
        data={"source": "AniPortrait", "audio2mesh": str(audio2mesh), "audio2pose": str(audio2pose)},
        pose_postprocess=ANIPORTRAIT_POSE_POSTPROCESS,
    )


def download_aniportrait(
    revisions: Mapping[str, str] | None = None, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """AniPortrait's two audio files and its wav2vec2 from the hub -> ``convert_aniportrait_folder`` options."""
    files = {
        name: hub.download(ANIPORTRAIT_REPO, f"{name}.pt", revisions=revisions, cache_dir=cache_dir)
        for name in ("audio2mesh", "audio2pose")
    }
    config_file = hub.download(WAV2VEC2_REPO, "config.json", revisions=revisions, cache_dir=cache_dir)
    options: dict[str, Any] = {**files, "wav2vec2_config": _wav2vec2_config_option(str(config_file))}
    carries_encoder = [
        any(key.startswith(ENCODER_PREFIX) for key in load_checkpoint(path)) for path in files.values()
    ]
    if any(carries_encoder) and not all(carries_encoder):
        raise UserError(
            f"of {', '.join(str(p) for p in files.values())} only some carry wav2vec2 weights; "
            "convert them one at a time with --audio2mesh / --audio2pose"
        )
    if not any(carries_encoder):
        # AniPortrait loads such files on top of the pretrained wav2vec2: fetch its weights as well.
        hub.download(WAV2VEC2_REPO, "preprocessor_config.json", revisions=revisions, cache_dir=cache_dir)
        weights = hub.download(WAV2VEC2_REPO, WEIGHT_FILES, revisions=revisions, cache_dir=cache_dir)
        options.update(wav2vec2=str(weights.parent), wav2vec2_config=None)
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audio2lmk.convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="format", required=True)
    ani = sub.add_parser("aniportrait", help="AniPortrait's audio2mesh.pt / audio2pose.pt")
    hub.add_hub_arguments(
        ani,
        f"download both files from {ANIPORTRAIT_REPO} (and {WAV2VEC2_REPO}'s config) first",
    )
    ani.add_argument("--audio2mesh", default=None, help="AniPortrait's audio2mesh.pt")
    ani.add_argument("--audio2pose", default=None, help="AniPortrait's audio2pose.pt")
    ani.add_argument("-o", "--out", required=True, help="output model folder")
    ani.add_argument("--fps", type=float, default=30.0, help="video frame rate the models run at (30)")
    ani.add_argument(
        "--wav2vec2", default=None, help="wav2vec2 name or folder for files without audio_encoder.* weights"
    )
    ani.add_argument(
        "--wav2vec2-config",
        default=None,
        help="wav2vec2 folder or config JSON giving what shapes cannot (attention heads, strides)",
    )
    ani.add_argument("--overwrite", action="store_true", help="replace the output folder")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    download = hub.hub_options(args)
    if download is not None:
        given = [flag for flag, value in (("--audio2mesh", args.audio2mesh), ("--audio2pose", args.audio2pose),
                 ("--wav2vec2", args.wav2vec2), ("--wav2vec2-config", args.wav2vec2_config)) if value]  # fmt: skip
        if given:
            raise UserError(f"--from-hub downloads the files itself; drop {', '.join(given)}")
        check_output_folder(args.out, args.overwrite, "--overwrite")  # before hundreds of megabytes download
        sources = download_aniportrait(**download)
    else:
        sources = {
            "audio2mesh": args.audio2mesh,
            "audio2pose": args.audio2pose,
            "wav2vec2": args.wav2vec2,
            "wav2vec2_config": _wav2vec2_config_option(args.wav2vec2_config),
        }
    out = convert_aniportrait_folder(args.out, fps=args.fps, overwrite=args.overwrite, **sources)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
