"""Hydra/OmegaConf glue shared by every entry point.

Importing this module registers the resolvers the configs use instead of hard-coded paths:

- ``${conf_dir:}`` and ``${experiments_dir:}``: the config folders, found through the installed package
  (:mod:`talking_portrait`), so a Hydra CLI works from any folder, in a checkout or after ``pip install .``;
- ``${shared_dir:}``: the read-only ``shared/`` material of the project's tests and examples: the
  ``TALKING_PORTRAIT_SHARED`` environment variable, else ``../shared`` beside a checkout, else ``../shared``
  beside the folder a command runs in;
- ``${run_files:LOG_DIR,YES,NO}``: ``YES`` when ``LOG_DIR`` is set, else ``NO`` (inference commands keep a run
  folder only when given ``log_dir=``; see ``conf/common/hydra/inference.yaml``).

Data, caches and logs are never kept inside the package: ``conf/common/paths`` puts them under the folder the
command runs in (or ``TALKING_PORTRAIT_HOME`` / an explicit ``paths.*``).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from talking_portrait import CHECKOUT, CONF_DIR, EXPERIMENTS_DIR

log = logging.getLogger(__name__)

__all__ = ["CHECKOUT", "CONF_DIR", "EXPERIMENTS_DIR", "seed_everything", "shared_dir", "store_open_dict"]


def shared_dir() -> Path:
    """The ``shared/`` folder of tests and examples (it may not exist; callers check)."""
    env = os.environ.get("TALKING_PORTRAIT_SHARED")
    if env:
        return Path(env).expanduser().resolve()
    base = CHECKOUT if CHECKOUT is not None else Path.cwd()
    return (base.parent / "shared").resolve()


def _register(name: str, fn) -> None:
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, fn)


_register("conf_dir", lambda: str(CONF_DIR))
_register("experiments_dir", lambda: str(EXPERIMENTS_DIR))
_register("shared_dir", lambda: str(shared_dir()))
_register("run_files", lambda log_dir, yes, no: no if log_dir in (None, "") else yes)


def store_open_dict(name: str, key: str) -> None:
    """Register the config ``name`` = ``{key: {}}`` in Hydra's config store, with the ``key`` node open to new
    keys although Hydra locks the composed config (a node's own ``struct`` flag overrides the inherited
    one): listed in a primary config's defaults, it lets ``key.NAME=VALUE`` add entries without Hydra's ``+``
    (e.g. ``systems.ours=DIR``)."""
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.create({key: OmegaConf.create({}, flags={"struct": False})})
    ConfigStore.instance().store(name=name, node=node)


def seed_everything(seed: int | None) -> int | None:
    """Seed Python, NumPy and PyTorch (all devices). ``None`` leaves everything unseeded."""
    from common.limits import seed as check_seed

    seed = check_seed(seed)
    if seed is None:
        return None
    import torch

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
