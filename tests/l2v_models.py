"""Tiny LandmarkVideoPipelines for the lmk2video pipeline, init and generate tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import OmegaConf

from common.config import CONF_DIR
from tests.l2v_tiny import randomize_

TINY_MODEL_YAML = CONF_DIR / "lmk2video" / "groups" / "model" / "tiny.yaml"
TINY_MOTION = {"num_attention_heads": 2, "max_position": 16}


def tiny_model_config(motion: bool = True) -> dict[str, Any]:
    """The ``tiny`` model config (conf/lmk2video/groups/model/tiny.yaml), with or without motion modules."""
    config = OmegaConf.to_container(OmegaConf.load(TINY_MODEL_YAML), resolve=True)
    config["motion_module"] = dict(TINY_MOTION) if motion else None
    return config


def tiny_pipeline(motion: bool = True, seed: int = 0):
    """A tiny pipeline whose UNets, motion modules and pose guider hold seeded noise, so that no layer is an
    identity or zero (the pose guider's zero convs included)."""
    from lmk2video.building import build_pipeline

    torch.manual_seed(seed)
    pipe = build_pipeline(tiny_model_config(motion))
    randomize_(pipe.reference_unet, seed + 1)
    randomize_(pipe.denoising_unet, seed + 2)
    randomize_(pipe.pose_guider, seed + 3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models are dominated by thread start-up, and on a busy 2-core
    machine two OpenMP threads can be a hundred times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
