"""``python -m lmk2video.benchmark model=DIR [mode=...] [audio2lmk_model=DIR] out=DIR [engine=local|ray]``

Runs our models on a test set (default: the held-out speaker of the shared clips) and writes the evaluation
table with the baselines (the real video, the reference frame repeated, any ``systems.NAME=DIR``), plots
and side-by-side videos: :mod:`lmk2video.benchmarking`. Resumable: finished videos are kept.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR, store_open_dict
from common.errors import UserError, exit_on_user_error

store_open_dict("benchmark_systems", "systems")


def run(cfg: DictConfig) -> dict:
    from common import limits
    from common.atomic import check_output_folder
    from common.engines import RaySettings, check_engine, check_threads
    from common.evaluation.report import publish
    from common.evaluation.run import EvalOptions, evaluate_folders
    from common.index import load_index
    from lmk2video.benchmarking import Benchmark, test_excerpts
    from lmk2video.rendering import SamplerOptions

    work = Path(cfg.paths.work_dir)

    def path(value) -> str | None:
        return None if value in (None, "") else str(work / Path(str(value)).expanduser())

    if cfg.out is None:
        raise UserError(
            "out=DIR is required: the benchmark's folder (videos, report.json, report.md, plots/)"
        )
    out = Path(path(cfg.out))
    for key in ("frames", "max_clips"):
        if cfg[key] is not None:
            limits.number(cfg[key], f"{key}=", 1, 100000, integer=True, hint="or null")
    limits.seed(cfg.seed)
    check_engine(cfg.engine)
    RaySettings.from_values(OmegaConf.to_container(cfg.ray, resolve=True))
    check_threads(cfg.threads_per_worker)
    check_output_folder(out, overwrite=True)  # an existing benchmark folder resumes
    clips = load_index(path(cfg.index))
    if cfg.test_speakers:
        clips = [c for c in clips if c.speaker in set(cfg.test_speakers)]
        if not clips:
            raise UserError(
                f"no clip of {list(cfg.test_speakers)} in index={cfg.index}; set test_speakers=[NAME]"
            )
    bench = Benchmark(
        excerpts=test_excerpts(clips, cfg.frames, cfg.max_clips, int(cfg.reference_frame)),
        out=out,
        mode=cfg.mode,
        model=path(cfg.model),
        audio2lmk_model=path(cfg.audio2lmk_model),
        audio2lmk_pose=cfg.audio2lmk_pose,
        sampler=SamplerOptions.from_values(dict(cfg)),
        seed=cfg.seed,
        device=cfg.device,
        dtype=cfg.dtype,
        compare_videos=cfg.compare_videos,
        progress=cfg.progress,
        engine=cfg.engine,
        ray=OmegaConf.to_container(cfg.ray, resolve=True),
        threads_per_worker=cfg.threads_per_worker,
    )
    bench.check()
    if cfg.mode == "landmarks_only":
        report, series = bench.landmarks_only()
    else:
        folders = bench.render_all()
        systems = {**folders, **{name: Path(path(folder)) for name, folder in cfg.systems.items()}}
        options = EvalOptions.from_config(cfg, path)
        report, series = evaluate_folders(out / "real", systems, out / "references", options)
        report["mode"] = cfg.mode
    publish(report, series, out)
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from common.logs import quiet_libraries

    quiet_libraries()
    run(cfg)


if __name__ == "__main__":
    main()
