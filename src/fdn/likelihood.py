r"""What only a flow can say: how likely an image is, per block, and whether it is unlike
anything the model was trained on.

FDN's encode gives the exact density of its input y: ``-log p(y) = 0.5 |z|^2 +
(D / 2) log(2 pi) - logdet`` (the training NLL, :func:`fdn.losses.nll_loss`). Here it is in
bits per dimension on the 0-255 scale: the density of y in [0, 1] units plus log2(255), as
Glow reports 8-bit images (:func:`fdn.losses.bits_per_dim` with ``dequantized``).

The latent z sits at 1 / 2^num_blocks of the image's size (4 for the bundled models), and
each of its positions holds the ``latent_channels`` values of one 4 x 4 block of pixels, so
the ``0.5 |z|^2`` term is localised per block. The log-det is a sum over all layers that
cannot be attributed to positions (the 1x1 convolutions' share is uniform, the couplings'
is not recorded per position), so it is spread evenly over the blocks. The mean of the map is
the image's bits/dim exactly.

The out-of-distribution guard compares an image's bits/dim with :data:`OOD_THRESHOLDS`,
calibrated per bundled model on training patches (``benchmarks/ood_calibration.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fdn.losses import _LOG_2PI  # the training NLL's constant, so the two agree
from fdn.model import FDN

__all__ = [
    "OOD_THRESHOLDS",
    "Likelihood",
    "bits_per_dim_map",
    "encode_for_likelihood",
    "ood_threshold",
]

_LOG2_255 = math.log2(255)

# The guard's threshold per bundled model, in bits/dim, with the SHA-256 of the weights it was
# calibrated for (a re-released model is not guarded until it is recalibrated). Measured by
#   OMP_NUM_THREADS=1 nice python benchmarks/ood_calibration.py \
#       --data ../shared/data/train/CBSD432 ../shared/data/train/Train400
# on 4,000 random training patches per model, drawn as its last stage drew them (96 x 96,
# flips and rotations, AWGN of sigma uniform in [0, 55]; each patch both in float as in
# training and rounded and clipped to 8 bits as files are; seed 0): the 99.9th percentile of
# the patches' bits/dim plus a margin of 2 bits/dim. Colour (release of 2026-11-26 at
# held-back 30.332): median 6.99, 99.9th percentile 8.08, max 8.37; grey (28.265): 7.14,
# 8.25, 8.41. A 1-pixel checkerboard scores 19308.2 (colour; 609.0, 19.2, 20.5, 303.8, 469.4
# and 803.7 under earlier releases) and 19334.3 (grey; 20548.8, 30343.7, 24990.1, 22044.8,
# 10603.9, 6501.0 and 2113.3 under the releases at 28.248, 28.224, 28.204, 28.179, 28.123,
# 28.069 and 27.976).
OOD_THRESHOLDS: dict[str, tuple[str, float]] = {
    "fdn-color-blind": (
        "34beb20f70f5fadd6b774b108381df0991d7332b11d8ab5ba890c779db4a15a7",
        10.08,
    ),
    "fdn-grey-blind": (
        "1095a1b8c9fd562ffa6cad76550db196152100420d42f25ea4588d3067cdbad1",
        10.25,
    ),
    # 4,000 patches of faces/celeba/train as it trained (64 x 64, no augmentation, sigma 50):
    # median 7.76, 99.9th percentile 7.95, max 8.09; checkerboard 27.0. A model of sigma-50
    # faces finds a clean face improbable: it warns on 990 of the 1,000 test faces at sigma 0,
    # 175 at 15, 18 at 25, 2 at 50, which is the warning a user of this model needs.
    "fdn-faces-sigma50": (
        "2ac9fd615db73df8b018753126a0f66f6b7775b484888c5ce22465eb79f1d703",
        9.95,
    ),
}


def bits_per_dim_map(z: Tensor, logdet: Tensor) -> Tensor:
    """Bits per dimension (0-255 scale) of each latent position, ``(B, h, w)`` float64, from
    a batch's ``(z, logdet)`` (``z`` of shape ``(B, C, h, w)``). Each position is one block of
    ``2^num_blocks`` pixels square; the log-det is spread evenly over the positions, so the
    map's mean is each image's bits/dim.

    Example:
        >>> z = torch.zeros(1, 48, 2, 2)
        >>> round(float(bits_per_dim_map(z, torch.zeros(1)).mean()), 3)  # N(0, I) at its mode
        9.32
    """
    z = z.detach().double()
    channels, height, width = z.shape[1:]
    nats = 0.5 * z.pow(2).sum(1) + 0.5 * channels * _LOG_2PI
    nats = nats - logdet.detach().double()[:, None, None] / (height * width)
    return nats / (channels * math.log(2)) + _LOG2_255


@dataclass
class Likelihood:
    """Collects the bits/dim maps of one image's passes through the flow (its tiles, or its
    channels through a grey model) during a denoise.

    ``worst`` is the highest bits/dim of any one pass: the guard's statistic, so that a tile
    unlike the training images is not averaged away by the rest of a big image.
    """

    block: int = 4
    pieces: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    worst: float = -math.inf

    def add(self, z: Tensor, logdet: Tensor, top: int = 0, left: int = 0, block: int = 4) -> None:
        """Adds one pass: its ``(z, logdet)`` (a batch of one), at pixel ``top, left`` (multiples
        of ``block``, the pixels per latent position)."""
        values = bits_per_dim_map(z, logdet)[0].cpu().numpy()
        self.block = block
        self.pieces.append((top // block, left // block, values))
        self.worst = max(self.worst, float(values.mean()))

    def block_map(self, height: int, width: int) -> np.ndarray:
        """The image's map, ``(ceil(height / block), ceil(width / block))``: each block's
        bits/dim, averaged over the passes that saw it (overlapping tiles, channels)."""
        rows, cols = -(-height // self.block), -(-width // self.block)
        total, count = np.zeros((rows, cols)), np.zeros((rows, cols))
        for top, left, values in self.pieces:
            piece = values[: rows - top, : cols - left]
            total[top : top + piece.shape[0], left : left + piece.shape[1]] += piece
            count[top : top + piece.shape[0], left : left + piece.shape[1]] += 1
        return total / np.maximum(count, 1)


def ood_threshold(model: FDN) -> float | None:
    """The guard's bits/dim threshold for ``model``: calibrated for the bundled models as
    released (:data:`OOD_THRESHOLDS`); None for any other model (no guard)."""
    from fdn.pretrained import model_record, pretrained_name

    name = pretrained_name(model)
    if name is None or name not in OOD_THRESHOLDS:
        return None
    sha256, threshold = OOD_THRESHOLDS[name]
    return threshold if model_record(name)["sha256"] == sha256 else None


@torch.no_grad()
def encode_for_likelihood(model: FDN, image: Tensor) -> tuple[Tensor, Tensor]:
    """``(z, logdet)`` of a ``(1, C, H, W)`` image padded as :meth:`FDN.denoise` pads it (for
    passes whose denoise does not encode the plain image: the ensemble, strengths above 1)."""
    return model.encode(model.pad(image))
