"""``python -m common.lmk``: extract, inspect, render, edit, mix and retarget landmark files.

Every subcommand exits with status 2 and one clear message on bad input, and writes its output
atomically (nothing is left behind on failure). An existing output is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

import numpy as np

from common import limits
from common.atomic import check_output
from common.detect import load_reference
from common.errors import UserError, exit_on_user_error
from common.lmkfile import LandmarkSequence, check_landmark_name

log = logging.getLogger("common.lmk")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (H, W), each side from 1 to :data:`common.limits.MAX_IMAGE_SIDE`."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: write the size as WIDTHxHEIGHT, e.g. 512x512") from None
    if not (0 < w <= limits.MAX_IMAGE_SIDE and 0 < h <= limits.MAX_IMAGE_SIDE):
        raise UserError(
            f"--size {text!r}: width and height must be from 1 to {limits.MAX_IMAGE_SIDE} pixels, e.g. 512x512"
        )
    return h, w


@contextlib.contextmanager
def _option(flag: str):
    """Name the command-line flag in the errors of the edit it drives."""
    try:
        yield
    except UserError as err:
        raise UserError(f"{flag}: {err}") from None


def check_args(args: argparse.Namespace) -> None:
    """Every option in range before any file is read or model loaded."""
    output = getattr(args, "output", None)
    if output is not None and args.command != "render":
        check_landmark_name(output, f"-o {output}")
    if args.command == "extract":
        limits.number(args.max_gap, "--max-gap", 0, 3600, hint="seconds of face-less frames to interpolate")
        limits.fraction(args.min_face_fraction, "--min-face-fraction")
        limits.number(args.num_faces, "--num-faces", 1, 10, integer=True)
        limits.number(args.fps, "--fps", 0, limits.MAX_FPS, low_open=True)
        if args.model is not None:
            from common.detect import resolve_face_model

            resolve_face_model(args.model)
    elif args.command == "render":
        from common.video import VideoWriter

        VideoWriter(
            args.output, fps=1.0, audio=args.audio
        )  # checks the name and the audio path; writes nothing
        if args.size:
            parse_size(args.size)
        from common.draw import get_style

        get_style(args.style)
    elif args.command == "edit":
        if args.fps is not None:
            limits.number(args.fps, "--fps", 0, limits.MAX_FPS, low_open=True)
        if args.smooth is not None:
            limits.number(args.smooth, "--smooth", 1, limits.MAX_SMOOTH, integer=True, hint="1 = unchanged")
        if args.mouth_scale is not None:
            limits.number(
                args.mouth_scale, "--mouth-scale", 0, limits.MAX_MOUTH_SCALE, hint="1 = unchanged, 0 = closed"
            )
        if args.expression_scale is not None:
            limits.number(
                args.expression_scale,
                "--expression-scale",
                0,
                limits.MAX_EXPRESSION_SCALE,
                hint="1 = unchanged, 0 = as in the neutral frame",
            )
        limits.seed(args.seed, "--seed")
        _edit_inputs(args)
    elif args.command == "mix":
        from common.edit import MIX_SOURCES, check_mix

        for flag in ("base", *MIX_SOURCES):
            value = getattr(args, flag)
            if value is not None:
                check_landmark_name(value, f"--{flag} {value}")
        check_mix(args.length, [flag for flag in MIX_SOURCES if getattr(args, flag) is not None])


def _edit_inputs(args: argparse.Namespace) -> None:
    """Parse ``edit``'s --rotate, --pose-curve and --blink (reading a curve file), filling ``args.parsed``."""
    from common import edit

    args.parsed = {}
    if args.rotate is not None:
        args.parsed["rotate"] = edit.parse_angles(args.rotate, "--rotate")
    if args.pose_curve is not None:
        with _option("--pose-curve"):
            args.parsed["pose_curve"] = edit.parse_pose_curve(args.pose_curve)
    if (
        args.blink is not None
        and args.blink not in edit.BLINK_MODES
        and not args.blink.lower().endswith(".npz")
    ):
        raise UserError(
            f"--blink {args.blink!r}: use keep, auto, none or a landmark file (.npz) to copy blinks from"
        )


# --------------------------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> None:
    from common.detect import ExtractionReport, extract

    report = ExtractionReport()
    seq = extract(
        args.input,
        model_path=args.model,
        max_gap=args.max_gap,
        min_face_fraction=args.min_face_fraction,
        num_faces=args.num_faces,
        progress=not args.quiet,
        report=report,
        fps=args.fps,
    )
    seq.save(args.output)
    extra = f", {report.num_interpolated} interpolated" if report.num_interpolated else ""
    print(f"wrote {args.output}: {seq.num_frames} frames at {seq.fps:g} fps{extra}")


