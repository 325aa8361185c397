"""Preprocessing and batch generation on a Ray cluster (a local Ray instance started by the tests) against the
local engine: same outputs, a killed worker retried, failures recorded, reruns resumed; inputs from a list and
from fsspec URLs (``memory://``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.corpus import PreprocessSettings, preprocess
from tests.conftest import PROJECT_ROOT, run_main, shared_file

THREADS = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1")


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray instance on this machine (2 CPUs, one thread per worker) for the module; the commands join it."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": THREADS},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _excerpt(name: str, frames: int, dest: Path) -> None:
    """The first ``frames`` frames of a shared clip as ``dest/NAME.mp4`` with its speech beside it."""
    import wave

    from common.corpus import write_wav
    from common.video import iter_frames, write_video

    rgb = [frame for _, (_, frame) in zip(range(frames), iter_frames(shared_file("talking", f"{name}.mp4")))]
    write_video(dest / f"{name}.mp4", [np.stack(rgb)], fps=30)
    with wave.open(str(shared_file("talking", f"{name}.wav"))) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    write_wav(dest / f"{name}.wav", pcm[: frames * 16000 // 30])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three excerpts of shared clips (two speakers) and a corrupt clip."""
    folder = tmp_path_factory.mktemp("videos")
    for name, frames in (("feifeili_clip3", 60), ("feifeili_clip1", 45), ("KristiNoem", 75)):
        _excerpt(name, frames, folder)
    (folder / "corrupt.mp4").write_bytes((folder / "KristiNoem.mp4").read_bytes()[:2000])
    shutil.copyfile(folder / "KristiNoem.wav", folder / "corrupt.wav")
    return folder


def settings(input_dir, output_dir, face_model, **changes) -> PreprocessSettings:
    return PreprocessSettings(
        input_dir=str(input_dir) if input_dir else None,
        output_dir=str(output_dir),
        face_model=str(face_model),
        num_workers=1,
        progress=False,
        **changes,
    )


