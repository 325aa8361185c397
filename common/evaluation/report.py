"""What an evaluation writes: ``report.json`` (the contract other tools read), ``report.md`` and plots.

``report.json``: ``{"systems": {NAME: {"clips": {STEM: {METRIC: number | null}}, "summary": {METRIC: {"mean",
"ci95": [lo, hi], "n"}}, "not_computed": {STEM: {METRIC: reason}}, "missing": [STEM, ...]}}, "options": {...}}``.
Plots (matplotlib, PNG): ``plots/METRIC.png`` (per-clip bars, one colour per system) and
``plots/mouth_STEM.png`` (mouth opening over time of each system and the real clip, with the audio envelope).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_output

# Metric: (label, better) where better is "higher", "lower" or "real" (closer to the real video's value).
METRICS = {
    "detection_rate": ("face detection rate", "higher"),
    "lmd_face": ("LMD face (/ inter-ocular)", "lower"),
    "lmd_mouth": ("LMD mouth (/ inter-ocular)", "lower"),
    "lmd_face_px512": ("LMD face (px at 512)", "lower"),
    "lmd_mouth_px512": ("LMD mouth (px at 512)", "lower"),
    "mouth_corr": ("mouth-opening correlation with real", "higher"),
    "driving_mouth_corr": ("mouth-opening correlation with the driving landmarks", "higher"),
    "pose_error_deg": ("head-pose error (deg)", "lower"),
    "jitter": ("landmark jitter (/ inter-ocular)", "real"),
    "identity_cosine": ("identity: dlib cosine to reference", "higher"),
    "identity_distance": ("identity: dlib distance to reference", "lower"),
    "av_offset_frames": ("A/V offset (frames)", "real"),
    "av_confidence": ("A/V confidence (mouth vs loudness)", "higher"),
    "sync_corr": ("mouth vs loudness correlation at offset 0", "higher"),
    "lse_c": ("LSE-C (SyncNet)", "higher"),
    "lse_d": ("LSE-D (SyncNet)", "lower"),
    "psnr": ("PSNR (dB)", "higher"),
    "ssim": ("SSIM", "higher"),
    "psnr_face": ("PSNR face (dB)", "higher"),
    "ssim_face": ("SSIM face", "higher"),
    "fid": ("FID", "lower"),
    "fvd": ("FVD", "lower"),
}


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown(report: dict[str, Any]) -> str:
    """One table: a row per metric, a column per system, ``mean [95 % interval]``; then what was not computed."""
    systems = list(report["systems"])
    present = [m for m in METRICS if any(m in report["systems"][s]["summary"] for s in systems)]
    lines = [
        "| metric | better | " + " | ".join(systems) + " |",
        "| --- | --- | " + " | ".join("---" for _ in systems) + " |",
    ]
    for metric in present:
        label, better = METRICS[metric]
        cells = []
        for system in systems:
            entry = report["systems"][system]["summary"].get(metric)
            if entry is None or entry["mean"] is None:
                cells.append("not computed")
                continue
            lo, hi = entry["ci95"]
            interval = f" [{_number(lo)}, {_number(hi)}]" if lo is not None and entry["n"] > 1 else ""
            clips = len(report["systems"][system]["clips"])
            count = f" (n={entry['n']})" if metric not in ("fid", "fvd") and entry["n"] < clips else ""
            cells.append(f"{_number(entry['mean'])}{interval}{count}")
        lines.append(f"| {label} | {better} | " + " | ".join(cells) + " |")
    counts = {s: len(report["systems"][s]["clips"]) for s in systems}
    notes = ["", f"Clips per system: {', '.join(f'{s} {n}' for s, n in counts.items())}; "
             "intervals: 95 % bootstrap over clips."]  # fmt: skip
    for system in systems:
        entry = report["systems"][system]
        reasons = sorted({(m, r) for per_clip in entry["not_computed"].values() for m, r in per_clip.items()})
        reasons += sorted(entry.get("not_computed_summary", {}).items())
        for metric, reason in reasons:
            notes.append(f"- {system}: {metric} not computed: {reason}")
        if entry["missing"]:
            notes.append(f"- {system}: no video for {', '.join(entry['missing'])}")
    return "\n".join(lines + notes) + "\n"


def plot(report: dict[str, Any], series: dict[str, dict[str, dict]], folder: Path) -> list[Path]:
    """Per-metric bar charts and per-clip mouth-opening curves into ``folder``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    systems = list(report["systems"])
    stems = sorted({stem for s in systems for stem in report["systems"][s]["clips"]})
    written = []
    width = 0.8 / max(1, len(systems))
    for metric, (label, better) in METRICS.items():
        if not any(metric in c for s in systems for c in report["systems"][s]["clips"].values()):
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(stems) * max(1, len(systems)) * 0.5 + 2), 3.2))
        for i, system in enumerate(systems):
            clips = report["systems"][system]["clips"]
            values = [clips.get(stem, {}).get(metric) for stem in stems]
            x = np.arange(len(stems)) + (i - (len(systems) - 1) / 2) * width
            ax.bar(x, [np.nan if v is None else v for v in values], width, label=system)
        ax.set_xticks(np.arange(len(stems)), stems, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{label} ({better} is better)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, folder / f"{metric}.png"))
    for stem in stems:
        fig, ax = plt.subplots(figsize=(7, 2.8))
        envelope = None
        for system in systems:
            entry = series.get(system, {}).get(stem)
            if entry is None:
                continue
            t = np.arange(len(entry["mouth"])) / entry["fps"]
            ax.plot(t, entry["mouth"], label=system, linewidth=1.2 if system == "real" else 0.9)
            if envelope is None and entry["envelope"] is not None:
                envelope = (t, entry["envelope"])
        ax.set_xlabel("seconds")
        ax.set_ylabel("mouth opening / inter-ocular")
        if envelope is not None:
            twin = ax.twinx()
            twin.plot(*envelope, color="grey", alpha=0.5, linewidth=0.8, label="audio envelope")
            twin.set_ylabel("log RMS", color="grey")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title(stem, fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, folder / f"mouth_{stem}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], series: dict, out: Path) -> dict[str, Path]:
    """``out/report.json``, ``out/report.md`` and ``out/plots/``, each file written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    with atomic_output(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, allow_nan=False))
    files["json"] = out / "report.json"
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(markdown(report))
    files["markdown"] = out / "report.md"
    plot(report, series, out / "plots")
    files["plots"] = out / "plots"
    return files


def publish(report: dict[str, Any], series: dict, out: Path) -> None:
    """:func:`write_report`, then the table and where it went on stdout (what the CLIs end with)."""
    write_report(report, series, out)
    print(markdown(report))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'plots'}")
