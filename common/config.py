"""Hydra/OmegaConf glue shared by every entry point.

Importing this module registers the ``project_root`` resolver, which the configs use instead of
hard-coded paths (``${project_root:}`` is the checkout that holds ``conf/`` and ``experiments/``).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"

log = logging.getLogger(__name__)

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def seed_everything(seed: int | None) -> int | None:
    """Seed Python, NumPy and PyTorch (all devices). ``None`` leaves everything unseeded."""
    if seed is None:
        return None
    import torch

    seed = int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
