"""``make demo`` (``python -m lmk2video.demo``): speech -> landmarks -> talking video, offline, with the sample models.

1. extract the 3D mesh and head pose from a real talking clip;
2. edit them (smooth, exaggerate the mouth) and retarget them onto another portrait;
3. render landmark preview videos with the clip's speech muxed in;
4. speech -> landmarks (at most ``--seconds`` of ``--speech``, audio no model was trained on) on the face of
   ``--reference`` (a frame of a speaker the sample lmk2video model was trained on) with the audio2lmk model
   folder ``--audio2lmk-model``, previewed with the speech;
5. landmarks -> video with the lmk2video model folder ``--lmk2video-model``, the speech muxed in:
   ``OUT/talking.mp4``;
6. the same speech as landmarks on ``--portrait`` (another face), previewed;

then the evaluation table of ``talking.mp4`` (:mod:`common.evaluation`, no real video: face detection,
identity against the reference, lip sync against the speech, and how well the mouth follows the driving
landmarks) against the reference held still, written to ``OUT/evaluation``.

Models: ``models/sample/{audio2lmk,lmk2video}`` (trained on a CPU, shipped with the code; see their
MODEL_CARD.md), or, on a machine with a GPU, AniPortrait's released weights converted into
``models/aniportrait/{audio2lmk,lmk2video}`` when they are there. Every input ships with the repository
(``examples/sample``, MediaPipe's model in ``common/data``), so the demo runs in any clone, offline. Steps 4-6 need model folders; without one the demo says which command makes it and
carries on. Outputs go to ``outputs/demo/`` (or ``--out``) and are replaced on every run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from common import limits
from common.atomic import check_output_folder
from common.errors import UserError, exit_on_user_error
from talking_portrait import CHECKOUT

# The checkout's sample files and models (an installed package has none: run the demo from a clone).
ROOT = CHECKOUT if CHECKOUT is not None else Path.cwd()
SAMPLE = ROOT / "examples" / "sample"
MODELS = ROOT / "models" / "sample"
# AniPortrait's released weights, converted (README "Speech to video"): preferred on a GPU.
ANIPORTRAIT = ROOT / "models" / "aniportrait"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmk2video.demo", description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(SAMPLE / "obama_clip1.mp4"), help="talking-head clip (steps 1-3)")
    p.add_argument("--audio", default=str(SAMPLE / "obama_clip1.wav"), help="its speech")
    p.add_argument(
        "--reference", default=str(SAMPLE / "reference_obama.png"), help="face of the talking video (step 5)"
    )
    p.add_argument(
        "--portrait", default=str(SAMPLE / "portrait_kristi.png"), help="another face (steps 2 and 6)"
    )
    p.add_argument("--speech", default=str(SAMPLE / "speech_en.wav"), help="speech for steps 4-6")
    p.add_argument(
        "--audio2lmk-model",
        default=None,
        help="model folder of step 4 (default: models/aniportrait/audio2lmk on a GPU when there, else "
        "models/sample/audio2lmk)",
    )
    p.add_argument(
        "--lmk2video-model",
        default=None,
        help="model folder of step 5 (default: models/aniportrait/lmk2video on a GPU when there, else "
        "models/sample/lmk2video)",
    )
    p.add_argument("--steps", type=int, default=25, help="denoising steps of step 5")
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the clip excerpt and of the speech")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from common.lmk import main as lmk

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    for option in ("video", "audio", "reference", "portrait", "speech"):
        if not Path(getattr(args, option)).is_file():
            raise UserError(
                f"--{option} {getattr(args, option)}: no such file (the demo's sample files are in "
                f"examples/sample of the checkout); give your own with --{option} FILE"
            )
    limits.number(args.seconds, "--seconds", 0, 60, low_open=True)
    limits.number(args.steps, "--steps", 1, limits.MAX_STEPS, integer=True)
    out = check_output_folder(args.out, overwrite=True, how="")  # the demo replaces its own outputs
    choose_models(args)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    full, clip, edited, retargeted = (
        out / n for n in ("clip.npz", "excerpt.npz", "edited.npz", "retargeted.npz")
    )

    print(f"[1/6] extracting landmarks from {args.video}")
    lmk(["extract", args.video, "-o", str(full), "--overwrite"])
    lmk(["info", str(full)])

    print("[2/6] editing: trim, smooth, exaggerate the mouth; retarget onto the portrait")
    lmk(["edit", str(full), "-o", str(clip), "--trim", f":{args.seconds}", "--overwrite"])
    lmk(["edit", str(clip), "-o", str(edited), "--smooth", "3", "--mouth-scale", "1.5", "--overwrite"])
    lmk(["retarget", str(edited), "--reference", args.portrait, "-o", str(retargeted), "--overwrite"])

    print("[3/6] rendering previews with audio")
    for name, style in (
        (clip, "default"),
        (edited, "default"),
        (retargeted, "default"),
        (edited, "aniportrait"),
    ):
        size = [] if name == retargeted else ["--size", "512x512"]
        video = out / f"{name.stem}_{style}.mp4"
        lmk(["render", str(name), "-o", str(video), "--audio", args.audio, "--style", style, "-q", "--overwrite",
             *size])  # fmt: skip
    speech = _cut_speech(args.speech, args.seconds, out / "speech.wav")
    audio2lmk = _load_audio2lmk(args.audio2lmk_model)
    talk = None
    if audio2lmk is not None:
        print(f"[4/6] speech -> landmarks: {args.speech} on {args.reference} with {args.audio2lmk_model}")
        talk = _speech_landmarks(
            audio2lmk, speech, args.reference, out / "speech.npz", out / "speech_default.mp4"
        )
    talking = _landmarks_to_video(args, out, talk, speech)
    if audio2lmk is not None:
        print(f"[6/6] the same speech on {args.portrait}: landmark preview")
        _speech_landmarks(
            audio2lmk, speech, args.portrait, out / "speech_on_portrait.npz", out / "speech_on_portrait.mp4"
        )
    if talking is not None:
        print("evaluation of the talking video (common.evaluation; no real video of this speech exists):")
        evaluate_demo(talking, talk, speech, args.reference, out / "evaluation")
    print(f"done in {time.perf_counter() - start:.0f} s: outputs in {out}")
    if talking is not None:
        print(f"the talking video: {talking}")


def choose_models(args: argparse.Namespace) -> None:
    """Fill in the model folders not given: AniPortrait's converted weights on a GPU, else the sample models."""
    import torch

    converted = all((ANIPORTRAIT / stage).is_dir() for stage in ("audio2lmk", "lmk2video"))
    gpu = torch.cuda.is_available()
    use = ANIPORTRAIT if converted and gpu else MODELS
    if args.audio2lmk_model is None and args.lmk2video_model is None:
        if converted and gpu:
            print(f"using AniPortrait's converted weights in {ANIPORTRAIT} (a GPU is there)")
        elif converted:
            print(
                f"{ANIPORTRAIT} holds AniPortrait's weights but there is no GPU (512x512 SD1.5 would take hours "
                f"on a CPU): using the sample models in {MODELS}; pass --lmk2video-model to choose"
            )
    args.audio2lmk_model = args.audio2lmk_model or str(use / "audio2lmk")
    args.lmk2video_model = args.lmk2video_model or str(use / "lmk2video")


