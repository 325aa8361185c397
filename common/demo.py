"""``make demo``: the landmark round trip on a sample talking clip.

1. extract the 3D mesh and head pose from a real talking clip;
2. edit them (smooth, exaggerate the mouth) and retarget them onto a portrait;
3. render landmark preview videos with the clip's speech muxed in.

Outputs go to ``outputs/demo/`` (or ``--out``). Inputs default to ../shared beside the checkout;
``--video``/``--audio``/``--portrait`` take your own files.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from common.config import PROJECT_ROOT
from common.errors import UserError, exit_on_user_error

SHARED = PROJECT_ROOT.parent / "shared" / "data"


def _default(path: Path) -> str | None:
    return str(path) if path.exists() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--video", default=_default(SHARED / "talking" / "Obama_clip1.mp4"), help="talking-head clip"
    )
    p.add_argument("--audio", default=_default(SHARED / "talking" / "Obama_clip1.wav"), help="its speech")
    p.add_argument(
        "--portrait", default=_default(SHARED / "portraits" / "photo_woman.jpg"), help="reference image"
    )
    p.add_argument("--out", default=str(PROJECT_ROOT / "outputs" / "demo"), help="output folder")
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
        out / n for n in ("clip.npz", "clip_8s.npz", "edited.npz", "retargeted.npz")
    )

    print(f"[1/3] extracting landmarks from {args.video}")
    lmk(["extract", args.video, "-o", str(full)])
    lmk(["info", str(full)])

    print("[2/3] editing: trim, smooth, exaggerate the mouth; retarget onto the portrait")
    lmk(["edit", str(full), "-o", str(clip), "--trim", f":{args.seconds}"])
    lmk(["edit", str(clip), "-o", str(edited), "--smooth", "3", "--mouth-scale", "1.5"])
    lmk(["retarget", str(edited), "--reference", args.portrait, "-o", str(retargeted)])

    print("[3/3] rendering previews with audio")
    for name, style in (
        (clip, "default"),
        (edited, "default"),
        (retargeted, "default"),
        (edited, "aniportrait"),
    ):
        video = out / f"{name.stem}_{style}.mp4"
        size = [] if name == retargeted else ["--size", "512x512"]
        lmk(["render", str(name), "-o", str(video), "--audio", args.audio, "--style", style, "-q", *size])
    print(f"done: landmark files and preview videos in {out}")


if __name__ == "__main__":
    main()
