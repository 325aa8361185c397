"""Every Hydra config composes and resolves, alone and with every experiment of its stage.

Layout: ``conf/<stage>/`` holds a stage's primary configs (``*.yaml`` at its top level) and its
config groups; ``conf/common/`` holds the shared groups (paths, logger, trainer, hydra) and is on
every stage's search path; ``experiments/<stage>/experiment/NAME.yaml`` is selected with
``experiment=NAME``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from common.config import CONF_DIR, EXPERIMENTS_DIR, PROJECT_ROOT

PRIMARY = sorted(p for p in CONF_DIR.glob("*/*.yaml"))
EXPERIMENTS = sorted(EXPERIMENTS_DIR.glob("*/experiment/*.yaml"))


def compose_resolved(config_dir: Path, name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = "/tmp/talking-portrait-compose"
        HydraConfig.instance().set_config(cfg)
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        resolved = OmegaConf.create(OmegaConf.to_container(job, resolve=True))
    GlobalHydra.instance().clear()
    return resolved


def _id(p: Path) -> str:
    return str(p.relative_to(PROJECT_ROOT))


@pytest.mark.parametrize("primary", PRIMARY, ids=_id)
def test_primary_config_composes(primary):
    cfg = compose_resolved(primary.parent, primary.stem, [])
    assert cfg.paths.root_dir == str(PROJECT_ROOT)
    assert cfg.task_name


def experiment_cases():
    for exp in EXPERIMENTS:
        stage = exp.parent.parent.name
        for primary in sorted((CONF_DIR / stage).glob("*.yaml")):
            text = primary.read_text()
            if "experiment:" in text:
                yield pytest.param(primary, exp, id=f"{stage}/{primary.stem}+{exp.stem}")


@pytest.mark.parametrize(("primary", "experiment"), list(experiment_cases()))
def test_experiment_composes(primary, experiment):
    cfg = compose_resolved(primary.parent, primary.stem, [f"experiment={experiment.stem}"])
    assert cfg.task_name


def test_shared_groups_exist():
    for group in ("paths", "logger", "trainer", "hydra"):
        assert (CONF_DIR / "common" / group).is_dir(), group
    for logger in ("csv", "wandb", "none"):
        assert (CONF_DIR / "common" / "logger" / f"{logger}.yaml").is_file()
    for trainer in ("cpu", "gpu", "ddp"):
        assert (CONF_DIR / "common" / "trainer" / f"{trainer}.yaml").is_file()