def describe(seq: LandmarkSequence) -> dict:
    """A summary of a sequence as plain data (what ``info`` prints)."""
    pose = seq.pose.astype(np.float64)
    names = ["rx", "ry", "rz", "tx", "ty", "tz"]
    found = seq.face_found
    return {
        "frames": seq.num_frames,
        "fps": seq.fps,
        "duration_s": round(seq.duration, 4),
        "image_size": {"height": seq.image_size[0], "width": seq.image_size[1]},
        "pose_range": {
            n: [round(float(pose[:, i].min()), 3), round(float(pose[:, i].max()), 3)]
            for i, n in enumerate(names)
        },
        "interpolated_frames": int((~found).sum()) if found is not None else None,
        "optional_keys": [
            k
            for k in ("landmarks2d", "blendshapes", "face_found", "reference_mesh", "reference_pose")
            if getattr(seq, k) is not None
        ],
        "meta": seq.meta,
    }


def cmd_info(args: argparse.Namespace) -> None:
    seq = LandmarkSequence.load(args.file)
    info = describe(seq)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"file:        {args.file}")
    print(f"frames:      {info['frames']} at {info['fps']:g} fps ({info['duration_s']:.2f} s)")
    print(f"image size:  {info['image_size']['width']}x{info['image_size']['height']} (WxH)")
    units = {"r": "deg", "t": "cm"}
    for name, (lo, hi) in info["pose_range"].items():
        print(f"pose {name}:     {lo:9.3f} .. {hi:9.3f} {units[name[0]]}")
    if info["interpolated_frames"] is not None:
        print(f"interpolated: {info['interpolated_frames']} frame(s) without a detected face")
    print(f"optional:    {', '.join(info['optional_keys']) or '-'}")
    meta = seq.meta
    if meta.get("source"):
        print(f"source:      {meta['source']}")
    for step in meta.get("history", []):
        print(f"edit:        {step}")


