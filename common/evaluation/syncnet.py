"""SyncNet (Chung & Zisserman 2016) and the LSE-C / LSE-D lip-sync scores Wav2Lip reports with it.

The network is syncnet_python's ``S`` (same layers, same state-dict keys), so its released weights
``syncnet_v2.model`` load strictly; the weights do not ship here (the user supplies the file). Scoring
follows syncnet_python's ``SyncNetInstance.evaluate``:

- the video at 25 fps (resampled when it is not), 224x224 face crops in BGR order, pixel values 0-255;
  audio at 16 kHz as 16-bit sample values, 13 MFCCs every 10 ms (``python_speech_features.mfcc`` defaults);
- for every 5-frame window (and its 20 MFCC steps) a lip and an audio embedding; distances between each lip
  embedding and the audio embeddings up to 15 frames either side;
- the mean distance per offset over the clip; LSE-D = its minimum, LSE-C = median minus minimum, and the
  offset of the minimum (positive: the video lags the audio).

How the crops differ from syncnet_python's: it tracks faces with the S3FD detector and crops around the
detector's box (box half-size ``s``, median-filtered over 13 frames; rows from ``cy - s`` to
``cy + 1.8 s``, columns ``cx - 1.4 s`` to ``cx + 1.4 s``, padding 110). Here the box is the MediaPipe
landmarks' extent (:mod:`.faces`), smoothed and cropped the same way. MediaPipe's mesh box is slightly
smaller than S3FD's (it stops at the hairline and the jaw), so absolute LSE values can differ a little
from published ones; the same crops are used for every system in a table.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from common.errors import UserError
from common.evaluation.scores import Scores

FPS = 25.0
VSHIFT = 15
CROP_SCALE = 0.4
LSE_METRICS = ("lse_c", "lse_d")


class SyncNet(nn.Module):
    """syncnet_python's ``S``: an audio tower on 13x20 MFCC patches and a lip tower on 5 RGB frames of
    224x224, each ending in a 1024-d embedding."""

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()

        def conv2(cin, cout, kernel, pool=None, stride=(1, 1), padding=(1, 1), inplace=True):
            layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm2d(cout)]
            layers.append(nn.ReLU(inplace=inplace))
            if pool is not None:
                layers.append(nn.MaxPool2d(*pool))
            return layers

        def conv3(cin, cout, kernel, stride=1, padding=0, pool=None):
            layers = [nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout)]
            layers.append(nn.ReLU(inplace=True))
            if pool is not None:
                layers.append(nn.MaxPool3d(*pool))
            return layers

        self.netcnnaud = nn.Sequential(
            *conv2(1, 64, 3, pool=((1, 1), (1, 1))),
            *conv2(64, 192, 3, pool=((3, 3), (1, 2))),
            *conv2(192, 384, 3),
            *conv2(384, 256, 3),
            *conv2(256, 256, 3, pool=((3, 3), (2, 2))),
            *conv2(256, 512, (5, 4), padding=(0, 0), inplace=False),
        )
        self.netfcaud = self._head(embed_dim)
        self.netfclip = self._head(embed_dim)
        self.netcnnlip = nn.Sequential(
            *conv3(3, 96, (5, 7, 7), stride=(1, 2, 2), pool=((1, 3, 3), (1, 2, 2))),
            *conv3(
                96,
                256,
                (1, 5, 5),
                stride=(1, 2, 2),
                padding=(0, 1, 1),
                pool=((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            ),
            *conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *conv3(256, 256, (1, 3, 3), padding=(0, 1, 1), pool=((1, 3, 3), (1, 2, 2))),
            *conv3(256, 512, (1, 6, 6)),
        )

    @staticmethod
    def _head(embed_dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC patches -> (N, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR frames in 0-255 -> (N, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    @classmethod
    def from_file(cls, path: str | Path) -> SyncNet:
        """The network with weights from syncnet_python's ``syncnet_v2.model`` (strict: every key must match)."""
        from common.weights import format_keys

        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(
                f"syncnet_weights={path}: no such file. LSE-C/D need SyncNet's released weights: download "
                "syncnet_v2.model as syncnet_python's download_model.sh does and pass its path"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file is the user's to fix
            raise UserError(
                f"{path}: not a readable SyncNet weight file ({type(err).__name__}); download it again"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{path}: not a SyncNet state dict (expected a mapping of names to tensors)")
        model = cls()
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong:
            raise UserError(
                f"{path} does not match SyncNet: missing {format_keys(missing)}, unexpected "
                f"{format_keys(unexpected)}, wrong shape {format_keys(wrong)}; give syncnet_v2.model"
            )
        model.load_state_dict(state, strict=True)
        return model.eval()


def face_crops(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, 224, 224, 3) BGR crops around ``boxes`` (T, 4: x0, y0, x1, y1; NaN rows are filled from their
    neighbours) as syncnet_python crops around S3FD's (see the module docstring)."""
    from scipy.signal import medfilt

    boxes = np.asarray(boxes, dtype=np.float64).copy()
    t = np.arange(len(boxes))
    ok = np.all(np.isfinite(boxes), axis=1)
    for c in range(4):
        boxes[:, c] = np.interp(t, t[ok], boxes[ok, c])
    kernel = min(13, len(boxes) - (1 - len(boxes) % 2))  # odd, at most the length
    size = medfilt(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2, kernel)
    cy = medfilt((boxes[:, 1] + boxes[:, 3]) / 2, kernel)
    cx = medfilt((boxes[:, 0] + boxes[:, 2]) / 2, kernel)
    crops = []
    for frame, s, y, x in zip(frames, size, cy, cx):
        pad = int(s * (1 + 2 * CROP_SCALE))
        padded = np.pad(frame[..., ::-1], ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        y, x = y + pad, x + pad
        face = padded[
            int(y - s) : int(y + s * (1 + 2 * CROP_SCALE)),
            int(x - s * (1 + CROP_SCALE)) : int(x + s * (1 + CROP_SCALE)),
        ]
        crops.append(cv2.resize(face, (224, 224)))
    return np.stack(crops)


def mfcc(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(13, N) MFCCs every 10 ms of 16 kHz float audio, computed on 16-bit sample values as syncnet_python
    reads its wav."""
    try:
        import python_speech_features
    except ImportError:
        raise UserError("LSE-C/D need python_speech_features: pip install 'talking-portrait[eval]'") from None
    samples = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    return python_speech_features.mfcc(samples, sample_rate).T


def offset_scores(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT) -> tuple[int, float, float]:
    """(offset, confidence LSE-C, minimum distance LSE-D) from per-window embeddings (T, D) of each tower."""
    padded = torch.nn.functional.pad(aud, (0, 0, vshift, vshift))
    window = 2 * vshift + 1
    dists = torch.stack(
        [
            torch.nn.functional.pairwise_distance(lip[[i]].repeat(window, 1), padded[i : i + window])
            for i in range(len(lip))
        ],
        dim=1,
    )
    mean = dists.mean(dim=1)
    low, where = torch.min(mean, dim=0)
    return int(vshift - where), float(torch.median(mean) - low), float(low)


@torch.no_grad()
def lse_scores(
    model: SyncNet, frames: np.ndarray, boxes: np.ndarray, audio: np.ndarray | None, batch: int = 20
) -> Scores:
    """LSE-C / LSE-D of 25 fps ``frames`` (T, H, W, 3) RGB with face ``boxes`` and 16 kHz ``audio``."""
    scores = Scores()
    if audio is None:
        scores.skip(LSE_METRICS, "the video has no audio track and no audio file beside it")
        return scores
    if not np.all(np.isfinite(boxes), axis=1).any():
        scores.skip(LSE_METRICS, "no frame shows a face")
        return scores
    features = mfcc(audio)
    length = min(len(frames), features.shape[1] // 4)
    last = length - 5
    if last < 1:
        scores.skip(
            LSE_METRICS, f"shorter than SyncNet's 5-frame window plus one ({length} frames at 25 fps)"
        )
        return scores
    crops = torch.from_numpy(face_crops(frames[:length], boxes[:length])).float().permute(3, 0, 1, 2)
    cc = torch.from_numpy(features).float()
    lips, auds = [], []
    for start in range(0, last, batch):
        index = range(start, min(last, start + batch))
        lips.append(model.forward_lip(torch.stack([crops[:, v : v + 5] for v in index])))
        auds.append(model.forward_aud(torch.stack([cc[None, :, 4 * v : 4 * v + 20] for v in index])))
    _, confidence, distance = offset_scores(torch.cat(lips), torch.cat(auds))
    scores.set("lse_c", confidence)
    scores.set("lse_d", distance)
    return scores
