"""Hostile input, every CLI: one ``error:`` line naming the file or option, exit 2, no traceback, nothing written,
and no model loaded where the input alone decides.

Each case runs the command in this process (argparse entries through ``main(argv)``, Hydra entries through
``sys.argv``) in a folder of prepared inputs, then compares the folder's listing with the one before. Unless a
case says it must read a model (``loads``), the model loaders and the face detector are replaced by a stand-in
that fails the test when called: such refusals happen before any model work.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples" / "sample"
SAMPLE_MODELS = PROJECT_ROOT / "models" / "sample"
UNWRITABLE = "/proc/hostile/out"  # not even root can create files there


class LoaderCalled(BaseException):
    """A model or face detector was loaded for input that should have been refused first."""


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # module, e.g. "common.lmk"
    argv: tuple[str, ...]
    message: str  # a fragment the error line must contain (the file or option named, and why)
    loads: bool = (
        False  # the refusal needs a model or the face detector (a bad model file, a face-less image)
    )


HYDRA = {
    "audio2lmk.train",
    "lmk2video.train",
    "common.preprocess",
    "audio2lmk.infer",
    "audio2lmk.evaluate",
    "lmk2video.init",
    "lmk2video.generate",
    "lmk2video.evaluate",
    "lmk2video.benchmark",
    "lmk2video.generate_batch",
    "common.evaluate",
}


def C(id: str, command: str, argv: str, message: str, loads: bool = False) -> Case:
    return Case(id, command, tuple(argv.split()), message, loads)


GEN = "model=l2v reference=portrait.png landmarks=clip.npz out=out/video.mp4"
INFER = "model=a2l audio=speech.wav reference=face.npz out=out/talk.npz"

CASES = [
    # ---------------------------------------------------------------- common.lmk extract
    C("extract-truncated", "common.lmk", "extract truncated.mp4 -o out/x.npz", "truncated.mp4", loads=True),
    C("extract-missing", "common.lmk", "extract nothing.mp4 -o out/x.npz", "nothing.mp4: no such file"),
    C("extract-empty", "common.lmk", "extract empty.mp4 -o out/x.npz", "empty.mp4"),
    C("extract-garbage", "common.lmk", "extract garbage.mp4 -o out/x.npz", "garbage.mp4"),
    C("extract-no-face", "common.lmk", "extract blank.png -o out/x.npz", "blank.png", loads=True),
    C("extract-out-folder", "common.lmk", "extract portrait.png -o folder.npz", "folder.npz is a folder"),
    C("extract-out-under-file", "common.lmk", "extract portrait.png -o blocker/x.npz", "blocker"),
    C("extract-out-unwritable", "common.lmk", f"extract portrait.png -o {UNWRITABLE}.npz", "/proc"),
    C("extract-out-suffix", "common.lmk", "extract portrait.png -o out/x.txt", "x.txt"),
    C("extract-max-gap", "common.lmk", "extract portrait.png -o out/x.npz --max-gap -1", "--max-gap"),
    C("extract-fraction", "common.lmk", "extract portrait.png -o out/x.npz --min-face-fraction 2", "--min-face-fraction"),
    C("extract-faces-0", "common.lmk", "extract portrait.png -o out/x.npz --num-faces 0", "--num-faces"),
    C("extract-fps-0", "common.lmk", "extract portrait.png -o out/x.npz --fps 0", "--fps"),
    C("extract-fps-huge", "common.lmk", "extract portrait.png -o out/x.npz --fps 1e9", "--fps"),
    C("extract-fps-nan", "common.lmk", "extract portrait.png -o out/x.npz --fps nan", "--fps"),
    C("extract-model-garbage", "common.lmk", "extract portrait.png -o out/x.npz --model garbage.task", "garbage.task"),
    C("extract-model-missing", "common.lmk", "extract portrait.png -o out/x.npz --model none.task", "none.task"),
    # ---------------------------------------------------------------- common.lmk info
    C("info-missing", "common.lmk", "info nothing.npz", "nothing.npz"),
    C("info-garbage", "common.lmk", "info garbage.npz", "garbage.npz"),
    C("info-version", "common.lmk", "info bad_version.npz", "version"),
    C("info-future-version", "common.lmk", "info future_version.npz", "version"),
    C("info-meta", "common.lmk", "info bad_meta.npz", "meta"),
    C("info-mesh-shape", "common.lmk", "info bad_mesh.npz", "mesh"),
    C("info-fps", "common.lmk", "info bad_fps.npz", "fps"),
    C("info-nan", "common.lmk", "info nan_mesh.npz", "mesh"),
    C("info-image-size", "common.lmk", "info bad_image_size.npz", "image_size"),
    C("info-fps-huge", "common.lmk", "info huge_fps.npz", "fps"),
    C("info-meta-list", "common.lmk", "info list_meta.npz", "meta"),
    C("info-mesh-int", "common.lmk", "info int_mesh.npz", "mesh"),
    # ---------------------------------------------------------------- common.lmk render
    C("render-size-huge", "common.lmk", "render clip.npz -o out/x.mp4 --size 100000x100000", "--size"),
    C("render-size-zero", "common.lmk", "render clip.npz -o out/x.mp4 --size 0x10", "--size"),
    C("render-size-text", "common.lmk", "render clip.npz -o out/x.mp4 --size big", "--size"),
    C("render-style", "common.lmk", "render clip.npz -o out/x.mp4 --style fancy", "fancy"),
    C("render-audio-garbage", "common.lmk", "render clip.npz -o out/x.mp4 --audio garbage.wav", "garbage.wav"),
    C("render-audio-missing", "common.lmk", "render clip.npz -o out/x.mp4 --audio none.wav", "none.wav"),
    C("render-out-folder", "common.lmk", "render clip.npz -o folder.mp4", "folder.mp4 is a folder"),
    C("render-out-unwritable", "common.lmk", f"render clip.npz -o {UNWRITABLE}.mp4", "/proc"),
    C("render-out-suffix", "common.lmk", "render clip.npz -o out/x.gif", "x.gif"),
    C("render-huge-file-size", "common.lmk", "render huge_image_size.npz -o out/x.mp4", "image_size"),
    # ---------------------------------------------------------------- common.lmk edit / retarget
    C("edit-fps-huge", "common.lmk", "edit clip.npz -o out/x.npz --fps 1e9", "--fps"),
    C("edit-fps-0", "common.lmk", "edit clip.npz -o out/x.npz --fps 0", "--fps"),
    C("edit-fps-nan", "common.lmk", "edit clip.npz -o out/x.npz --fps nan", "--fps"),
    C("edit-smooth-0", "common.lmk", "edit clip.npz -o out/x.npz --smooth 0", "--smooth"),
    C("edit-smooth-huge", "common.lmk", "edit clip.npz -o out/x.npz --smooth 100000", "--smooth"),
    C("edit-mouth-nan", "common.lmk", "edit clip.npz -o out/x.npz --mouth-scale nan", "--mouth-scale"),
    C("edit-mouth-huge", "common.lmk", "edit clip.npz -o out/x.npz --mouth-scale 1e6", "--mouth-scale"),
    C("edit-trim-backwards", "common.lmk", "edit clip.npz -o out/x.npz --trim 0.8:0.2", "--trim"),
    C("edit-trim-text", "common.lmk", "edit clip.npz -o out/x.npz --trim a:b", "--trim"),
    C("edit-pose-missing", "common.lmk", "edit clip.npz -o out/x.npz --pose none.npy", "none.npy"),
    C("edit-pose-garbage", "common.lmk", "edit clip.npz -o out/x.npz --pose garbage.npz", "garbage.npz"),
    C("edit-input-version", "common.lmk", "edit bad_version.npz -o out/x.npz", "version"),
    C("edit-out-exists", "common.lmk", "edit clip.npz -o face.npz", "already exists"),
    C("edit-pose-text", "common.lmk", "edit clip.npz -o out/x.npz --pose notes.txt", "notes.txt"),
    C("edit-rotate-name", "common.lmk", "edit clip.npz -o out/x.npz --rotate yawn=10", "--rotate"),
    C("edit-rotate-huge", "common.lmk", "edit clip.npz -o out/x.npz --rotate yaw=500", "--rotate"),
    C("edit-rotate-text", "common.lmk", "edit clip.npz -o out/x.npz --rotate left", "--rotate"),
    C("edit-curve-order", "common.lmk", "edit clip.npz -o out/x.npz --pose-curve 2:yaw=0;1:yaw=5", "out of order"),
    C("edit-curve-syntax", "common.lmk", "edit clip.npz -o out/x.npz --pose-curve yaw=5", "--pose-curve"),
    C("edit-curve-missing", "common.lmk", "edit clip.npz -o out/x.npz --pose-curve none.csv", "none.csv"),
    C("edit-curve-header", "common.lmk", "edit clip.npz -o out/x.npz --pose-curve bad_curve.csv", "bad_curve.csv"),
    C("edit-curve-cell", "common.lmk", "edit clip.npz -o out/x.npz --pose-curve bad_cell.csv", "bad_cell.csv row 3"),
    C("edit-blink-mode", "common.lmk", "edit clip.npz -o out/x.npz --blink sometimes", "--blink"),
    C("edit-blink-missing", "common.lmk", "edit clip.npz -o out/x.npz --blink nothing.npz", "nothing.npz"),
    C("edit-blink-garbage", "common.lmk", "edit clip.npz -o out/x.npz --blink garbage.npz", "garbage.npz"),
    C("edit-expression-nan", "common.lmk", "edit clip.npz -o out/x.npz --expression-scale nan", "--expression-scale"),
    C("edit-expression-neg", "common.lmk", "edit clip.npz -o out/x.npz --expression-scale -1", "--expression-scale"),
    C("edit-seed-negative", "common.lmk", "edit clip.npz -o out/x.npz --blink auto --seed -1", "--seed"),
    # ---------------------------------------------------------------- common.lmk mix
    C("mix-nothing", "common.lmk", "mix --base clip.npz -o out/x.npz", "nothing to mix"),
    C("mix-missing", "common.lmk", "mix --base clip.npz --mouth nothing.npz -o out/x.npz", "nothing.npz"),
    C("mix-base-missing", "common.lmk", "mix --base nothing.npz --eyes clip.npz -o out/x.npz", "nothing.npz"),
    C("mix-garbage", "common.lmk", "mix --base clip.npz --eyes garbage.npz -o out/x.npz", "garbage.npz"),
    C("mix-text", "common.lmk", "mix --base clip.npz --brows notes.txt -o out/x.npz", "notes.txt"),
    C("mix-version", "common.lmk", "mix --base clip.npz --pose bad_version.npz -o out/x.npz", "version"),
    C("mix-length", "common.lmk", "mix --base clip.npz --mouth face.npz --length longest -o out/x.npz", "--length"),
    C("mix-out-exists", "common.lmk", "mix --base clip.npz --mouth face.npz -o face.npz", "already exists"),
    C("mix-out-unwritable", "common.lmk", f"mix --base clip.npz --mouth face.npz -o {UNWRITABLE}.npz", "/proc"),
    C("retarget-no-face", "common.lmk", "retarget clip.npz --reference blank.png -o out/x.npz", "blank.png", loads=True),
    C("retarget-reference-text", "common.lmk", "retarget clip.npz --reference notes.txt -o out/x.npz", "notes.txt"),
    # ---------------------------------------------------------------- common.preprocess
    C("preprocess-no-input", "common.preprocess", "input_dir=nothing output_dir=out/data", "nothing"),
    C("preprocess-workers-0", "common.preprocess", "input_dir=videos output_dir=out/data num_workers=0", "num_workers"),
    C("preprocess-fraction", "common.preprocess", "input_dir=videos output_dir=out/data min_face_fraction=2", "min_face_fraction"),
    C("preprocess-max-gap", "common.preprocess", "input_dir=videos output_dir=out/data max_gap=-1", "max_gap"),
    C("preprocess-out-under-file", "common.preprocess", "input_dir=videos output_dir=blocker/data", "blocker"),
    C("preprocess-out-unwritable", "common.preprocess", f"input_dir=videos output_dir={UNWRITABLE}", "/proc"),
    C("preprocess-min-duration", "common.preprocess", "input_dir=videos output_dir=out/data min_duration=-1", "min_duration"),
    C("preprocess-engine", "common.preprocess", "input_dir=videos output_dir=out/data engine=spark", "engine="),
    C("preprocess-inputs-missing", "common.preprocess", "inputs=none.txt output_dir=out/data", "none.txt"),
    C("preprocess-inputs-binary", "common.preprocess", "inputs=garbage.npz output_dir=out/data", "garbage.npz"),
    C("preprocess-ray-retries", "common.preprocess", "input_dir=videos output_dir=out/data engine=ray ray.max_retries=-1", "ray.max_retries"),
    C("preprocess-ray-unknown", "common.preprocess", "input_dir=videos output_dir=out/data +ray.nodes=3", "ray.nodes"),
    C("preprocess-threads", "common.preprocess", "input_dir=videos output_dir=out/data threads_per_worker=0", "threads_per_worker"),
    C("preprocess-url-store", "common.preprocess", "input_dir=videos output_dir=nosuchstore://bucket/data", "nosuchstore"),
    # ---------------------------------------------------------------- audio2lmk.infer
    C("infer-model-missing", "audio2lmk.infer", INFER.replace("model=a2l", "model=nothing"), "nothing"),
    C("infer-audio-garbage", "audio2lmk.infer", INFER.replace("speech.wav", "garbage.wav"), "garbage.wav"),
    C("infer-audio-empty", "audio2lmk.infer", INFER.replace("speech.wav", "empty.wav"), "empty.wav"),
    C("infer-audio-silent", "audio2lmk.infer", INFER.replace("speech.wav", "silent.wav"), "silent.wav"),
    C("infer-reference-no-face", "audio2lmk.infer", INFER.replace("face.npz", "blank.png"), "blank.png", loads=True),
    C("infer-out-folder", "audio2lmk.infer", INFER.replace("out/talk.npz", "folder.npz"), "folder.npz is a folder"),
    C("infer-out-unwritable", "audio2lmk.infer", INFER.replace("out/talk.npz", f"{UNWRITABLE}.npz"), "/proc"),
    C("infer-seed", "audio2lmk.infer", INFER + " seed=1.5", "seed"),
    C("infer-seed-text", "audio2lmk.infer", INFER + " seed=abc", "seed"),
    C("infer-device", "audio2lmk.infer", INFER + " device=tpu", "device"),
    C("infer-device-absent", "audio2lmk.infer", INFER + " device=cuda:7", "device"),
    C("infer-model-nan", "audio2lmk.infer", INFER.replace("model=a2l", "model=a2l_nan"), "a2l_nan", loads=True),
    C("infer-model-truncated", "audio2lmk.infer", INFER.replace("model=a2l", "model=a2l_truncated"), "a2l_truncated", loads=True),
    C("infer-model-empty", "audio2lmk.infer", INFER.replace("model=a2l", "model=a2l_empty"), "a2l_empty", loads=True),
    C("infer-model-config", "audio2lmk.infer", INFER.replace("model=a2l", "model=a2l_badjson"), "a2l_badjson", loads=True),
    # ---------------------------------------------------------------- audio2lmk.convert
    C("a2l-convert-empty", "audio2lmk.convert", "aniportrait --audio2mesh empty.pt -o out/m", "empty.pt"),
    C("a2l-convert-truncated", "audio2lmk.convert", "aniportrait --audio2mesh truncated.pt -o out/m", "truncated.pt"),
    C("a2l-convert-text", "audio2lmk.convert", "aniportrait --audio2mesh notes.txt -o out/m", "notes.txt"),
    C("a2l-convert-nan", "audio2lmk.convert", "aniportrait --audio2mesh nan_mesh.pt --wav2vec2-config w2v.json -o out/m", "nan_mesh.pt"),
    C("a2l-convert-fps", "audio2lmk.convert", "aniportrait --audio2mesh mesh.pt -o out/m --fps 0", "--fps"),
    C("a2l-convert-out-under-file", "audio2lmk.convert", "aniportrait --audio2mesh mesh.pt -o blocker/m", "blocker"),
    C("a2l-convert-out-unwritable", "audio2lmk.convert", f"aniportrait --audio2mesh mesh.pt -o {UNWRITABLE}", "/proc"),
    C("a2l-convert-pickled", "audio2lmk.convert", "aniportrait --audio2mesh pickled.pt -o out/m", "Python objects"),
    C("a2l-convert-exists", "audio2lmk.convert", "aniportrait --audio2mesh mesh.pt -o a2l", "already exists"),
    # ---------------------------------------------------------------- lmk2video.convert / init
    C("l2v-convert-truncated", "lmk2video.convert", "aniportrait ani_truncated out/m", "ani_truncated"),
    C("l2v-convert-empty", "lmk2video.convert", "aniportrait ani_empty out/m", "ani_empty"),
    C("l2v-convert-nan", "lmk2video.convert", "aniportrait ani_nan out/m", "NaN"),
    C("l2v-convert-missing", "lmk2video.convert", "aniportrait nothing out/m", "nothing"),
    C("l2v-convert-config", "lmk2video.convert", "aniportrait ani_truncated out/m --config garbage.json", "garbage.json"),
    C("l2v-convert-out-unwritable", "lmk2video.convert", f"aniportrait ani_truncated {UNWRITABLE}", "/proc"),
    C("init-exists", "lmk2video.init", "experiment=tiny_stage1 out=folder.npz", "folder.npz"),
    C("init-unwritable", "lmk2video.init", f"experiment=tiny_stage1 out={UNWRITABLE}", "/proc"),
    C("init-under-file", "lmk2video.init", "experiment=tiny_stage1 out=blocker/m", "blocker"),
    # ---------------------------------------------------------------- lmk2video.generate
    C("gen-width-huge", "lmk2video.generate", GEN + " width=65536 height=65536", "width"),
    C("gen-width-odd", "lmk2video.generate", GEN + " width=60", "width"),
    C("gen-steps-0", "lmk2video.generate", GEN + " steps=0", "steps"),
    C("gen-steps-huge", "lmk2video.generate", GEN + " steps=100000", "steps"),
    C("gen-cfg-negative", "lmk2video.generate", GEN + " cfg=-1", "cfg"),
    C("gen-cfg-nan", "lmk2video.generate", GEN + " cfg=nan", "cfg"),
    C("gen-seed", "lmk2video.generate", GEN + " seed=1.5", "seed"),
    C("gen-seed-negative", "lmk2video.generate", GEN + " seed=-3", "seed"),
    C("gen-device", "lmk2video.generate", GEN + " device=tpu", "device"),
    C("gen-device-absent", "lmk2video.generate", GEN + " device=cuda:9", "device"),
    C("gen-dtype", "lmk2video.generate", GEN + " dtype=int8", "dtype"),
    C("gen-context-0", "lmk2video.generate", GEN + " context_frames=0", "context_frames"),
    C("gen-decode-chunk", "lmk2video.generate", GEN + " decode_chunk=0", "decode_chunk"),
    C("gen-out-folder", "lmk2video.generate", GEN.replace("out/video.mp4", "folder.mp4"), "folder.mp4 is a folder"),
    C("gen-out-under-file", "lmk2video.generate", GEN.replace("out/video.mp4", "blocker/video.mp4"), "blocker"),
    C("gen-out-unwritable", "lmk2video.generate", GEN.replace("out/video.mp4", f"{UNWRITABLE}.mp4"), "/proc"),
    C("gen-audio-mode-unwritable", "lmk2video.generate",
      f"model=l2v reference=portrait.png audio=speech.wav audio2lmk_model=a2l out={UNWRITABLE}.mp4", "/proc"),
    C("gen-landmarks-version", "lmk2video.generate", GEN.replace("clip.npz", "bad_version.npz"), "version"),
    C("gen-landmarks-meta", "lmk2video.generate", GEN.replace("clip.npz", "bad_meta.npz"), "meta"),
    C("gen-reference-missing", "lmk2video.generate", GEN.replace("portrait.png", "nobody.png"), "nobody.png"),
    C("gen-reference-garbage", "lmk2video.generate", GEN.replace("portrait.png", "notes.txt"), "notes.txt"),
    C("gen-audio-long", "lmk2video.generate", GEN + " audio=speech_long.wav", "speech_long.wav"),
    C("gen-audio-garbage", "lmk2video.generate", GEN + " audio=garbage.wav", "garbage.wav"),
    C("gen-exists", "lmk2video.generate", GEN.replace("out/video.mp4", "existing.mp4"), "already exists"),
    C("gen-audio-mode-npz-exists", "lmk2video.generate",
      "model=l2v reference=portrait.png audio=speech.wav audio2lmk_model=a2l out=existing_npz/video.mp4",
      "already exists"),
    C("gen-pose-cache", "lmk2video.generate", GEN + " pose_cache=gpu", "pose_cache"),
    C("gen-scheduler", "lmk2video.generate", GEN + " scheduler=ddpm", "scheduler"),
    C("gen-cache-interval", "lmk2video.generate", GEN + " cache_interval=0", "cache_interval"),
    C("gen-cfg-interval", "lmk2video.generate", GEN + " cfg_interval=[0.8,0.2]", "cfg_interval"),
    C("gen-preset", "lmk2video.generate", GEN + " preset=turbo", "preset"),
    C("gen-context-shift", "lmk2video.generate", GEN + " context_shift=maybe", "context_shift"),
    C("gen-shift-and-cache", "lmk2video.generate", GEN + " context_shift=true cache_interval=2", "context_shift"),
    C("gen-compile", "lmk2video.generate", GEN + " compile=1", "compile"),
    C("gen-model-nan", "lmk2video.generate", GEN.replace("model=l2v", "model=l2v_nan"), "l2v_nan", loads=True),
    C("gen-model-truncated", "lmk2video.generate", GEN.replace("model=l2v", "model=l2v_truncated"), "l2v_truncated", loads=True),
    C("gen-model-index", "lmk2video.generate", GEN.replace("model=l2v", "model=l2v_badjson"), "l2v_badjson", loads=True),
    # ---------------------------------------------------------------- training, evaluation, demo
    C("a2l-train-seed", "audio2lmk.train", "experiment=mel_small seed=1.5", "seed"),
    C("a2l-train-export", "audio2lmk.train", f"experiment=mel_small export_dir={UNWRITABLE}", "/proc"),
    C("a2l-train-export-exists", "audio2lmk.train", "experiment=mel_small export_dir=a2l", "already exists"),
    C("l2v-train-seed", "lmk2video.train", "experiment=tiny_stage1 seed=abc", "seed"),
    C("l2v-train-export", "lmk2video.train", f"experiment=tiny_stage1 export_dir={UNWRITABLE}", "/proc"),
    C("l2v-distill-teacher", "lmk2video.train", "experiment=tiny_distill", "teacher=DIR"),
    C("l2v-distill-missing", "lmk2video.train", "experiment=tiny_distill teacher=nothing", "nothing"),
    C("l2v-distill-scheduler", "lmk2video.train", "experiment=tiny_distill teacher=l2v distill.scheduler=ddim",
      "distill.scheduler"),
    C("a2l-evaluate-model", "audio2lmk.evaluate", "model=nothing out=out/eval.json", "nothing"),
    C("demo-steps", "lmk2video.demo", "--steps 0 --out out/demo", "--steps"),
    C("demo-seconds", "lmk2video.demo", "--seconds 1e9 --out out/demo", "--seconds"),
    C("demo-speech", "lmk2video.demo", "--speech none.wav --out out/demo", "none.wav"),
    C("demo-out", "lmk2video.demo", f"--out {UNWRITABLE}", "/proc"),
    # ---------------------------------------------------------------- evaluation commands
    C("evaluate-no-real", "common.evaluate", "real=nothing systems.ours=out out=out/report", "nothing"),
    C("benchmark-frames-0", "lmk2video.benchmark", "model=l2v frames=0 out=out/bench", "frames"),
    C("benchmark-engine", "lmk2video.benchmark", "model=l2v out=out/bench engine=spark", "engine="),
    C("benchmark-ray-gpus", "lmk2video.benchmark", "model=l2v out=out/bench engine=ray ray.num_gpus_per_worker=-1", "ray.num_gpus_per_worker"),
    # ---------------------------------------------------------------- lmk2video.generate_batch
    C("batch-no-manifest", "lmk2video.generate_batch", "model=l2v out_dir=out/batch", "manifest="),
    C("batch-no-model", "lmk2video.generate_batch", "manifest=ok.jsonl out_dir=out/batch", "model="),
    C("batch-model-missing", "lmk2video.generate_batch", "model=nothing manifest=ok.jsonl out_dir=out/batch", "nothing"),
    C("batch-manifest-missing", "lmk2video.generate_batch", "model=l2v manifest=none.jsonl out_dir=out/batch", "none.jsonl"),
    C("batch-manifest-json", "lmk2video.generate_batch", "model=l2v manifest=bad_json.jsonl out_dir=out/batch", "line 2"),
    C("batch-manifest-dup", "lmk2video.generate_batch", "model=l2v manifest=dup.jsonl out_dir=out/batch", "also on line 1"),
    C("batch-manifest-id", "lmk2video.generate_batch", "model=l2v manifest=bad_id.jsonl out_dir=out/batch", "id '../x'"),
    C("batch-manifest-key", "lmk2video.generate_batch", "model=l2v manifest=bad_key.jsonl out_dir=out/batch", "refrence"),
    C("batch-manifest-nothing", "lmk2video.generate_batch", "model=l2v manifest=no_lmk.jsonl out_dir=out/batch", "landmarks"),
    C("batch-manifest-timeout", "lmk2video.generate_batch", "model=l2v manifest=bad_timeout.jsonl out_dir=out/batch", "timeout_s"),
    C("batch-manifest-empty", "lmk2video.generate_batch", "model=l2v manifest=empty.wav out_dir=out/batch", "no items"),
    C("batch-per-item-option", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=out/batch reference=portrait.png", "per item"),
    C("batch-engine", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=out/batch engine=spark", "engine="),
    C("batch-timeout", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=out/batch timeout_s=0", "timeout_s"),
    C("batch-retries", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=out/batch max_retries=-1", "max_retries"),
    C("batch-steps", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=out/batch steps=0", "steps"),
    C("batch-ray-workers", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=out/batch engine=ray ray.num_workers=0", "ray.num_workers"),
    C("batch-out-under-file", "lmk2video.generate_batch", "model=l2v manifest=ok.jsonl out_dir=blocker/batch", "blocker"),
    C("benchmark-out-unwritable", "lmk2video.benchmark", f"model=l2v out={UNWRITABLE}", "/proc"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------ the inputs


def _npz_with(path: Path, base: dict, **changes) -> None:
    arrays = {**base, **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def _corrupt_safetensors(folder: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file

    for file in sorted(folder.rglob("*.safetensors"))[:1]:
        if how == "nan":
            state = load_file(file)
            name = sorted(state)[0]
            state[name] = state[name].clone().fill_(float("nan"))
            save_file(state, file)
        elif how == "truncated":
            data = file.read_bytes()
            file.write_bytes(data[: len(data) // 2])
        else:
            file.write_bytes(b"")


def _copy_model(src: Path, dst: Path, how: str | None = None) -> None:
    shutil.copytree(src, dst)
    if how in ("nan", "truncated", "empty"):
        _corrupt_safetensors(dst, how)
    elif how == "badjson":
        config = next(p for p in (dst / "model_index.json", dst / "audio2lmk.json") if p.exists())
        config.write_text("{not json")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    import av
    import torch

    from common.corpus import write_wav
    from common.detect import extract_image
    from common.lmkfile import LandmarkSequence

    root = tmp_path_factory.mktemp("hostile")
    shutil.copyfile(EXAMPLES / "portrait_kristi.png", root / "portrait.png")
    import cv2

    cv2.imwrite(str(root / "blank.png"), np.full((96, 96, 3), 127, np.uint8))
    face = extract_image(root / "portrait.png")
    face.save(root / "face.npz")
    clip = face.select(np.zeros(30, dtype=int))
    clip.save(root / "clip.npz")
    base = dict(np.load(root / "clip.npz", allow_pickle=False))
    _npz_with(root / "bad_version.npz", base, version=np.array("abc"))
    _npz_with(root / "future_version.npz", base, version=np.array(99))
    _npz_with(root / "bad_meta.npz", base, meta=np.arange(3.0))
    _npz_with(root / "bad_mesh.npz", base, mesh=np.zeros((30, 10, 3), np.float32))
    _npz_with(root / "bad_fps.npz", base, fps=np.array("fast"))
    mesh = base["mesh"].copy()
    mesh[3, 5, 0] = np.nan
    _npz_with(root / "nan_mesh.npz", base, mesh=mesh)
    _npz_with(root / "bad_image_size.npz", base, image_size=np.array([1.5, -2]))
    _npz_with(root / "huge_image_size.npz", base, image_size=np.array([100000, 100000]))
    _npz_with(root / "huge_fps.npz", base, fps=np.array(1e9))
    _npz_with(root / "list_meta.npz", base, meta=np.array("[1, 2]"))
    _npz_with(root / "int_mesh.npz", base, mesh=base["mesh"].astype(np.int32))

    speech, _ = _speech()
    write_wav(root / "speech.wav", speech[:16000])
    write_wav(root / "silent.wav", np.zeros(16000, np.float32))
    write_wav(root / "speech_long.wav", speech[: 16000 * 3])
    (root / "existing.mp4").write_bytes(b"a video someone made")
    (root / "existing_npz").mkdir()
    (root / "existing_npz" / "video.npz").write_bytes(b"landmarks edited by hand")
    for name in ("garbage.wav", "garbage.npz", "garbage.mp4", "garbage.task", "garbage.json", "notes.txt"):
        (root / name).write_bytes(b"RIFF\x00\x01 not what it claims " + bytes(range(200)))
    for name in ("empty.wav", "empty.mp4", "empty.pt"):
        (root / name).write_bytes(b"")
    (root / "blocker").write_text("a regular file")
    (root / "bad_curve.csv").write_text("seconds,yaw\n0,10\n")
    item = '{"id": "a", "reference": "portrait.png", "landmarks": "clip.npz"}\n'
    (root / "ok.jsonl").write_text(item)
    (root / "bad_json.jsonl").write_text(item + "{'id': 'b'}\n")
    (root / "dup.jsonl").write_text(item + item)
    (root / "bad_id.jsonl").write_text(item.replace('"a"', '"../x"'))
    (root / "bad_key.jsonl").write_text(item.replace('"reference"', '"refrence"'))
    (root / "no_lmk.jsonl").write_text('{"id": "a", "reference": "portrait.png"}\n')
    (root / "bad_timeout.jsonl").write_text(item.replace("}", ', "timeout_s": -5}'))
    (root / "bad_cell.csv").write_text("time,yaw\n0,10\n1,ten\n")
    (root / "folder.npz").mkdir()
    (root / "folder.mp4").mkdir()

    # A clip whose index is at the front (faststart), cut to 30 % of its bytes: it opens, and ends early.
    with av.open(str(EXAMPLES / "obama_clip1.mp4")) as src:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(60), src.decode(video=0), strict=False)]
    with av.open(str(root / "whole.mp4"), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    data = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])
    (root / "whole.mp4").unlink()
    (root / "videos").mkdir()
    shutil.copyfile(EXAMPLES / "obama_clip1.mp4", root / "videos" / "clip.mp4")

    _copy_model(SAMPLE_MODELS / "audio2lmk", root / "a2l")
    _copy_model(SAMPLE_MODELS / "lmk2video", root / "l2v")
    for how in ("nan", "truncated", "empty", "badjson"):
        _copy_model(SAMPLE_MODELS / "audio2lmk", root / f"a2l_{how}", how)
    for how in ("nan", "truncated", "badjson"):
        _copy_model(SAMPLE_MODELS / "lmk2video", root / f"l2v_{how}", how)

    # AniPortrait-format files for the converters.
    from tests.audio2lmk_tiny import tiny_wav2vec2_config
    from tests.test_convert_aniportrait import ReferenceMesh

    torch.manual_seed(0)
    state = ReferenceMesh(tiny_wav2vec2_config()).state_dict()
    torch.save(state, root / "mesh.pt")
    (root / "w2v.json").write_text('{"num_attention_heads": 2}')
    state = {k: v.clone() for k, v in state.items()}
    state["out_fn.weight"][0, 0] = float("inf")
    torch.save(state, root / "nan_mesh.pt")
    torch.save(
        {"weight": torch.zeros(2), "args": __import__("argparse").Namespace(lr=1)}, root / "pickled.pt"
    )
    (root / "ani_nan").mkdir()
    for name in ("denoising_unet", "reference_unet", "pose_guider", "motion_module"):
        torch.save({"conv.weight": torch.tensor([float("nan"), 1.0])}, root / "ani_nan" / f"{name}.pth")
    data = (root / "mesh.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 3])
    for folder, how in (("ani_truncated", "truncated"), ("ani_empty", "empty")):
        (root / folder).mkdir()
        for name in ("denoising_unet", "reference_unet", "pose_guider", "motion_module"):
            (root / folder / f"{name}.pth").write_bytes(data[: len(data) // 3] if how == "truncated" else b"")
    assert LandmarkSequence.load(root / "clip.npz").num_frames == 30
    return root


def _speech() -> tuple[np.ndarray, int]:
    from common.audio import load_audio

    return load_audio(EXAMPLES / "speech_en.wav", silence_dbfs=None), 16000


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if "__pycache__" not in p.parts
    }


def _run(case: Case, capsys) -> tuple[int | None, str]:
    module = importlib.import_module(case.command)
    capsys.readouterr()
    try:
        if case.command in HYDRA:
            with mock.patch.object(sys, "argv", [case.command, *case.argv]):
                module.main()
        else:
            module.main(list(case.argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def _refuse(*args, **kwargs):
    raise LoaderCalled("a model or the face detector was loaded before the input was refused")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_cleanly(case: Case, world: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(world)
    monkeypatch.setenv("TALKING_PORTRAIT_FACE_MODEL", "")
    if not case.loads:
        import audio2lmk.evaluate
        import audio2lmk.inference
        import common.detect
        import lmk2video.pipeline

        monkeypatch.setattr(lmk2video.pipeline, "load_pipeline", _refuse)
        monkeypatch.setattr(audio2lmk.inference, "load_audio2lmk", _refuse)
        monkeypatch.setattr(audio2lmk.evaluate, "load_audio2lmk", _refuse)
        monkeypatch.setattr(common.detect.FaceDetector, "__init__", _refuse)
    before = _listing(world)
    try:
        code, err = _run(case, capsys)
    finally:
        written = sorted(set(_listing(world)) - set(before), key=len, reverse=True)
        for name in written:  # leave the world as it was for the next case
            path = world / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert len(errors) == 1, err[-2000:]
    assert case.message in errors[0], errors[0]
    for advice in ("weights_only", "ignore_mismatched_sizes", "file an issue", "KeyError", ": ;"):
        assert advice not in errors[0], errors[0]
    assert _listing(world) == before, "something was written"
    assert os.access(world, os.W_OK)


# ------------------------------------------------------------------------ what a matrix row cannot show


def _write_clip(path: Path, frames: int, faststart: bool = False) -> None:
    import av

    with av.open(str(EXAMPLES / "obama_clip1.mp4")) as src:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(frames), src.decode(video=0), strict=False)]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as dst:
        stream = dst.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = rgb[0].shape[1], rgb[0].shape[0], "yuv420p"
        for image in rgb:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)


def test_preprocess_never_accepts_streams_that_disagree(tmp_path: Path) -> None:
    """A truncated video and a clip with much longer audio are rejected with their reasons; a clip whose audio
    is a little longer is cut so that landmarks and audio agree within one frame."""
    from common.audio import load_audio
    from common.corpus import PreprocessSettings, preprocess, write_wav
    from common.lmkfile import LandmarkSequence

    videos = tmp_path / "videos"
    videos.mkdir()
    speech, _ = _speech()
    _write_clip(videos / "whole.mp4", 60, faststart=True)
    data = (videos / "whole.mp4").read_bytes()
    (videos / "cut_clip.mp4").write_bytes(data[: int(len(data) * 0.3)])
    write_wav(videos / "cut_clip.wav", speech[: 2 * 16000])
    (videos / "whole.mp4").rename(videos / "long_clip.mp4")
    write_wav(videos / "long_clip.wav", speech[: int(5.24 * 16000)])
    shutil.copyfile(videos / "long_clip.mp4", videos / "near_clip.mp4")
    write_wav(videos / "near_clip.wav", speech[: int(2.15 * 16000)])

    report = preprocess(
        PreprocessSettings(str(videos), str(tmp_path / "data"), num_workers=1, progress=False)
    )
    reasons = {item["id"]: item["reason"] for item in report["rejected"]}
    assert set(reasons) == {"cut_clip", "long_clip"}, reasons
    assert "truncated or damaged" in reasons["cut_clip"] and "60 frames" in reasons["cut_clip"]
    assert "differ by 3.24 s" in reasons["long_clip"]
    assert report["accepted"] == 1
    seq = LandmarkSequence.load(tmp_path / "data" / "clips" / "near_clip.npz")
    audio = load_audio(tmp_path / "data" / "clips" / "near_clip.wav", silence_dbfs=None)
    assert abs(seq.duration - audio.size / 16000) <= 1 / seq.fps
    assert seq.num_frames == 60


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path, capsys) -> None:
    from common.atomic import host_tag
    from common.lmk import main

    shutil.copyfile(EXAMPLES / "portrait_kristi.png", tmp_path / "portrait.png")
    dead = _dead_pid()
    host = host_tag()
    stale = tmp_path / f".out.npz.{dead}.abc123.npz"  # the name before machines were recorded
    stale_here = tmp_path / f".out.npz.{dead}@{host}.abc124.npz"
    live = (
        tmp_path / f".out.npz.{os.getppid()}@{host}.def456.npz"
    )  # our parent: alive, maybe a concurrent job
    # Another machine writing into the same shared folder (a cluster's worker): its process ids mean nothing
    # here, so even a number that is no process on this machine is kept.
    elsewhere = tmp_path / f".out.npz.{dead}@other-node-7.ghi789.npz"
    folder_stale = tmp_path / f".out.npz.old.{dead}@{host}.xyz"
    for path in (stale, stale_here, live, elsewhere):
        path.write_bytes(b"half a file")
    folder_stale.mkdir()
    main(["extract", str(tmp_path / "portrait.png"), "-o", str(tmp_path / "out.npz"), "-q"])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["portrait.png", "out.npz", live.name, elsewhere.name]), left


def _dead_pid() -> int:
    """The id of a process that has just ended (so provably not running)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int) -> None:
    from common.atomic import atomic_folder, atomic_output

    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "file.npz") as tmp:
            tmp.write_bytes(b"x")
        with atomic_folder(tmp_path / "model") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "weights.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "file.npz").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "model" / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "model" / "sub" / "weights.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_full_disk_is_a_user_error_and_leaves_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    from common.lmk import main
    from common.lmkfile import LandmarkSequence

    seq = LandmarkSequence.load(_world_clip(tmp_path))
    seq.save(tmp_path / "clip.npz")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(tmp_path / "clip.npz"), "-o", str(tmp_path / "out.npz"), "--smooth", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"cannot write {tmp_path / 'out.npz'}: no space left on the device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _world_clip(folder: Path) -> Path:
    from common.detect import extract_image

    face = extract_image(EXAMPLES / "portrait_kristi.png")
    path = folder / "face.npz"
    face.select(np.zeros(90, dtype=int)).save(path)
    return path


def test_sigterm_removes_the_temporary_file(tmp_path: Path) -> None:
    """An interrupted render leaves no hidden temporary file (SIGTERM goes through Python's exit path)."""
    import signal
    import subprocess
    import time

    from common.lmkfile import LandmarkSequence

    clip = LandmarkSequence.load(_world_clip(tmp_path))
    clip.select(np.zeros(3000, dtype=int)).save(tmp_path / "long.npz")
    out = tmp_path / "long.mp4"
    command = [sys.executable, "-m", "common.lmk", "render", str(tmp_path / "long.npz"), "-o", str(out), "-q",
               "--size", "1024x1024"]  # fmt: skip
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".long.mp4.") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.npz", "long.npz"]