def cmd_render(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from common.draw import draw_landmarks, get_style
    from common.video import VideoWriter

    seq = LandmarkSequence.load(args.file)
    size = parse_size(args.size) if args.size else seq.image_size
    style = get_style(args.style)
    points = seq.project(size)
    chunk = max(1, min(64, (256 << 20) // (3 * size[0] * size[1])))  # at most 256 MiB of frames at a time
    with VideoWriter(args.output, seq.fps, audio=args.audio) as writer:
        for start in tqdm(
            range(0, seq.num_frames, chunk), desc="render", unit="chunk", disable=args.quiet, leave=False
        ):
            frames = draw_landmarks(points[start : start + chunk], size, style=style.name)
            if style.channel_order == "bgr":
                frames = frames[..., ::-1]
            writer.write(frames)
    print(f"wrote {args.output}: {writer.num_frames} frames {size[1]}x{size[0]} at {seq.fps:g} fps")


def cmd_edit(args: argparse.Namespace) -> None:
    from common import edit

    seq = LandmarkSequence.load(args.file)
    pose = None
    if args.pose is not None and args.pose != "still":
        with _option("--pose"):
            pose = edit.load_pose_source(args.pose)
    if args.trim is not None:
        with _option("--trim"):
            start, end = edit.parse_trim(args.trim, seq)
            seq = edit.trim(seq, start, end)
    if args.fps is not None:
        seq = edit.resample_fps(seq, args.fps)
    if args.smooth is not None:
        seq = edit.smooth(seq, args.smooth)
    blinks = args.blink
    if blinks is not None and blinks not in edit.BLINK_MODES:
        blinks = LandmarkSequence.load(blinks)
    if args.mouth_scale is not None:
        seq = edit.scale_mouth(seq, args.mouth_scale)
    if args.expression_scale is not None:
        seq = edit.scale_expression(seq, args.expression_scale)
    if blinks is not None:
        seq = edit.blink(seq, blinks, seed=args.seed)
    if args.pose is not None:
        with _option("--pose"):
            seq = edit.set_pose(seq, "still" if pose is None else pose)
    if "rotate" in args.parsed:
        seq = edit.rotate(seq, **args.parsed["rotate"])
    if "pose_curve" in args.parsed:
        seq = edit.apply_pose_curve(seq, args.parsed["pose_curve"])
    seq.save(args.output)
    print(f"wrote {args.output}: {seq.num_frames} frames at {seq.fps:g} fps")


def cmd_mix(args: argparse.Namespace) -> None:
    from common import edit

    sources = {
        flag: LandmarkSequence.load(getattr(args, flag))
        for flag in edit.MIX_SOURCES
        if getattr(args, flag) is not None
    }
    out = edit.mix(LandmarkSequence.load(args.base), **sources, length=args.length)
    out.save(args.output)
    print(f"wrote {args.output}: {out.num_frames} frames at {out.fps:g} fps ({', '.join(sources)} mixed in)")


def cmd_retarget(args: argparse.Namespace) -> None:
    from common import edit

    source = LandmarkSequence.load(args.source)
    reference = load_reference(args.reference, args.model)
    out = edit.retarget(source, reference)
    out.meta["reference"] = str(args.reference)
    out.save(args.output)
    print(f"wrote {args.output}: {out.num_frames} frames retargeted onto {args.reference}")


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.lmk", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="detect landmarks in a video or image and write a landmark file")
    p.add_argument("input", help="video (.mp4, .mov, ...) or image (.jpg, .png, ...)")
    p.add_argument("-o", "--output", required=True, help="output landmark file (.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--model", help="MediaPipe face_landmarker .task file (default: see README)")
    p.add_argument("--max-gap", type=float, default=0.5, help="longest face-less gap to interpolate, seconds")
    p.add_argument("--min-face-fraction", type=float, default=0.5, help="fail when fewer frames show a face")
    p.add_argument(
        "--num-faces", type=int, default=1, help="faces to look for per frame (>1 tracks one of them)"
    )
    p.add_argument("--fps", type=float, default=30.0, help="frame rate stored for an image input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("info", help="print frames, fps, duration, size, pose ranges and flags")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("render", help="draw a landmark preview video (with audio)")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--audio", help="audio file muxed into the video (cut or padded to its length)")
    p.add_argument("--size", help="WIDTHxHEIGHT (default: the file's image size)")
    p.add_argument("--style", default="default", help="drawing style (default, aniportrait)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "edit",
        help="trim, resample, smooth, scale mouth or expression, blinks, pose source, rotate",
        description="Edits apply in this order: --trim, --fps, --smooth, --mouth-scale, --expression-scale, "
        "--blink, --pose, --rotate, --pose-curve.",
    )
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="output landmark file (.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--trim", help="A:B in seconds (2.5) or frames (30f); either side may be empty")
    p.add_argument("--fps", type=float, help="resample to this frame rate")
    p.add_argument("--smooth", type=int, help="temporal smoothing window in frames (1 = unchanged)")
    p.add_argument("--mouth-scale", type=float, help="scale the mouth opening (1 = unchanged)")
    p.add_argument(
        "--pose", help="'still' (hold the first frame's pose) or a pose file (.npy template or .npz)"
    )
    p.add_argument(
        "--expression-scale", type=float, help="scale the expression outside the mouth (1 = unchanged)"
    )
    p.add_argument(
        "--blink",
        help="keep (default), auto (natural blinks, --seed), none (no blinks) or a landmark file to copy blinks from",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --blink auto (default 0)")
    p.add_argument(
        "--rotate", help="constant offsets in degrees added to the pose, e.g. yaw=15,pitch=-5,roll=0"
    )
    p.add_argument(
        "--pose-curve",
        help="offsets over time added to the pose: a CSV (time,yaw,pitch,roll) or keyframes 0:yaw=0;2.5:yaw=20",
    )
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("mix", help="face regions and head motion of other landmark files on a base")
    p.add_argument("--base", required=True, help="landmark file whose face, length and fps the output keeps")
    p.add_argument("--mouth", help="landmark file to take the mouth (lower face) from")
    p.add_argument("--eyes", help="landmark file to take the eyes (lids) from")
    p.add_argument("--brows", help="landmark file to take the brows from")
    p.add_argument("--pose", help="landmark file to take the head motion from")
    p.add_argument(
        "--length",
        default="base",
        help="frames of the output: the base's (default), the shortest input's, or the longest (others looped)",
    )
    p.add_argument("-o", "--output", required=True, help="output landmark file (.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("retarget", help="put a sequence's expression and motion on another face")
    p.add_argument("source", help="landmark file to take expression and motion from")
    p.add_argument("--reference", required=True, help="reference image or landmark file (its first frame)")
    p.add_argument("-o", "--output", required=True, help="output landmark file (.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--model", help="MediaPipe face_landmarker .task file for an image reference")
    p.set_defaults(func=cmd_retarget)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    check_args(args)
    if getattr(args, "output", None) is not None:
        check_output(args.output, args.overwrite, "--overwrite")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
