"""``python -m audio2lmk.evaluate model=DIR [index=PATH] [val_speakers=[A,B]] [out=FILE.json]``

Evaluates an exported model and the two baselines (:mod:`audio2lmk.baselines`) on the held-out
speakers of a prepared index with the same metric code (:class:`audio2lmk.metrics.Audio2LmkMetrics`),
prints a table and writes it as JSON when ``out`` is set.

By default the index and the held-out speakers are the ones the model was trained with (recorded
in its ``audio2lmk.json``); the loudness baseline is fitted on the other speakers of the index.
The model runs exactly as ``audio2lmk.infer`` does (:func:`audio2lmk.inference.audio_to_landmarks`)
on each held-out clip's whole audio, with the clip's most neutral frame as the reference face
and its first-frame pose as the reference pose; each clip's first ``min(model frames, landmark
frames)`` frames are compared. Hydra entry point; options in ``conf/audio2lmk/evaluate.yaml``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from audio2lmk.baselines import LoudnessBaseline, still_offsets
from audio2lmk.data import ClipStore
from audio2lmk.inference import LoadedAudio2Lmk, audio_to_landmarks, check_model_folder, load_audio2lmk
from audio2lmk.metrics import Audio2LmkMetrics
from common import limits
from common.atomic import atomic_output, check_output
from common.config import CONF_DIR
from common.devices import resolve_device
from common.errors import UserError, exit_on_user_error
from common.geometry import absolute_to_relative
from common.index import load_index, split_by_speaker
from common.lmkfile import LandmarkSequence

log = logging.getLogger("audio2lmk.evaluate")


def _update(
    metric: Audio2LmkMetrics, clip: int, offsets: np.ndarray, target: np.ndarray, pose, pose_target
) -> None:
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))[None]  # noqa: E731
    metric.update(
        torch.tensor([clip]),
        torch.ones(1, len(target), dtype=torch.bool),
        mesh_pred=t(offsets),
        mesh_target=t(target),
        pose_pred=t(pose),
        pose_target=t(pose_target),
    )


def evaluate(
    loaded: LoadedAudio2Lmk,
    index: str | Path,
    val_speakers: Sequence[str],
    *,
    loudness_context: Sequence[int] = (0, 3),
    style: int | str | None = None,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Metrics of the model and both baselines on the held-out speakers' clips (module docstring)."""
    train_records, val_records = split_by_speaker(load_index(index), list(val_speakers))
    fps = loaded.fps
    train, val = ClipStore(train_records, fps), ClipStore(val_records, fps)
    audios = [train[i].audio for i in range(len(train))]
    offsets = [train[i].offsets for i in range(len(train))]
    baselines = {
        ("loudness" if k == 0 else f"loudness_ctx{k}"): LoudnessBaseline(context_frames=int(k)).fit(
            audios, offsets, fps
        )
        for k in loudness_context
    }
    metrics = {name: Audio2LmkMetrics(len(val)) for name in ("model", "still", *baselines)}
    frames = 0
    for i in range(len(val)):
        clip = val[i]
        reference = LandmarkSequence(
            mesh=clip.reference_mesh[None], pose=clip.pose[:1], fps=fps, image_size=(256, 256)
        )
        pose_mode = "model" if loaded.pose_model is not None else "still"
        out = audio_to_landmarks(loaded, clip.audio, reference, pose=pose_mode, style=style, seed=seed)
        n = min(out.num_frames, clip.num_frames)
        frames += n
        target = clip.offsets[:n]
        pose_target = absolute_to_relative(clip.pose[:n])
        still_pose = np.zeros_like(pose_target)
        predictions = {
            "model": (out.mesh[:n] - clip.reference_mesh[None], absolute_to_relative(out.pose[:n])),
            "still": (still_offsets(n), still_pose),
        }
        for name, baseline in baselines.items():
            predictions[name] = (baseline.predict(clip.audio, clip.num_frames, fps)[:n], still_pose)
        for name, (offsets, pose) in predictions.items():
            _update(metrics[name], i, offsets, target, pose, pose_target)
    results = {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}
    return {
        "model": str(loaded.path) if loaded.path is not None else None,
        "index": str(Path(index).resolve()),
        "fps": fps,
        # The speakers the loudness baselines are fitted on: the index's other speakers.
        "train_speakers": sorted({c.speaker for c in train_records}),
        "val_speakers": sorted({c.speaker for c in val_records}),
        "val_clips": [c.id for c in val_records],
        "frames": frames,
        "loudness_context_frames": [int(k) for k in loudness_context],
        "results": results,
        "notes": {
            "still": "reference mesh held still; its constant mouth opening has correlation 0 by definition",
            "loudness": "offsets linear in the frame's loudness (dB re the clip's 95th percentile), "
            "least squares on the training speakers; loudness_ctxK also uses K frames either side",
            "pose_l1": "baselines keep the reference pose (zero relative pose)",
        },
    }


def format_table(report: dict[str, Any]) -> str:
    """The results as a fixed-width text table."""
    names = ("lve_mm", "mve_mm", "mouth_corr", "pose_l1")
    lines = [
        f"held-out speakers: {', '.join(report['val_speakers'])} ({len(report['val_clips'])} clips, "
        f"{report['frames']} frames); baselines fitted on {', '.join(report['train_speakers'])}",
        f"{'method':<14}" + "".join(f"{n:>12}" for n in names),
    ]
    for method, values in report["results"].items():
        lines.append(f"{method:<14}" + "".join(f"{values.get(n, float('nan')):>12.4f}" for n in names))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "audio2lmk"), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> dict[str, Any]:
    work_dir = Path(cfg.paths.work_dir)
    if cfg.model is None:
        raise UserError(
            "model=DIR is required: a folder written by `python -m audio2lmk.train ... export_dir=DIR`"
        )
    out = work_dir / Path(cfg.out).expanduser() if cfg.out else None
    if out is not None and out.suffix.lower() != ".json":
        raise UserError(f"out={cfg.out}: the report is JSON; choose a name ending in .json")
    if out is not None:
        check_output(out, cfg.overwrite)
    limits.seed(cfg.seed)
    device = resolve_device(str(cfg.device))
    model_dir = work_dir / Path(cfg.model).expanduser()
    check_model_folder(model_dir)
    loaded = load_audio2lmk(model_dir, device=device)
    data = loaded.info.get("data", {})
    index = work_dir / Path(cfg.index).expanduser() if cfg.index else data.get("index")
    val_speakers = OmegaConf.to_container(cfg.val_speakers) if cfg.val_speakers else data.get("val_speakers")
    if not index or not val_speakers:
        raise UserError(
            f"{loaded.path}/audio2lmk.json does not record its data; give index=PATH and val_speakers=[NAME]"
        )
    report = evaluate(
        loaded,
        index,
        val_speakers,
        loudness_context=list(cfg.loudness_context),
        style=cfg.style,
        seed=cfg.seed,
    )
    print(format_table(report))
    if out is not None:
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
