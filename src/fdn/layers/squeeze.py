r"""Checkerboard Squeeze: space-to-depth by a factor of 2 (paper Fig. 4, spec section 1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fdn.layers.base import InvertibleLayer

__all__ = ["Squeeze"]


class Squeeze(InvertibleLayer):
    r"""Moves each 2x2 sub-lattice of the image into channels, halving height and width.

    ``out[b, 4c + 2i + j, h, w] = in[b, c, 2h + i, 2w + j]`` for ``i, j`` in ``{0, 1}``: the
    pixel-unshuffle order. The map is a permutation of the input, so its log-det is 0.

    References:
        | Disentangling Noise from Images: A Flow-Based Image Denoising Neural Network
        | (Liu et al., Sensors 2022), https://doi.org/10.3390/s22249844

    Example:
        >>> import torch
        >>> y, logdet = Squeeze()(torch.arange(16.0).view(1, 1, 4, 4))
        >>> y[0, :, 0, 0].tolist(), logdet.tolist()
        ([0.0, 1.0, 4.0, 5.0], [0.0])
    """

    factor = 2

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"Squeeze needs even height and width, got {tuple(x.shape[-2:])}")
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return F.pixel_shuffle(y, self.factor), y.new_zeros(y.shape[0])
