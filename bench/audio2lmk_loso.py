"""Leave-one-speaker-out ablations of audio2lmk on the shared clips (docs/audio2lmk-ablations.md).

For every variant and every speaker of the corpus, trains ``python -m audio2lmk.train`` with that speaker
held out (``data.val_speakers=[SPEAKER]``) and reads the last validation metrics (``val/mouth_corr``,
``val/lve_mm``) of the run; each fold's model folder is exported to ``OUT/VARIANT/SPEAKER/model``. Results go to ``OUT/results.json`` and a markdown table ``OUT/table.md``;
finished folds are skipped, so an interrupted study continues where it stopped.

    python bench/audio2lmk_loso.py --out outputs/loso \\
        --variant mel="experiment=mel_small" \\
        --variant phoneme="experiment=phoneme_small"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

SPEAKERS = ("KristiNoem", "Obama", "andrew", "feifeili")
METRICS = ("val/mouth_corr", "val/lve_mm", "val/mve_mm")


def last_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of each of METRICS in a run's csv log."""
    found: dict[str, float] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for name in METRICS:
                if row.get(name):
                    found[name] = float(row[name])
    return found


def run_fold(out: Path, variant: str, overrides: list[str], speaker: str, extra: list[str]) -> dict:
    run_dir = out / variant / speaker
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    command = [
        sys.executable,
        "-m",
        "audio2lmk.train",
        *overrides,
        f"data.val_speakers=[{speaker}]",
        f"hydra.run.dir={run_dir}",
        f"export_dir={run_dir / 'model'}",
        *extra,
    ]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {"variant": variant, "speaker": speaker, "seconds": time.perf_counter() - start}
    result.update(last_metrics(run_dir))
    done.write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict], variants: list[str], speakers: list[str]) -> str:
    lines = [
        "| variant | " + " | ".join(speakers) + " | mean mouth corr | mean LVE (mm) |",
        "| --- | " + " | ".join("---" for _ in speakers) + " | --- | --- |",
    ]
    for variant in variants:
        rows = {r["speaker"]: r for r in results if r["variant"] == variant}
        corr = [rows[s].get("val/mouth_corr", float("nan")) for s in speakers if s in rows]
        lve = [rows[s].get("val/lve_mm", float("nan")) for s in speakers if s in rows]
        cells = [f"{rows[s]['val/mouth_corr']:.2f}" if s in rows else "" for s in speakers]
        mean_corr = f"{sum(corr) / len(corr):.2f}" if corr else ""
        mean_lve = f"{sum(lve) / len(lve):.2f}" if lve else ""
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {mean_corr} | {mean_lve} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="results folder (reused: finished folds are kept)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME=OVERRIDES",
        help="a variant: its name and the audio2lmk.train overrides (space-separated)",
    )
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS), help="speakers to hold out in turn")
    parser.add_argument("extra", nargs="*", help="overrides added to every run")
    args = parser.parse_args(argv)
    variants = []
    results = []
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants.append(name)
        for speaker in args.speakers:
            results.append(run_fold(args.out, name, shlex.split(overrides), speaker, args.extra))
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
            (args.out / "table.md").write_text(table(results, variants, args.speakers))
    print(table(results, variants, args.speakers))


if __name__ == "__main__":
    main()
