"""``python -m common.measure_blinks CLIPS... -o FILE``: measure the blink model of :mod:`common.blinks`.

Videos are read with MediaPipe (``--model``), landmark files (``.npz``) as they are. The model shipped in
``common/data/blinks.npz`` was written by
``python -m common.measure_blinks ../shared/data/talking/*.mp4 -o common/data/blinks.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.blinks import measure_blink_model
from common.errors import UserError, exit_on_user_error


def _load_clip(path: Path, model: str | None):
    from common.detect import extract
    from common.lmkfile import LandmarkSequence

    if path.suffix.lower() == ".npz":
        return LandmarkSequence.load(path)
    return extract(path, model_path=model, progress=False)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from common.atomic import check_output

    p = argparse.ArgumentParser(prog="python -m common.measure_blinks", description=__doc__.splitlines()[0])
    p.add_argument("clips", nargs="+", help="videos (landmarks are extracted) or landmark files (.npz)")
    p.add_argument("-o", "--output", required=True, help="blink model file (.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--model", help="MediaPipe face_landmarker .task file")
    args = p.parse_args(argv)
    check_output(args.output, args.overwrite, "--overwrite")
    paths = [Path(c) for c in args.clips]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such clip; give videos or landmark files (.npz)")
    names = ", ".join(sorted(p.stem for p in paths))
    model = measure_blink_model((_load_clip(p, args.model) for p in paths), source=f"measured on {names}")
    model.save(args.output)
    summary = {
        "blinks": len(model.durations_s),
        "minutes": round(model.minutes, 3),
        "rate_per_minute": round(model.rate_per_minute, 2),
        "median_duration_s": round(float(np.median(model.durations_s)), 4),
        "median_interval_s": round(float(np.median(model.intervals_s)), 3),
        "closed_ratio": round(model.closed_ratio, 4),
    }
    print(f"wrote {args.output}: {json.dumps(summary)}")


if __name__ == "__main__":
    main(sys.argv[1:])
