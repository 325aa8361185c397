"""``make demo`` (``python -m lmk2video.demo``): speech -> landmarks -> video on the sample data, with the models that are there.

1. extract the 3D mesh and head pose from a real talking clip;
2. edit them (smooth, exaggerate the mouth) and retarget them onto a portrait;
3. render landmark preview videos with the clip's speech muxed in;
4. speech -> landmarks on the portrait's face with the audio2lmk model folder ``--audio2lmk-model``
   (default ``models/audio2lmk``), rendered as a preview with the speech;
5. landmarks -> video with the lmk2video model folder ``--lmk2video-model`` (default
   ``models/lmk2video``): the speech-driven landmarks of step 4 (else the retargeted clip of step 2).

Steps 4 and 5 need trained weights; without a model folder the demo says which command makes one
and carries on. Outputs go to ``outputs/demo/`` (or ``--out``) and are replaced on every run. Inputs default to ../shared beside
the checkout; ``--video``/``--audio``/``--portrait``/``--speech`` take your own files.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from common.config import shared_dir
from common.errors import UserError, exit_on_user_error

SHARED = shared_dir() / "data"


def _default(path: Path) -> str | None:
    return str(path) if path.exists() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmk2video.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--video", default=_default(SHARED / "talking" / "Obama_clip1.mp4"), help="talking-head clip"
    )
    p.add_argument("--audio", default=_default(SHARED / "talking" / "Obama_clip1.wav"), help="its speech")
    p.add_argument(
        "--portrait", default=_default(SHARED / "portraits" / "photo_woman.jpg"), help="reference image"
    )
    p.add_argument(
        "--speech", default=_default(SHARED / "speech" / "en_24k_mono.mp3"), help="speech for steps 4-5"
    )
    p.add_argument("--audio2lmk-model", default="models/audio2lmk", help="step 4")
    p.add_argument("--lmk2video-model", default="models/lmk2video", help="step 5")
    p.add_argument("--steps", type=int, default=25, help="denoising steps of step 5")
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--seconds", type=float, default=8.0, help="length of the demo excerpt")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from common.lmk import main as lmk

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not (args.video and args.audio and args.portrait):
        raise UserError(
            "the demo's sample clip is in ../shared/data beside the checkout; without it give --video CLIP.mp4 "
            "--audio SPEECH.wav --portrait IMAGE.jpg"
        )
    model = SHARED / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    if "TALKING_PORTRAIT_FACE_MODEL" not in os.environ and model.is_file():
        os.environ["TALKING_PORTRAIT_FACE_MODEL"] = str(model)  # offline machines: the shared copy
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full, clip, edited, retargeted = (
        out / n for n in ("clip.npz", "excerpt.npz", "edited.npz", "retargeted.npz")
    )

    print(f"[1/5] extracting landmarks from {args.video}")
    lmk(["extract", args.video, "-o", str(full), "--overwrite"])
    lmk(["info", str(full)])

    print("[2/5] editing: trim, smooth, exaggerate the mouth; retarget onto the portrait")
    lmk(["edit", str(full), "-o", str(clip), "--trim", f":{args.seconds}", "--overwrite"])
    lmk(["edit", str(clip), "-o", str(edited), "--smooth", "3", "--mouth-scale", "1.5", "--overwrite"])
    lmk(["retarget", str(edited), "--reference", args.portrait, "-o", str(retargeted), "--overwrite"])

    print("[3/5] rendering previews with audio")
    for name, style in (
        (clip, "default"),
        (edited, "default"),
        (retargeted, "default"),
        (edited, "aniportrait"),
    ):
        video = out / f"{name.stem}_{style}.mp4"
        size = [] if name == retargeted else ["--size", "512x512"]
        lmk(
            [
                "render",
                str(name),
                "-o",
                str(video),
                "--audio",
                args.audio,
                "--style",
                style,
                "-q",
                "--overwrite",
                *size,
            ]
        )
    talk = _speech_to_landmarks(args, out)
    _landmarks_to_video(args, out, talk, retargeted)
    print(f"done: outputs in {out}")


def _speech_to_landmarks(args: argparse.Namespace, out: Path) -> Path | None:
    """Step 4: the landmark file made from ``args.speech``, or None when there is no model."""
    from common.detect import load_reference
    from common.lmk import main as lmk

    model = Path(args.audio2lmk_model)
    if not (model / "audio2lmk.json").is_file():
        print(
            f"[4/5] skipped speech -> landmarks: no audio2lmk model folder at {model}. Train one with\n"
            f"        python -m audio2lmk.train experiment=mel_small export_dir={model}\n"
            "      (about ten minutes on a CPU, on ../shared/data/talking), or pass --audio2lmk-model DIR"
        )
        return None
    if not args.speech:
        raise UserError("step 4 needs speech: pass --speech FILE (wav, mp3, m4a, flac, ...)")
    from audio2lmk.inference import audio_to_landmarks, load_audio2lmk

    print(f"[4/5] speech -> landmarks: {args.speech} on {args.portrait} with {model}")
    sequence = audio_to_landmarks(load_audio2lmk(model), args.speech, load_reference(args.portrait), seed=0)
    talk = sequence.save(out / "speech.npz")
    lmk(
        [
            "render",
            str(talk),
            "-o",
            str(out / "speech_default.mp4"),
            "--audio",
            args.speech,
            "-q",
            "--overwrite",
        ]
    )
    return talk


def _landmarks_to_video(args: argparse.Namespace, out: Path, talk: Path | None, retargeted: Path) -> None:
    """Step 5: a video of the portrait from ``talk`` (with the speech) or else the retargeted clip."""
    model = Path(args.lmk2video_model)
    if not (model / "model_index.json").is_file():
        print(
            f"[5/5] skipped landmarks -> video: no lmk2video model folder at {model}. Train one (stage 1, then\n"
            "      stage 2, on GPUs: see the README's 'Training at full scale'), e.g.\n"
            f"        python -m lmk2video.train experiment=sd15_stage1 data.index=DATA ... export_dir={model}\n"
            "      or pass --lmk2video-model DIR. (python -m lmk2video.init experiment=tiny_stage2 out=DIR makes an\n"
            "      untrained tiny model: it runs the whole path in seconds but renders noise.)"
        )
        return
    from lmk2video.generation import GenerateSettings, generate

    landmarks, audio = (talk, args.speech) if talk is not None else (retargeted, None)
    print(f"[5/5] landmarks -> video: {landmarks} on {args.portrait} with {model} ({args.steps} steps)")
    values = {
        "model": str(model),
        "reference": args.portrait,
        "landmarks": str(landmarks),
        "audio": audio,
        "out": str(out / "video.mp4"),
        "steps": args.steps,
        "grid": True,
        "overwrite": True,
    }
    generate(GenerateSettings.from_config(values, Path.cwd()))


if __name__ == "__main__":
    main()
