"""Pixel metrics against the real video, frame by frame: PSNR and SSIM, of the whole frame and of the face.

The generated frames are resized (bicubic) to the real clip's size when they differ (the aspect ratio must
match). The face crop is the real frame's landmark box grown by 10 % each side (the same box in both).
Identical frames have an infinite PSNR, reported as the cap of 100 dB. SSIM is torchmetrics' (Gaussian
window 11, sigma 1.5, on RGB in [0, 255], in float32).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from common.errors import UserError
from common.evaluation.scores import Scores

PSNR_CAP = 100.0
PIXEL_METRICS = ("psnr", "ssim", "psnr_face", "ssim_face")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (capped at 100 dB)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, chunk: int = 16) -> np.ndarray:
    """SSIM of each pair of (T, H, W, 3) uint8 frames (float32: float64 is 20x slower for no visible gain)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    out = []
    for start in range(0, len(a), chunk):
        x, y = (
            torch.from_numpy(np.ascontiguousarray(v[start : start + chunk])).permute(0, 3, 1, 2).float()
            for v in (a, b)
        )
        out.append(structural_similarity_index_measure(x, y, data_range=255.0, reduction="none").numpy())
    return np.concatenate(out)


def match_size(frames: np.ndarray, size: tuple[int, int], source: str) -> np.ndarray:
    """``frames`` (T, h, w, 3) at ``size`` (H, W); refuses another aspect ratio."""
    h, w = frames.shape[1:3]
    if (h, w) == tuple(size):
        return frames
    if abs(w / h - size[1] / size[0]) > 0.01:
        raise UserError(
            f"{source} is {w}x{h} but its real clip is {size[1]}x{size[0]}: PSNR/SSIM need the same aspect ratio; "
            "generate at the real clip's aspect ratio"
        )
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_CUBIC) for f in frames])


def pixel_scores(generated: np.ndarray, real: np.ndarray, boxes: np.ndarray, source: str) -> Scores:
    """Mean PSNR/SSIM over frames; ``boxes`` (T, 4) x0, y0, x1, y1 of the real faces (NaN: no face)."""
    generated = match_size(generated, real.shape[1:3], source)
    scores = Scores()
    scores.set("psnr", float(np.mean([psnr(g, r) for g, r in zip(generated, real)])))
    scores.set("ssim", float(ssim(generated, real).mean()))
    face_psnr, face_ssim = [], []
    h, w = real.shape[1:3]
    for g, r, box in zip(generated, real, boxes):
        if not np.all(np.isfinite(box)):
            continue
        x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
        x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
        if x1 - x0 < 11 or y1 - y0 < 11:
            continue
        face_psnr.append(psnr(g[y0:y1, x0:x1], r[y0:y1, x0:x1]))
        face_ssim.append(float(ssim(g[None, y0:y1, x0:x1], r[None, y0:y1, x0:x1])[0]))
    if face_psnr:
        scores.set("psnr_face", float(np.mean(face_psnr)))
        scores.set("ssim_face", float(np.mean(face_ssim)))
    else:
        scores.skip(("psnr_face", "ssim_face"), "no real frame shows a face of at least 11x11 pixels")
    return scores
