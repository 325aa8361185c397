"""Evaluation metrics of audio2lmk, shared by training validation, baselines and ``audio2lmk.evaluate``.

All mesh inputs are pose-free meshes or mesh offsets in cm (``common.geometry``); errors are
reported in mm. A prediction and its ground truth are compared frame by frame:

* **LVE** (lip vertex error, ``lve_mm``): for each frame the largest L2 distance over the lip
  vertices (:data:`LIP_VERTICES`), averaged over frames (the definition of FaceFormer/MeshTalk,
  used by AniPortrait-style work).
* **MVE** (mean vertex error, ``mve_mm``): the L2 distance averaged over all vertices and frames.
* **Mouth-opening correlation** (``mouth_corr``): Pearson's r between the predicted and the true
  mouth opening (:func:`common.edit.mouth_opening`, the inner-lip midline gap) over the frames of
  one clip, averaged over clips. A constant prediction (e.g. the still baseline) has no
  correlation: its r counts as 0.
* **Pose L1** (``pose_l1``): mean absolute error of the 6 pose numbers (XYZ Euler degrees and
  translation cm, relative to the first frame), over frames and numbers.

:class:`Audio2LmkMetrics` accumulates these over batches of (possibly padded) windows and clips;
it is a ``torchmetrics.Metric``, so its sums are all-reduced across processes under DDP.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from common.edit import LOWER_INNER_LIP, LOWER_OUTER_LIP, MIDLINE_COLUMN, UPPER_INNER_LIP, UPPER_OUTER_LIP

LIP_CORNERS = (61, 291, 78, 308)
"""Outer (61, 291) and inner (78, 308) lip corners."""

LIP_VERTICES: tuple[int, ...] = tuple(
    sorted({*UPPER_OUTER_LIP, *LOWER_OUTER_LIP, *UPPER_INNER_LIP, *LOWER_INNER_LIP, *LIP_CORNERS})
)
"""The 40 lip vertices of MediaPipe's face mesh: the vertices of its ``FACEMESH_LIPS`` connections
(outer and inner lip contours with their corners)."""

CM_TO_MM = 10.0
MOUTH_UPPER, MOUTH_LOWER = UPPER_INNER_LIP[MIDLINE_COLUMN], LOWER_INNER_LIP[MIDLINE_COLUMN]
METRIC_NAMES = ("lve_mm", "mve_mm", "mouth_corr", "pose_l1")


def lip_vertex_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame LVE in mm: ``(..., 468, 3)`` meshes or offsets in cm -> ``(...)``."""
    lips = list(LIP_VERTICES)
    return torch.linalg.vector_norm(pred[..., lips, :] - target[..., lips, :], dim=-1).amax(-1) * CM_TO_MM


def mean_vertex_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame mean vertex error in mm: ``(..., 468, 3)`` cm -> ``(...)``."""
    return torch.linalg.vector_norm(pred - target, dim=-1).mean(-1) * CM_TO_MM


def mouth_opening_t(mesh: torch.Tensor) -> torch.Tensor:
    """:func:`common.edit.mouth_opening` for tensors: ``(..., 468, 3)`` cm -> ``(...)`` cm.

    Offsets give the opening's change from the reference, which correlates identically.
    """
    return mesh[..., MOUTH_UPPER, 1] - mesh[..., MOUTH_LOWER, 1]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two 1-D series; 0 when either is constant (no linear relation to measure)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return _pearson_from_sums(len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())


def _pearson_from_sums(n, sx, sy, sxx, syy, sxy) -> float:
    if n < 2:
        return 0.0
    cov = sxy - sx * sy / n
    vx = sxx - sx * sx / n
    vy = syy - sy * sy / n
    # Relative thresholds: a series constant up to rounding has no correlation.
    if vx <= 1e-12 * max(sxx, 1e-30) or vy <= 1e-12 * max(syy, 1e-30):
        return 0.0
    return float(np.clip(cov / np.sqrt(vx * vy), -1.0, 1.0))


class Audio2LmkMetrics(Metric):
    """Accumulates LVE, MVE, per-clip mouth-opening correlation and pose L1 over batches.

    Args:
        num_clips: number of distinct clip ids passed to :meth:`update` (``clip`` in ``[0, num_clips)``).

    ``compute()`` returns the metrics that received data, a subset of :data:`METRIC_NAMES`.
    """

    full_state_update = False

    def __init__(self, num_clips: int) -> None:
        super().__init__()
        self.num_clips = int(num_clips)
        for name in ("lve_sum", "mve_sum", "mesh_frames", "pose_abs_sum", "pose_count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # Per-clip sums for Pearson's r: n, sx, sy, sxx, syy, sxy.
        self.add_state("corr_sums", torch.zeros(self.num_clips, 6, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        clip: torch.Tensor,
        mask: torch.Tensor,
        mesh_pred: torch.Tensor | None = None,
        mesh_target: torch.Tensor | None = None,
        pose_pred: torch.Tensor | None = None,
        pose_target: torch.Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            clip: ``(B,)`` clip ids (the correlation is computed per clip).
            mask: ``(B, T)`` bool, True on real (not padded) frames.
            mesh_pred, mesh_target: ``(B, T, 468, 3)`` meshes or offsets from the same reference, cm.
            pose_pred, pose_target: ``(B, T, 6)`` poses relative to the window's first frame.
        """
        mask = mask.bool()
        if mesh_pred is not None and mesh_target is not None:
            pred, target = mesh_pred.detach().double(), mesh_target.detach().double()
            self.lve_sum += lip_vertex_error(pred, target)[mask].sum()
            self.mve_sum += mean_vertex_error(pred, target)[mask].sum()
            self.mesh_frames += mask.sum()
            x, y = mouth_opening_t(pred), mouth_opening_t(target)
            m = mask.double()
            sums = torch.stack([m, x * m, y * m, x * x * m, y * y * m, x * y * m], dim=-1).sum(1)  # (B, 6)
            self.corr_sums.index_add_(0, clip.long().to(self.corr_sums.device), sums)
        if pose_pred is not None and pose_target is not None:
            err = (pose_pred.detach().double() - pose_target.detach().double()).abs()
            self.pose_abs_sum += err[mask].sum()
            self.pose_count += mask.sum() * err.shape[-1]

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.mesh_frames > 0:
            out["lve_mm"] = self.lve_sum / self.mesh_frames
            out["mve_mm"] = self.mve_sum / self.mesh_frames
            clips = [row for row in self.corr_sums.cpu().numpy() if row[0] > 0]
            out["mouth_corr"] = torch.tensor(float(np.mean([_pearson_from_sums(*row) for row in clips])))
        if self.pose_count > 0:
            out["pose_l1"] = self.pose_abs_sum / self.pose_count
        return {k: v.float() for k, v in out.items()}
