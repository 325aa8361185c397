"""``python -m lmk2video.generate_batch model=DIR manifest=FILE.jsonl out_dir=DIR [engine=local|ray] ...``

One video per manifest item (:mod:`lmk2video.batch`): ``out_dir/ID.mp4``, failures in ``out_dir/failures.jsonl``,
finished items skipped on a rerun. ``engine=ray`` streams the items to Ray actors, one model each
(:mod:`common.engines`). Options: ``conf/lmk2video/generate_batch.yaml`` (every generate option is a default for
the items). Bad options or a malformed manifest exit with status 2 and one ``error:`` line before any model loads.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR
from common.errors import UserError, exit_on_user_error
from common.logs import quiet_libraries

USAGE = "python -m lmk2video.generate_batch model=DIR manifest=FILE.jsonl out_dir=DIR"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="generate_batch")
@exit_on_user_error
def main(cfg: DictConfig) -> int:
    from common.atomic import check_output_folder
    from common.engines import RaySettings, check_engine, check_threads
    from common.limits import number
    from lmk2video.batch import WORKER_OPTIONS, read_manifest, run_batch
    from lmk2video.generation import GenerateSettings

    quiet_libraries()
    work = Path(cfg.paths.work_dir)
    for key in ("model", "manifest", "out_dir"):
        if cfg[key] is None:
            raise UserError(f"{key}=... is required, e.g. {USAGE}")
    for key in ("reference", "landmarks", "audio", "out"):
        if cfg.get(key) is not None:
            raise UserError(f"{key}= is per item: set it on the manifest's lines, not on the command line")
    model = work / Path(cfg.model).expanduser()
    if not (model / "model_index.json").is_file():
        raise UserError(
            f"model={cfg.model}: not an lmk2video model folder (no model_index.json in {model}); give a folder "
            "written by python -m lmk2video.init, a training run's export_dir or lmk2video.convert"
        )
    engine = check_engine(cfg.engine)
    ray_settings = RaySettings.from_values(OmegaConf.to_container(cfg.ray, resolve=True))
    threads = check_threads(cfg.threads_per_worker)
    if cfg.timeout_s is not None:
        number(cfg.timeout_s, "timeout_s=", 0, 7 * 86400, low_open=True, hint="seconds, or null")
    number(cfg.max_retries, "max_retries=", 0, 100, integer=True)
    values = OmegaConf.to_container(cfg, resolve=True)
    defaults = GenerateSettings.from_config(values, work)
    base = {k: v for k, v in values.items() if k not in ("reference", "landmarks", "audio", "out")}
    base.update({k: getattr(defaults, k) for k in WORKER_OPTIONS})  # paths made absolute
    GenerateSettings.from_config({**base, "reference": "-", "landmarks": "-", "out": "x.mp4"}, "/").check()
    items = read_manifest(work / Path(cfg.manifest).expanduser(), cfg.timeout_s, cfg.max_retries)
    out_dir = check_output_folder(work / Path(cfg.out_dir).expanduser(), overwrite=True)  # a rerun resumes
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = run_batch(
        items, base, out_dir, engine=engine, ray_settings=ray_settings, threads=threads, progress=cfg.progress
    )
    print(
        f"generate_batch: {summary['done']} rendered, {summary['skipped']} already done, {summary['failed']} "
        f"failed ({out_dir / 'failures.jsonl'}) in {summary['seconds']:.0f} s; videos in {out_dir}"
    )
    return summary["done"] + summary["skipped"]


if __name__ == "__main__":
    main()