def _cut_speech(path: str, seconds: float, dest: Path) -> Path:
    """At most ``seconds`` of the speech, as 16 kHz mono wav (checked: decodable, not silent)."""
    from common.audio import SAMPLE_RATE, load_audio
    from common.corpus import write_wav

    audio = load_audio(path, SAMPLE_RATE)
    return write_wav(dest, audio[: round(seconds * SAMPLE_RATE)], SAMPLE_RATE)


def _load_audio2lmk(folder: str):
    """The audio2lmk model of steps 4 and 6 (loaded once), or None, saying how to make one, when there is none."""
    model = Path(folder)
    if not (model / "audio2lmk.json").is_file():
        print(
            f"[4/6] skipped speech -> landmarks (and step 6): no audio2lmk model folder at {model}. Train one with\n"
            f"        python -m audio2lmk.train experiment=sample_audio2lmk export_dir={model}\n"
            "      (on ../shared/data/talking; see models/sample/audio2lmk/MODEL_CARD.md), or pass "
            "--audio2lmk-model DIR"
        )
        return None
    from audio2lmk.inference import load_audio2lmk

    return load_audio2lmk(model)


def _speech_landmarks(audio2lmk, speech: Path, face: str, landmarks: Path, preview: Path) -> Path:
    """The landmark file of ``speech`` on the face of the image ``face``, and its preview with the speech."""
    from audio2lmk.inference import audio_to_landmarks
    from common.detect import load_reference
    from common.lmk import main as lmk

    path = audio_to_landmarks(audio2lmk, speech, load_reference(face), seed=0).save(landmarks)
    lmk(["render", str(path), "-o", str(preview), "--audio", str(speech), "-q", "--overwrite"])
    return path


