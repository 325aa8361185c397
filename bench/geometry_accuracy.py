"""Face geometry against MediaPipe on every frame of the shared talking clips.

    python bench/geometry_accuracy.py [--clips DIR] [--model FILE]

Prints, per clip and overall: mean rotation error (degrees) and mean relative translation error
of our geometry pipeline against MediaPipe's own facial transformation matrices, and the mean
pixel error of projecting the stored float32 mesh + pose against MediaPipe's detected landmarks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import geometry as g  # noqa: E402
from common.detect import FaceDetector  # noqa: E402
from common.video import iter_frames  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=str(ROOT.parent / "shared/data/talking"))
    parser.add_argument(
        "--model", default=str(ROOT.parent / "shared/data/mediapipe/face_landmarker_v2_with_blendshapes.task")
    )
    args = parser.parse_args()
    rows = []
    for clip in sorted(Path(args.clips).glob("*.mp4")):
        lms, mats = [], []
        with FaceDetector(args.model, mode="video") as det:
            for t, rgb in iter_frames(clip):
                size = rgb.shape[:2]
                faces = det.detect(rgb, round(t * 1000))
                if faces:
                    lms.append(faces[0].landmarks)
                    mats.append(faces[0].matrix)
        lms, mats = np.stack(lms), np.stack(mats)
        geo = g.landmarks_to_geometry(lms, size)
        ra, rb = g.rotation_part(geo.matrices), g.rotation_part(mats)
        cos = (np.trace(np.swapaxes(ra, 1, 2) @ rb, axis1=1, axis2=2) - 1) / 2
        rot = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        trans = np.linalg.norm(geo.matrices[:, :3, 3] - mats[:, :3, 3], axis=1) / np.linalg.norm(
            mats[:, :3, 3], axis=1
        )
        px = g.project(geo.mesh.astype(np.float32), geo.pose.astype(np.float32), size)
        err = np.linalg.norm(px - lms[:, :468, :2] * [size[1], size[0]], axis=-1).mean(axis=1)
        rows.append((clip.stem, len(lms), rot, trans, err))
        print(
            f"{clip.stem:22s} frames {len(lms):4d}  rot {rot.mean():.2e} deg  trans {100 * trans.mean():.2e} %  proj {err.mean():.2e} px"
        )
    rot = np.concatenate([r[2] for r in rows])
    trans = np.concatenate([r[3] for r in rows])
    err = np.concatenate([r[4] for r in rows])
    print(
        f"ALL {len(rot)} frames: mean rotation error {rot.mean():.2e} deg (max {rot.max():.2e}), "
        f"mean translation error {100 * trans.mean():.2e} % (max {100 * trans.max():.2e}), "
        f"mean projection error {err.mean():.2e} px (max {err.max():.2e})"
    )


if __name__ == "__main__":
    main()
