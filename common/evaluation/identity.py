"""Identity: does every generated frame show the reference's person? dlib's ResNet face descriptor.

dlib's ``dlib_face_recognition_resnet_model_v1`` (128-d descriptors; 99.38 % on LFW; two faces are the same
person when their descriptors are closer than 0.6) with its 5-point shape predictor, both from the
``face-recognition-models`` package (its weights ship inside it). That package's own import needs
``pkg_resources``, which current setuptools no longer has, so its ``.dat`` files are found by path and
loaded with dlib directly. Faces are located by MediaPipe (:mod:`.faces`): the shape predictor runs in the box
of the face's landmarks.

Reported per clip, over the generated frames with a face: ``identity_cosine`` (mean cosine similarity to
the reference's descriptor) and ``identity_distance`` (mean Euclidean distance, dlib's own measure).
This is dlib's face descriptor, not ArcFace: the papers' "CSIM" numbers are not comparable with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.evaluation.scores import Scores

IDENTITY_METRICS = ("identity_cosine", "identity_distance")
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL = "pip install 'talking-portrait[eval]' (dlib-bin and face-recognition-models)"


def model_files() -> tuple[Path, Path]:
    """The shape predictor and ResNet files of the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"identity metrics need dlib's face recognition model: {INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = (folder / SHAPE_PREDICTOR, folder / RESNET)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"face-recognition-models is installed without {', '.join(missing)}; reinstall it")
    return files


def available() -> bool:
    """Whether the identity metrics can run here: dlib importable and its model files installed."""
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        model_files()
    except UserError:
        return False
    return True


class FaceDescriptor:
    """dlib's 128-d face descriptor of faces located by a box."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise UserError(f"identity metrics need dlib: {INSTALL}") from None
        predictor, resnet = model_files()
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(predictor))
        self._resnet = dlib.face_recognition_model_v1(str(resnet))

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Descriptor (128,) of the face in ``box`` (x0, y0, x1, y1 pixels) of an RGB uint8 image."""
        x0, y0, x1, y1 = (int(np.rint(v)) for v in box)
        shape = self._predictor(np.ascontiguousarray(image), self._dlib.rectangle(x0, y0, x1, y1))
        return np.asarray(self._resnet.compute_face_descriptor(np.ascontiguousarray(image), shape))


def identity_scores(
    describe: FaceDescriptor, frames: np.ndarray, boxes: np.ndarray, reference: np.ndarray
) -> Scores:
    """Similarity of each frame's face (``boxes``: (T, 4), NaN where no face) to the ``reference`` (128,)."""
    scores = Scores()
    found = np.all(np.isfinite(boxes), axis=1)
    if not found.any():
        scores.skip(IDENTITY_METRICS, "no generated frame shows a face")
        return scores
    descriptors = np.stack([describe(f, b) for f, b in zip(frames[found], boxes[found])])
    cosine = descriptors @ reference / (np.linalg.norm(descriptors, axis=1) * np.linalg.norm(reference))
    scores.set("identity_cosine", float(cosine.mean()))
    scores.set("identity_distance", float(np.linalg.norm(descriptors - reference, axis=1).mean()))
    return scores
