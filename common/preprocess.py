"""``python -m common.preprocess input_dir=DIR|inputs=LIST output_dir=DIR [engine=local|ray] [num_workers=N] ...``

Prepares a data set of talking-head videos for training (see ``common.corpus`` for what is
written and the rejection rules). Hydra entry point; options are in ``conf/common/preprocess.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR
from common.corpus import PreprocessSettings, preprocess
from common.errors import UserError, exit_on_user_error
from common.storage import is_url

log = logging.getLogger("common.preprocess")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "common"), config_name="preprocess")
@exit_on_user_error
def main(cfg: DictConfig) -> int:
    work_dir = Path(cfg.paths.work_dir)
    fields = PreprocessSettings.__dataclass_fields__
    settings = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k in fields}
    usage = "e.g. python -m common.preprocess input_dir=videos output_dir=data/set (or inputs=LIST.txt)"
    if settings["input_dir"] is None and settings["inputs"] is None:
        raise UserError(f"input_dir=... is required (or inputs=...), {usage}")
    if settings["output_dir"] is None:
        raise UserError(f"output_dir=... is required, {usage}")
    for key in ("input_dir", "output_dir", "inputs"):
        if settings[key] is not None and not is_url(settings[key]):
            settings[key] = str(work_dir / Path(settings[key]).expanduser())
    report = preprocess(PreprocessSettings(**settings))
    log.info(
        "accepted %d clip(s), rejected %d; index and report in %s",
        report["accepted"],
        len(report["rejected"]),
        settings["output_dir"],
    )
    for item in report["rejected"]:
        log.warning("rejected %s: %s", item["id"], item["reason"])
    return report["accepted"]


if __name__ == "__main__":
    main()
