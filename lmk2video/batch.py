"""Batch generation behind ``python -m lmk2video.generate_batch``: a manifest of items -> one video per item.

The manifest is JSON lines, one item per line::

    {"id": "kristi_001", "reference": "portraits/kristi.png", "landmarks": "lmk/001.npz", "audio": "wav/001.wav"}
    {"id": "obama_002", "reference": "portraits/obama.png", "audio": "wav/002.wav", "seed": 7, "steps": 10}

``id`` (letters, digits, ``.``, ``_``, ``-``; unique) names the output ``out_dir/ID.mp4``; ``reference`` and
``landmarks`` and/or ``audio`` are what ``python -m lmk2video.generate`` takes (an item with audio but no
landmarks runs audio2lmk first and writes ``out_dir/ID.npz``); relative paths are taken from the manifest's
folder. An item may also set ``timeout_s``, ``max_retries`` and any per-video generate option
(:data:`ITEM_OPTIONS`: seed, steps, cfg, scheduler, preset, width, height, ...); the command line's values are
the defaults.

Items run on a :class:`common.engines.WorkerPool`: one model per worker, loaded once (this process with
``engine=local``; ``ray.num_workers`` Ray actors with ``ray.num_gpus_per_worker`` GPUs each with ``engine=ray``),
items streamed to whichever worker is free. A finished item (its video exists) is skipped when the command
runs again; a failed one is recorded as one line of ``out_dir/failures.jsonl`` (id, error, attempts, seconds)
and the others go on; a rerun tries the failed ones again. ``failures.jsonl`` is written by this process only,
atomically, after every failure; it lists the failures of the last run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.limits import number

log = logging.getLogger("lmk2video.generate_batch")

ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
FAILURES = "failures.jsonl"
# Options a worker fixes for all its items (its model and device), and batch-level ones.
WORKER_OPTIONS = (
    "model",
    "device",
    "dtype",
    "compile",
    "channels_last",
    "pose_cache",
    "face_model",
    "audio2lmk_model",
)
# Per-item generate options: everything else generate takes, except where the output goes.
ITEM_OPTIONS = (
    "seed", "width", "height", "grid", "audio2lmk_pose", "audio2lmk_style",
    "steps", "cfg", "scheduler", "preset", "cfg_interval", "cache_interval", "context_frames",
    "context_overlap", "context_stride", "context_weighting", "context_shift", "decode_chunk", "pad_mode",
)  # fmt: skip
ITEM_KEYS = ("id", "reference", "landmarks", "audio", "timeout_s", "max_retries", *ITEM_OPTIONS)


@dataclasses.dataclass(frozen=True)
class Item:
    """One manifest line: ``values`` holds its generate options (paths absolute)."""

    id: str
    line: int
    values: dict[str, Any]
    timeout_s: float | None
    max_retries: int


def read_manifest(path: str | Path, default_timeout: float | None, default_retries: int) -> list[Item]:
    """Every item of the manifest, checked: valid JSON objects, known keys, unique safe ids, something to render.

    Whether the files exist is checked per item when it runs (a missing file fails that item only).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest={path}: no such file; give a JSON-lines file, one item per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"manifest={path}: not a text file; write one JSON object per line") from None
    items: list[Item] = []
    seen: dict[str, int] = {}
    for number_, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"manifest={path} line {number_}"
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not JSON ({err.msg}); write one JSON object per line") from None
        if not isinstance(entry, dict):
            raise UserError(f'{where}: a JSON object is expected, e.g. {{"id": "a", "reference": ...}}')
        unknown = sorted(set(entry) - set(ITEM_KEYS))
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)}; an item may set {', '.join(ITEM_KEYS)}"
            )
        item_id = entry.get("id")
        if not isinstance(item_id, str) or not ID_PATTERN.match(item_id):
            raise UserError(
                f"{where}: id {item_id!r} must be a file name of letters, digits, '.', '_' and '-' (it names "
                "out_dir/ID.mp4)"
            )
        if item_id in seen:
            raise UserError(f"{where}: id {item_id!r} is also on line {seen[item_id]}; ids must be unique")
        seen[item_id] = number_
        if not isinstance(entry.get("reference"), str):
            raise UserError(f'{where}: item {item_id!r} needs "reference": an image path')
        if not any(isinstance(entry.get(k), str) for k in ("landmarks", "audio")):
            raise UserError(f'{where}: item {item_id!r} needs "landmarks" (.npz) and/or "audio"')
        timeout = entry.get("timeout_s", default_timeout)
        if timeout is not None:
            number(timeout, f"{where}: timeout_s", 0, 7 * 86400, low_open=True, hint="seconds, or null")
        retries = number(
            entry.get("max_retries", default_retries), f"{where}: max_retries", 0, 100, integer=True
        )
        values = {k: v for k, v in entry.items() if k not in ("id", "timeout_s", "max_retries")}
        for key in ("reference", "landmarks", "audio"):
            if isinstance(values.get(key), str):
                values[key] = str(path.parent / Path(values[key]).expanduser())
        items.append(Item(item_id, number_, values, timeout, retries))
    if not items:
        raise UserError(f"manifest={path}: no items; write one JSON object per line")
    return items


