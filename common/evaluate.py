"""``python -m common.evaluate real=DIR systems.NAME=DIR [systems.OTHER=DIR ...] [references=DIR] out=DIR``

The field's metrics of talking videos, whoever made them: landmark distance, mouth and head motion, jitter,
identity (dlib), lip sync (mouth vs loudness; SyncNet's LSE-C/D with its weights), PSNR/SSIM, FID/FVD
(with their networks). Writes ``out/report.json``, ``out/report.md`` and ``out/plots/``; prints the table.
What each metric means: :mod:`common.evaluation` and ``docs/evaluation.md``. Every input is checked before
any scoring: a bad one is one ``error:`` line, exit status 2, and no report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from common.config import CONF_DIR, store_open_dict
from common.errors import UserError, exit_on_user_error

store_open_dict("evaluate_systems", "systems")


def run(cfg: DictConfig) -> dict[str, Any]:
    from common.atomic import check_output
    from common.evaluation.report import publish
    from common.evaluation.run import EvalOptions, evaluate_folders

    work = Path(cfg.paths.work_dir)

    def path(value: str | None) -> Path | None:
        return None if value in (None, "") else work / Path(str(value)).expanduser()

    if cfg.out is None:
        raise UserError("out=DIR is required: the folder for report.json, report.md and plots/")
    out = path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; give a folder for the report")
    check_output(out / "report.json", cfg.overwrite)
    systems = {name: path(folder) for name, folder in cfg.systems.items()}
    options = EvalOptions.from_config(cfg, path)
    report, series = evaluate_folders(path(cfg.real), systems, path(cfg.references), options)
    publish(report, series, out)
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "common"), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from common.logs import quiet_libraries

    quiet_libraries()
    run(cfg)


if __name__ == "__main__":
    main()
