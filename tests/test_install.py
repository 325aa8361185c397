"""``pip install .`` (not editable) into a fresh environment, then every CLI from an empty folder.

Slow (a wheel build and a dozen interpreter starts): ``make test-slow``. The fresh environment borrows the
test environment's dependencies through a ``.pth`` line (no download, no network) but has its own copy of
the project, so the checkout is nowhere on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, shared_file

pytestmark = pytest.mark.slow

TOP_LEVEL_SKIP = {".git", ".venv", "data", "logs", "models", "outputs", "build", "dist", "wandb"}


def skip(folder: str, names: list[str]) -> set[str]:
    """What the copy of the checkout leaves out: run products at its top, caches everywhere."""
    top = Path(folder) == PROJECT_ROOT
    return {
        n for n in names if (top and n in TOP_LEVEL_SKIP) or n == "__pycache__" or n.endswith(".egg-info")
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the project's wheel installed; returns its python."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src"
    shutil.copytree(PROJECT_ROOT, source, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", source],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("talking_portrait-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "talking_portrait/conf/lmk2video/generate.yaml" in names
    assert "talking_portrait/experiments/lmk2video/experiment/tiny_stage2.yaml" in names
    # MediaPipe's face model is package data (offline extraction); no other weights or media.
    assert "common/data/face_landmarker_v2_with_blendshapes.task" in names
    heavy = [n for n in names if n.endswith((".safetensors", ".task", ".mp4", ".wav", ".jpg", ".png"))]
    assert heavy == ["common/data/face_landmarker_v2_with_blendshapes.task"]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], check=True)
    python = root / "venv" / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        check=True, capture_output=True,
    )  # fmt: skip
    return python


def test_every_cli_runs_from_an_empty_folder(installed, tmp_path, face_model) -> None:
    from audio2lmk.inference import export_audio2lmk
    from tests.test_audio2lmk_infer import FPS, tiny_models

    inputs = tmp_path / "inputs"
    (inputs / "clips").mkdir(parents=True)
    for suffix in (".mp4", ".wav"):
        shutil.copy(shared_file("talking", f"feifeili_clip3{suffix}"), inputs / "clips" / f"feifeili{suffix}")
    portrait = shutil.copy(shared_file("portraits", "photo_woman.jpg"), inputs / "portrait.jpg")
    mesh, pose = tiny_models()
    export_audio2lmk(inputs / "a2l", mesh_model=mesh, pose_model=pose, fps=FPS, styles=["A"])

    work = tmp_path / "empty"
    work.mkdir()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
        "TALKING_PORTRAIT_FACE_MODEL": str(face_model), "WANDB_MODE": "offline",
    }  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [installed, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
        return result

    where = run(
        "-c", "import lmk2video, talking_portrait; print(lmk2video.__file__, talking_portrait.CONF_DIR)"
    )
    assert str(PROJECT_ROOT) not in where.stdout and "site-packages" in where.stdout

    clip = str(inputs / "clips" / "feifeili.mp4")
    run("-m", "common.lmk", "extract", clip, "-o", "clip.npz", "-q")
    run("-m", "common.lmk", "edit", "clip.npz", "-o", "short.npz", "--trim", "0:8f")
    run("-m", "common.lmk", "info", "short.npz")
    run("-m", "common.lmk", "render", "short.npz", "-o", "preview.mp4", "-q")
    run("-m", "common.lmk", "retarget", "short.npz", "--reference", str(portrait), "-o", "retargeted.npz")
    run("-m", "lmk2video.init", "experiment=tiny_stage2", "out=m")
    run("-m", "lmk2video.generate", "model=m", f"reference={portrait}", "landmarks=short.npz", "out=v.mp4",
        "steps=1", "context_frames=8", "progress=false")  # fmt: skip
    run("-m", "audio2lmk.infer", f"model={inputs / 'a2l'}", f"audio={inputs / 'clips' / 'feifeili.wav'}",
        f"reference={portrait}", "out=talk.npz")  # fmt: skip
    run("-m", "common.preprocess", f"input_dir={inputs / 'clips'}", "output_dir=prepared", "num_workers=1",
        "progress=false")  # fmt: skip
    for module, experiment in (("audio2lmk.train", "mel_small"), ("lmk2video.train", "tiny_stage1")):
        composed = run("-m", module, f"experiment={experiment}", "--cfg", "job", "--resolve")
        assert f"data_dir: {work}/data" in composed.stdout
    for module in ("audio2lmk.evaluate", "lmk2video.evaluate", "common.evaluate", "lmk2video.benchmark"):
        run("-m", module, "--cfg", "job")
    for module in ("audio2lmk.convert", "lmk2video.convert", "lmk2video.demo"):
        run("-m", module, "--help")

    written = {p.name for p in work.iterdir()}
    assert written == {
        "clip.npz", "short.npz", "preview.mp4", "retargeted.npz", "m", "v.mp4", "talk.npz", "prepared",
    }  # fmt: skip
    assert (work / "prepared" / "index.json").is_file()
    site = Path(where.stdout.split()[0]).parents[1]
    assert not [p for p in site.iterdir() if p.name in ("data", "logs", "outputs", ".hydra")]