def output_of(out_dir: Path, item_id: str) -> Path:
    return Path(out_dir) / f"{item_id}.mp4"


class BatchWorker:
    """One worker's state: the model loaded once (and audio2lmk on first use); renders items by their values."""

    def __init__(self, base: dict[str, Any], out_dir: str) -> None:
        from common.devices import resolve_device
        from lmk2video.generation import GenerateSettings
        from lmk2video.pipeline import load_pipeline
        from lmk2video.rendering import resolve_dtype

        self.base = base
        self.out_dir = Path(out_dir)
        settings = GenerateSettings.from_config(base, work_dir="/")
        self.device = resolve_device(settings.device)
        self.pipe = load_pipeline(
            settings.model, device=self.device, dtype=resolve_dtype(settings.dtype, self.device)
        )
        self.audio2lmk = None

    def __call__(self, item: Item, deadline: float | None) -> str:
        from common.engines import check_deadline
        from lmk2video.generation import GenerateSettings, audio2lmk_landmarks, generate

        values = {**self.base, **item.values, "out": str(output_of(self.out_dir, item.id)), "progress": False}
        settings = GenerateSettings.from_config(values, work_dir="/").check()
        if settings.landmarks is None and self.audio2lmk is None:
            self.audio2lmk = audio2lmk_landmarks(settings)
        generate(
            settings,
            self.audio2lmk if settings.landmarks is None else None,
            pipeline=self.pipe,
            progress=lambda stage, done, total: check_deadline(deadline, f"item {item.id}"),
        )
        return str(settings.out)


def write_failures(out_dir: Path, failures: dict[str, dict]) -> None:
    """``out_dir/failures.jsonl``: one line per failed item of this run (removed when none failed)."""
    from common.atomic import atomic_output

    path = Path(out_dir) / FAILURES
    if not failures:
        path.unlink(missing_ok=True)
        return
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(f) + "\n" for f in failures.values()))


def run_batch(
    items: list[Item],
    base: dict[str, Any],
    out_dir: Path,
    *,
    engine: str,
    ray_settings: Any,
    threads: int | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render every unfinished item; returns the summary (``done``, ``skipped``, ``failed``, ``seconds``)."""
    import time

    from tqdm.auto import tqdm

    from common.engines import WorkerPool

    pending = [item for item in items if not output_of(out_dir, item.id).is_file()]
    skipped = len(items) - len(pending)
    log.info("%d items, %d to render, %d already done (%s engine)", len(items), len(pending), skipped, engine)
    pool = WorkerPool(
        functools.partial(BatchWorker, base, str(out_dir)),
        engine=engine,
        ray_settings=ray_settings,
        threads=threads,
    )
    failures: dict[str, dict] = {}
    write_failures(out_dir, failures)
    done = 0
    start = time.perf_counter()
    with tqdm(
        total=len(pending), desc=f"generate_batch ({engine})", unit="video", disable=not progress
    ) as bar:
        results = pool.run(
            pending, timeout_s=[i.timeout_s for i in pending], max_retries=[i.max_retries for i in pending]
        )
        for result in results:
            item = pending[result.index]
            if result.error is None:
                done += 1
            else:
                failures[item.id] = {
                    "id": item.id,
                    "line": item.line,
                    "error": result.error,
                    "attempts": result.attempts,
                    "seconds": round(result.seconds, 3),
                }
                write_failures(out_dir, failures)
                log.warning("item %s failed after %d attempt(s): %s", item.id, result.attempts, result.error)
            bar.update(1)
            bar.set_postfix(done=done, failed=len(failures))
    return {"done": done, "skipped": skipped, "failed": len(failures), "seconds": time.perf_counter() - start}
