"""A tiny prepared corpus and tiny training configs shared by the audio2lmk training/inference tests.

The corpus: the first 2 s of three shared clips of three speakers (Obama, andrew, feifeili),
written as videos with a same-named wav beside them and prepared with ``common.corpus.preprocess``
(MediaPipe) once per test session (cached under pytest's base temp folder).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from common.config import CONF_DIR, EXPERIMENTS_DIR
from tests.corpus import build_excerpt_corpus

CLIPS = {"Obama_clip1": "Obama", "andrew_clip_1": "andrew", "feifeili_clip3": "feifeili"}
CLIP_FRAMES = 60
EXPERIMENTS = sorted(p.stem for p in (EXPERIMENTS_DIR / "audio2lmk" / "experiment").glob("*.yaml"))


def build_tiny_corpus(root: Path, face_model: Path) -> Path:
    """Prepare the tiny corpus under ``root`` (skipped when its index exists); returns the index path."""
    return build_excerpt_corpus(root, face_model, CLIPS, CLIP_FRAMES)


def tiny_corpus_index(tmp_path_factory: pytest.TempPathFactory, face_model: Path) -> Path:
    """Index of the tiny corpus, built once per session under pytest's base temp folder.

    Test modules wrap it in their own ``tiny_index`` fixture.
    """
    return build_tiny_corpus(tmp_path_factory.getbasetemp() / "a2l_tiny_corpus", face_model)


TINY_MEL = {
    "type": "mel",
    "n_mels": 16,
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "ffn_dim": 32,
    "pos_conv_kernel": 5,
    "dropout": 0.0,
}
TINY_WAV2VEC2 = {
    "type": "wav2vec2",
    "config": {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "conv_dim": [8, 8, 8, 8, 8, 8, 8],
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2,
        "layerdrop": 0.0,
    },
}


def tiny_overrides(index: Path, run_dir: Path) -> list[str]:
    """Command-line overrides that make any audio2lmk experiment tiny and fast on the tiny corpus."""
    return [
        f"data.index={index}",
        "data.source_dir=null",
        "data.cache_dir=null",
        "data.val_speakers=[feifeili]",
        "data.window_frames=15",
        "data.val_window_frames=null",
        "data.samples_per_epoch=8",
        "data.batch_size=4",
        "data.val_batch_size=1",
        "data.num_workers=0",
        "data.cache_clips=null",
        "trainer=cpu",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.check_val_every_n_epoch=null",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        "model.scheduler.num_warmup_steps=1",
        f"hydra.run.dir={run_dir}",
        f"hydra.sweep.dir={run_dir}",
    ]


def _hydra_value(value) -> str:
    """A Python value in Hydra's override syntax (dicts, lists, numbers, strings)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def save_tiny_wav2vec2(folder: Path) -> Path:
    """A randomly initialised tiny ``Wav2Vec2Model`` and its feature extractor saved in ``folder``.

    Experiments on pretrained wav2vec2 load it through their real ``pretrained`` path instead of
    downloading ``facebook/wav2vec2-base-960h``.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2["config"])).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return folder


def tiny_model_overrides(experiment: str | None, wav2vec2_dir: Path | None = None) -> list[str]:
    """Overrides shrinking an experiment's models: tiny encoders (no download), tiny pose decoder.

    wav2vec2 encoders load ``wav2vec2_dir`` (:func:`save_tiny_wav2vec2`) when given, else are built
    from the tiny config with random weights.
    """
    text = (
        (EXPERIMENTS_DIR / "audio2lmk" / "experiment" / f"{experiment}.yaml").read_text()
        if experiment
        else ""
    )
    wav2vec2 = "wav2vec2" in text
    out = []
    for head in ("mesh_model", "pose_model"):
        prefix = f"model.{head}.encoder"
        if wav2vec2 and wav2vec2_dir is not None:
            out += [f"{prefix}.pretrained={wav2vec2_dir}"]
        elif wav2vec2:
            out += [f"~{prefix}.pretrained", f"+{prefix}.config={_hydra_value(TINY_WAV2VEC2['config'])}"]
        else:
            out += [f"{prefix}.{k}={_hydra_value(v)}" for k, v in TINY_MEL.items() if k != "type"]
    out += ["model.mesh_model.head_hidden_dims=[8]"]
    out += [
        f"model.pose_model.{k}={v}"
        for k, v in {
            "hidden_size": 8,
            "num_layers": 1,
            "num_heads": 2,
            "ffn_dim": 16,
            "num_styles": 4,
            "dropout": 0.0,
        }.items()
    ]
    return out


@contextlib.contextmanager
def composed(experiment: str | None, overrides: list[str], run_dir: Path):
    """Compose ``conf/audio2lmk/train.yaml`` in-process with Hydra's runtime set (as ``@hydra.main`` does)."""
    GlobalHydra.instance().clear()
    exp = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(CONF_DIR / "audio2lmk"), version_base="1.3"):
        cfg = compose("train", overrides=exp + overrides, return_hydra_config=True)
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            yield cfg
        finally:
            GlobalHydra.instance().clear()