def arrays(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted((folder / "clips").glob("*.npz")):
        with np.load(path) as z:
            out[path.stem] = {k: z[k] for k in ("mesh", "pose")}
    return out


def assert_same_clips(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for cid in a:
        for key in ("mesh", "pose"):
            np.testing.assert_allclose(a[cid][key], b[cid][key], atol=1e-5, err_msg=f"{cid} {key}")


@pytest.fixture(scope="module")
def local_run(videos, tmp_path_factory, face_model) -> Path:
    out = tmp_path_factory.mktemp("local") / "data"
    report = preprocess(settings(videos, out, face_model))
    assert report["accepted"] == 3
    return out


def test_preprocess_on_ray_equals_local_and_reports_the_corrupt_clip(
    ray_cluster, videos, local_run, tmp_path, face_model, caplog
):
    out = tmp_path / "data"
    report = preprocess(settings(videos, out, face_model, engine="ray"))
    assert report["accepted"] == 3 and [r["id"] for r in report["rejected"]] == ["corrupt"]
    assert "not a readable video" in report["rejected"][0]["reason"]
    assert json.loads((out / "report.json").read_text())["rejected"] == report["rejected"]
    index = json.loads((out / "index.json").read_text())
    local_index = json.loads((local_run / "index.json").read_text())
    assert [c["id"] for c in index["clips"]] == [c["id"] for c in local_index["clips"]]
    assert_same_clips(arrays(out), arrays(local_run))
    for cid in ("feifeili_clip3", "KristiNoem"):
        assert (out / "clips" / f"{cid}.wav").read_bytes() == (
            local_run / "clips" / f"{cid}.wav"
        ).read_bytes()
    # Resumable across engines: the local engine finds every clip finished and leaves them as they are.
    before = {p: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}
    with caplog.at_level(logging.INFO, logger="common.corpus"):
        preprocess(settings(videos, out, face_model))
    assert "0 to process" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").iterdir()} == before


def _kill_first_task(name: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first process running the Ray task ``name`` once it has worked for half a second."""
    first_seen: dict[int, float] = {}
    while not stop.is_set() and not killed:
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(f"ray::{name}".encode()):
                first_seen.setdefault(pid, time.monotonic())
                if time.monotonic() - first_seen[pid] > 0.5:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.05)


def test_a_killed_ray_worker_is_retried_and_every_clip_lands_once(
    ray_cluster, videos, local_run, tmp_path, face_model
):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_task, args=("process_clip", killed, stop), daemon=True)
    killer.start()
    try:
        report = preprocess(settings(videos, tmp_path / "data", face_model, engine="ray"))
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was running a clip long enough to be killed"
    assert report["accepted"] == 3 and len(report["rejected"]) == 1
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    ids = [c["id"] for c in index["clips"]]
    assert sorted(ids) == sorted(set(ids)) == ["KristiNoem", "feifeili_clip1", "feifeili_clip3"]
    assert_same_clips(arrays(tmp_path / "data"), arrays(local_run))
    # The retry's write of the same file removed what the killed writer left half-written.
    assert not [p.name for p in (tmp_path / "data" / "clips").iterdir() if p.name.startswith(".")]


def test_preprocess_from_a_list_and_from_fsspec_urls(videos, local_run, tmp_path, face_model):
    import fsspec

    # A list with a relative line (from the list's folder), an absolute one and a comment.
    listing = tmp_path / "lists" / "clips.txt"
    listing.parent.mkdir()
    (tmp_path / "talk").symlink_to(videos)
    listing.write_text(f"# two clips\n../talk/feifeili_clip3.mp4\n\n{videos / 'feifeili_clip1.mp4'}\n")
    report = preprocess(settings(None, tmp_path / "listed", face_model, inputs=str(listing)))
    assert report["accepted"] == 2 and report["inputs"] == str(listing)
    listed = arrays(tmp_path / "listed")
    assert_same_clips(listed, {k: v for k, v in arrays(local_run).items() if k in listed})
    (tmp_path / "twice.txt").write_text(
        f"{videos / 'KristiNoem.mp4'}\n{tmp_path / 'other' / 'KristiNoem.mp4'}\n"
    )
    with pytest.raises(Exception, match="would both be clip 'KristiNoem'"):
        preprocess(settings(None, tmp_path / "twice", face_model, inputs=str(tmp_path / "twice.txt")))

    # Inputs and outputs on an fsspec store (memory://: this process only, so the local engine, one worker).
    fs = fsspec.filesystem("memory")
    for name in ("feifeili_clip3.mp4", "feifeili_clip3.wav", "feifeili_clip1.mp4", "feifeili_clip1.wav"):
        fs.pipe_file(f"/in/talk/{name}", (videos / name).read_bytes())
    fs.pipe_file("/lists/clips.txt", b"../in/talk/feifeili_clip3.mp4\nmemory://in/talk/feifeili_clip1.mp4\n")
    report = preprocess(
        settings("memory://in", "memory://out", face_model, inputs="memory://lists/clips.txt")
    )
    assert report["accepted"] == 2
    index = json.loads(fs.cat_file("/out/index.json"))
    assert [(c["id"], c["landmarks"]) for c in index["clips"]] == [
        ("talk/feifeili_clip1", "clips/talk/feifeili_clip1.npz"),
        ("talk/feifeili_clip3", "clips/talk/feifeili_clip3.npz"),
    ]
    with fs.open("/out/clips/talk/feifeili_clip3.npz", "rb") as f, np.load(f) as z:
        np.testing.assert_allclose(z["mesh"], arrays(local_run)["feifeili_clip3"]["mesh"], atol=1e-5)
    assert (
        fs.cat_file("/out/clips/talk/feifeili_clip3.wav")
        == (local_run / "clips" / "feifeili_clip3.wav").read_bytes()
    )
    assert json.loads(fs.cat_file("/out/clips/talk/feifeili_clip1.json"))["status"] == "accepted"
    # A rerun finds everything finished on the store.
    again = preprocess(settings("memory://in", "memory://out", face_model, inputs="memory://lists/clips.txt"))
    assert again["accepted"] == 2
    fs.rm("/in", recursive=True)
    fs.rm("/out", recursive=True)
    fs.rm("/lists", recursive=True)


# --------------------------------------------------------------------------------------------
# generate_batch
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory, local_run) -> Path:
    """A tiny model, two portraits, two landmark files, a face-less image and a 6-item manifest."""
    from tests.l2v_models import tiny_pipeline

    root = tmp_path_factory.mktemp("batch")
    tiny_pipeline(motion=True).save_pretrained(root / "model")
    samples = PROJECT_ROOT / "examples" / "sample"
    shutil.copyfile(samples / "portrait_kristi.png", root / "kristi.png")
    shutil.copyfile(samples / "reference_obama.png", root / "obama.png")
    from common.detect import read_image
    from common.lmkfile import LandmarkSequence

    blank = np.full_like(read_image(root / "kristi.png"), 200)
    import cv2

    cv2.imwrite(str(root / "blank.png"), blank)
    clip = LandmarkSequence.load(local_run / "clips" / "feifeili_clip3.npz")
    clip.select(slice(0, 10)).save(root / "a.npz")
    clip.select(slice(30, 38)).save(root / "b.npz")
    items = [
        {"id": "k_a", "reference": "kristi.png", "landmarks": "a.npz"},
        {"id": "o_a", "reference": "obama.png", "landmarks": "a.npz", "seed": 3},
        {"id": "k_b", "reference": "kristi.png", "landmarks": "b.npz", "steps": 2},
        {"id": "noface", "reference": "blank.png", "landmarks": "a.npz"},
        {"id": "o_b", "reference": "obama.png", "landmarks": "b.npz", "cfg": 1.0},
        {"id": "k_a2", "reference": "kristi.png", "landmarks": "a.npz", "seed": 5},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return root


def run_batch(batch: Path, out: str, capsys, monkeypatch, face_model, *args: str) -> tuple[int, str]:
    from lmk2video.generate_batch import main

    monkeypatch.chdir(batch)
    monkeypatch.setenv("TALKING_PORTRAIT_FACE_MODEL", str(face_model))
    return run_main(
        main,
        ["model=model", "manifest=manifest.jsonl", f"out_dir={out}", "steps=1", "threads_per_worker=1",
         "progress=false", *args],
        capsys,
    )  # fmt: skip


def frames_of(path: Path) -> np.ndarray:
    from common.evaluation.media import read_clip

    return read_clip(path, audio=False).frames


def test_generate_batch_on_ray_equals_local_records_the_failure_and_resumes(
    ray_cluster, batch, capsys, monkeypatch, face_model
):
    code, err = run_batch(batch, "local", capsys, monkeypatch, face_model)
    assert code == 0, err
    code, err = run_batch(batch, "ray", capsys, monkeypatch, face_model, "engine=ray", "ray.num_workers=2")
    assert code == 0, err
    good = ["k_a", "o_a", "k_b", "o_b", "k_a2"]
    for out in ("local", "ray"):
        assert sorted(p.stem for p in (batch / out).glob("*.mp4")) == sorted(good)
        failures = [json.loads(line) for line in (batch / out / "failures.jsonl").read_text().splitlines()]
        assert [f["id"] for f in failures] == ["noface"] and "no face" in failures[0]["error"].lower()
        assert failures[0]["attempts"] == 1  # a bad input is not retried
    # Same seed, same model, one thread per worker: the same frames, item by item (tolerance: 0 grey levels).
    for item in good:
        local, remote = frames_of(batch / "local" / f"{item}.mp4"), frames_of(batch / "ray" / f"{item}.mp4")
        assert local.shape == remote.shape and local.shape[0] in (8, 10)
        assert np.abs(local.astype(int) - remote.astype(int)).max() == 0, item
    assert not np.array_equal(frames_of(batch / "local" / "k_a.mp4"), frames_of(batch / "local" / "k_a2.mp4"))
    # A rerun skips finished items and tries the failed one again.
    before = {p: p.stat().st_mtime_ns for p in (batch / "ray").glob("*.mp4")}
    code, _ = run_batch(batch, "ray", capsys, monkeypatch, face_model, "engine=ray")
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in (batch / "ray").glob("*.mp4")} == before
    assert [json.loads(x)["id"] for x in (batch / "ray" / "failures.jsonl").read_text().splitlines()] == [
        "noface"
    ]


def test_generate_batch_on_ray_stops_with_one_message_when_no_worker_can_load_the_model(
    ray_cluster, batch, capsys, monkeypatch, face_model
):
    broken = batch / "broken_model"
    broken.mkdir(exist_ok=True)
    shutil.copyfile(batch / "model" / "model_index.json", broken / "model_index.json")  # and no weights
    code, err = run_batch(
        batch, "broken", capsys, monkeypatch, face_model, "model=broken_model", "engine=ray"
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "the Ray workers cannot start" in errors[0], err[-2000:]
    assert "lacks the vae/ folder" in errors[0] and "Traceback" not in err
    assert not list((batch / "broken").glob("*.mp4"))


def test_generate_batch_timeouts_are_retried_then_recorded(batch, capsys, monkeypatch, face_model):
    (batch / "slow.jsonl").write_text(
        json.dumps({"id": "slow", "reference": "kristi.png", "landmarks": "a.npz", "timeout_s": 0.001}) + "\n"
        + json.dumps({"id": "fine", "reference": "kristi.png", "landmarks": "b.npz"}) + "\n"
    )  # fmt: skip
    code, err = run_batch(
        batch, "slow", capsys, monkeypatch, face_model, "manifest=slow.jsonl", "max_retries=2"
    )
    assert code == 0, err
    (failure,) = [json.loads(x) for x in (batch / "slow" / "failures.jsonl").read_text().splitlines()]
    assert failure["id"] == "slow" and failure["attempts"] == 3 and "ItemTimeout" in failure["error"]
    assert [p.name for p in (batch / "slow").glob("*.mp4")] == ["fine.mp4"]


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def test_the_benchmark_renders_the_same_excerpts_on_ray_as_locally(ray_cluster, tmp_path_factory, face_model):
    """``lmk2video.benchmark engine=ray``: the excerpts rendered by Ray actors equal the local engine's."""
    from common.evaluation.media import read_clip
    from common.index import load_index
    from lmk2video.benchmarking import Benchmark, test_excerpts
    from lmk2video.rendering import SamplerOptions
    from tests.l2v_corpus import corpus_index
    from tests.l2v_models import tiny_pipeline

    root = tmp_path_factory.mktemp("bench")
    tiny_pipeline(motion=True).save_pretrained(root / "l2v")
    clips = [c for c in load_index(corpus_index(tmp_path_factory, face_model)) if c.speaker == "feifeili"]
    excerpts = test_excerpts(clips, 12, 2, 0)
    folders = {}
    for engine in ("local", "ray"):
        bench = Benchmark(
            excerpts=excerpts,
            out=root / engine,
            model=str(root / "l2v"),
            sampler=SamplerOptions(steps=1),
            compare_videos=False,
            progress=False,
            engine=engine,
            ray={"num_workers": 2},
            threads_per_worker=1,
        )
        bench.check()
        folders[engine] = bench.render_all()
    stems = sorted(p.stem for p in folders["local"]["ours"].glob("*.mp4"))
    assert len(stems) == 2 and stems == sorted(p.stem for p in folders["ray"]["ours"].glob("*.mp4"))
    for stem in stems:
        for folder in ("systems/ours", "real"):
            a = read_clip(root / "local" / folder / f"{stem}.mp4", audio=False).frames
            b = read_clip(root / "ray" / folder / f"{stem}.mp4", audio=False).frames
            assert a.shape == b.shape and (a == b).all(), (folder, stem)
