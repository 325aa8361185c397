"""Every Hydra config composes and resolves, alone and with every experiment of its stage.

Layout: ``conf/<stage>/`` holds a stage's primary configs (``*.yaml`` at its top level) and its
config groups; ``conf/common/`` holds the shared groups (paths, logger, trainer, hydra) and is on
every stage's search path; ``experiments/<stage>/experiment/NAME.yaml`` is selected with
``experiment=NAME``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from common.config import CONF_DIR, EXPERIMENTS_DIR
from tests.conftest import PROJECT_ROOT

PRIMARY = sorted(p for p in CONF_DIR.glob("*/*.yaml"))
EXPERIMENTS = sorted(EXPERIMENTS_DIR.glob("*/experiment/*.yaml"))


def compose_resolved(config_dir: Path, name: str, overrides: list[str]):
    importlib.import_module(f"{config_dir.name}.{name}")  # its entry module registers what the config needs
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
    assert cfg.task_name
    # Data, caches and logs under the folder the command runs in; ../shared beside the checkout.
    assert cfg.paths.root_dir == os.environ.get("TALKING_PORTRAIT_HOME", os.getcwd())
    assert cfg.paths.data_dir == f"{cfg.paths.root_dir}/data"
    assert cfg.paths.log_dir == f"{cfg.paths.root_dir}/logs"
    assert Path(cfg.paths.shared_dir) == (PROJECT_ROOT.parent / "shared").resolve()


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
    for group in ("paths", "logger", "trainer", "hydra", "ray"):
        assert (CONF_DIR / "common" / group).is_dir(), group
    for logger in ("csv", "wandb", "none"):
        assert (CONF_DIR / "common" / "logger" / f"{logger}.yaml").is_file()
    for trainer in ("cpu", "gpu", "ddp"):
        assert (CONF_DIR / "common" / "trainer" / f"{trainer}.yaml").is_file()


INFERENCE = ["audio2lmk/infer", "audio2lmk/evaluate", "lmk2video/init", "lmk2video/generate", "lmk2video/generate_batch", "lmk2video/evaluate", "lmk2video/benchmark", "common/evaluate",
             "common/preprocess"]  # fmt: skip
TRAINING = ["audio2lmk/train", "lmk2video/train"]


def compose_hydra(name: str, overrides: list[str]):
    """The resolved ``hydra`` node of a primary config (``name``: ``stage/config``)."""
    stage, config = name.split("/")
    importlib.import_module(f"{stage}.{config}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR / stage), version_base="1.3"):
        cfg = compose(config_name=config, overrides=overrides, return_hydra_config=True)
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = "/tmp/talking-portrait-compose"
        cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        hydra = OmegaConf.to_container(cfg.hydra, resolve=True)
    GlobalHydra.instance().clear()
    return hydra


def test_every_primary_config_is_an_inference_or_a_training_command() -> None:
    assert sorted(INFERENCE + TRAINING) == sorted(f"{p.parent.name}/{p.stem}" for p in PRIMARY)


@pytest.mark.parametrize("name", INFERENCE)
def test_inference_commands_keep_no_run_folder_unless_log_dir_is_given(name: str) -> None:
    quiet = compose_hydra(name, [])
    assert quiet["run"]["dir"] == "." and quiet["output_subdir"] is None
    assert quiet["job_logging"]["root"]["handlers"] == ["console"]
    assert quiet["job_logging"]["handlers"]["console"]["stream"] == "ext://sys.stderr"
    assert quiet["job_logging"]["handlers"]["file"]["delay"] is True  # defined, never opened
    kept = compose_hydra(name, ["log_dir=runs/x"])
    assert kept["run"]["dir"] == "runs/x" and kept["output_subdir"] == ".hydra"
    assert kept["job_logging"]["root"]["handlers"] == ["console", "file"]


@pytest.mark.parametrize("name", TRAINING)
def test_training_commands_keep_their_run_folders(name: str) -> None:
    hydra = compose_hydra(name, [])
    assert hydra["run"]["dir"].startswith(f"{os.getcwd()}/logs/") and hydra["output_subdir"] == ".hydra"
