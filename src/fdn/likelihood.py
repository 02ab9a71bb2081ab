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

The out-of-distribution guard compares an image's bits/dim with a threshold calibrated per
bundled model on its training patches and kept in its record in ``models.json``
(``ood_guard``, written by ``benchmarks/ood_calibration.py --write``).
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
    "Likelihood",
    "bits_per_dim_map",
    "encode_for_likelihood",
    "ood_threshold",
]

_LOG2_255 = math.log2(255)


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
    """The guard's bits/dim threshold for ``model``: a bundled model's, as calibrated for its
    weights (``ood_guard`` in its record); None for a bundled model not calibrated since its
    release and for any other model file (no guard: nothing says what is usual for it)."""
    from fdn.pretrained import model_record, pretrained_name

    name = pretrained_name(model)
    guard = model_record(name).get("ood_guard") if name is not None else None
    return guard["threshold_bits_per_dim"] if guard else None


@torch.no_grad()
def encode_for_likelihood(model: FDN, image: Tensor) -> tuple[Tensor, Tensor]:
    """``(z, logdet)`` of a ``(1, C, H, W)`` image padded as :meth:`FDN.denoise` pads it (for
    passes whose denoise does not encode the plain image: the ensemble, strengths above 1)."""
    return model.encode(model.pad(image))