def _landmarks_to_video(args: argparse.Namespace, out: Path, talk: Path | None, speech: Path) -> Path | None:
    """Step 5: ``OUT/talking.mp4`` of the reference following ``talk``, with the speech."""
    model = Path(args.lmk2video_model)
    if not (model / "model_index.json").is_file():
        print(
            f"[5/6] skipped landmarks -> video: no lmk2video model folder at {model}. Train the sample one with\n"
            f"        python -m lmk2video.train experiment=sample_lmk2video export_dir={model}\n"
            "      (see models/sample/lmk2video/MODEL_CARD.md), a full-scale one on GPUs (the README's 'Training\n"
            "      at full scale'), or pass --lmk2video-model DIR"
        )
        return None
    if talk is None:
        print("[5/6] skipped landmarks -> video: step 4 made no landmarks")
        return None
    from lmk2video.generation import GenerateSettings, generate

    print(f"[5/6] landmarks -> video: {talk} on {args.reference} with {model} ({args.steps} steps)")
    values = {
        "model": str(model),
        "reference": args.reference,
        "landmarks": str(talk),
        "audio": str(speech),
        "out": str(out / "talking.mp4"),
        "steps": args.steps,
        "overwrite": True,
    }
    return generate(GenerateSettings.from_config(values, Path.cwd()))


def evaluate_demo(talking: Path, landmarks: Path, speech: Path, reference: str, out: Path) -> dict:
    """Score ``talking`` (and the reference held still, with the same ``speech``) with :mod:`common.evaluation`,
    plus the correlation of its mouth opening with that of the driving ``landmarks``; writes and prints the
    report (``out/report.json``, ``report.md``, plots); returns it."""
    from common.detect import read_image
    from common.edit import mouth_opening
    from common.evaluation.faces import MOUTH_STILL
    from common.evaluation.identity import available as identity_available
    from common.evaluation.report import publish
    from common.evaluation.run import EvalOptions, evaluate_folders
    from common.evaluation.scores import NO_REAL_VIDEO, pearson
    from common.evaluation.stats import summarize
    from common.lmkfile import LandmarkSequence
    from common.video import probe_video, write_video

    systems = {"sample model": out / "videos" / "sample", "reference still": out / "videos" / "still"}
    if out.exists():
        shutil.rmtree(out)
    for folder in (*systems.values(), out / "references"):
        folder.mkdir(parents=True)
    shutil.copy(talking, systems["sample model"] / "talking.mp4")
    image = read_image(reference)
    shutil.copy(reference, out / "references" / f"talking{Path(reference).suffix.lower()}")
    info = probe_video(talking)
    still = np.repeat(_fit(image, info.height, info.width)[None], info.num_frames, axis=0)
    write_video(systems["reference still"] / "talking.mp4", still, info.fps, audio=speech)
    options = EvalOptions(identity=identity_available(), progress=False)
    report, series = evaluate_folders(None, systems, out / "references", options)
    driving = mouth_opening(LandmarkSequence.load(landmarks).mesh)
    for name in systems:
        value, reason = pearson(series[name]["talking"]["mouth"], driving, still=MOUTH_STILL)
        entry = report["systems"][name]
        # Metrics against a real video do not apply here: leave them out of the notes.
        notes = entry["not_computed"].get("talking", {})
        for metric in [m for m, why in notes.items() if why == NO_REAL_VIDEO]:
            del notes[metric]
        entry["clips"]["talking"]["driving_mouth_corr"] = value
        if reason is not None:
            entry["not_computed"].setdefault("talking", {})["driving_mouth_corr"] = reason
        entry["summary"]["driving_mouth_corr"] = summarize([value])
    publish(report, series, out)
    return report


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference resized to the video's size (the still baseline)."""
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


if __name__ == "__main__":
    main()
