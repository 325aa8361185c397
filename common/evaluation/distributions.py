"""Distribution metrics of a system's frames and clips against the real ones: FID and FVD.

Both need a network the user supplies (nothing downloads here; a missing file is an error that says where
to get it):

- ``fid_weights``: the Inception-v3 (2015-12-05) feature network as a TorchScript file, called as
  ``net(images_uint8_NCHW, return_features=True)`` -> (N, 2048): StyleGAN2-ADA's / StyleGAN-V's
  ``inception-2015-12-05`` detector, the TensorFlow FID network ported to PyTorch (the same network whose
  weights torch-fidelity ships; torch-fidelity itself is not used because it requires torchvision). Every
  frame of every clip counts as one image.
- ``fvd_weights``: StyleGAN-V's I3D TorchScript (``i3d_torchscript.pt``), called as
  ``net(videos, rescale=False, resize=False, return_features=True)`` on (N, 3, 16, 224, 224) clips in
  [-1, 1] (frames resized on their short side to 224 and centre-cropped), as StyleGAN-V computes FVD. Each
  clip gives its consecutive 16-frame segments.

The distance is the Fréchet distance between Gaussians fitted to the two feature sets. Both are properties
of a system's whole set of clips: they appear in ``summary`` (with the number of images or segments), not
per clip. With few clips the covariance is poorly estimated; compare systems only on the same clips.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.linalg
import torch

from common.errors import UserError

FVD_FRAMES = 16
SOURCES = {
    "fid_weights": "StyleGAN2-ADA's metrics/inception-2015-12-05 detector (a TorchScript file)",
    "fvd_weights": "StyleGAN-V's i3d_torchscript.pt",
}


def load_network(path: str | Path, option: str) -> torch.jit.ScriptModule:
    """The TorchScript network at ``path`` (``option`` names the setting in messages)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{option}={path}: no such file. Download {SOURCES[option]} on a machine with internet, put it at "
            f"{path} (or anywhere, and pass {option}=PATH), or leave {option} unset to skip the metric"
        )
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # any unreadable file is the user's to fix
        raise UserError(
            f"{option}={path}: not a TorchScript network ({type(err).__name__}); download it again"
        ) from None


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(np.atleast_2d(cov_a) @ np.atleast_2d(cov_b))
    root = np.real(root)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


@torch.no_grad()
def image_features(net: torch.jit.ScriptModule, frames: np.ndarray, batch: int = 32) -> np.ndarray:
    """Features (T, D) of frames (T, H, W, 3) uint8."""
    out = []
    for start in range(0, len(frames), batch):
        images = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch])).permute(0, 3, 1, 2)
        out.append(net(images, return_features=True).double().numpy())
    return np.concatenate(out)


def _i3d_input(frames: np.ndarray) -> torch.Tensor:
    h, w = frames.shape[1:3]
    scale = 224 / min(h, w)
    size = (max(224, round(w * scale)), max(224, round(h * scale)))
    x0, y0 = (size[0] - 224) // 2, (size[1] - 224) // 2
    crops = [cv2.resize(f, size, interpolation=cv2.INTER_AREA)[y0 : y0 + 224, x0 : x0 + 224] for f in frames]
    video = torch.from_numpy(np.stack(crops)).float() / 127.5 - 1.0
    return video.permute(3, 0, 1, 2)[None]


@torch.no_grad()
def video_features(net: torch.jit.ScriptModule, frames: np.ndarray) -> np.ndarray:
    """Features (S, D) of a clip's consecutive 16-frame segments (none when it is shorter)."""
    segments = [frames[s : s + FVD_FRAMES] for s in range(0, len(frames) - FVD_FRAMES + 1, FVD_FRAMES)]
    out = [
        net(_i3d_input(segment), rescale=False, resize=False, return_features=True).double().numpy()
        for segment in segments
    ]
    return np.concatenate(out) if out else np.zeros((0, 0))
