"""``python -m common.preprocess input_dir=DIR output_dir=DIR [num_workers=N] ...``

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

log = logging.getLogger("common.preprocess")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "common"), config_name="preprocess")
@exit_on_user_error
def main(cfg: DictConfig) -> int:
    work_dir = Path(cfg.paths.work_dir)
    fields = PreprocessSettings.__dataclass_fields__
    settings = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k in fields}
    for key in ("input_dir", "output_dir"):
        if settings[key] is None:
            raise UserError(
                f"{key}=... is required, e.g. python -m common.preprocess input_dir=videos output_dir=data/set"
            )
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
