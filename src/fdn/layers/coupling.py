r"""Affine coupling in the paper's three-subnet form (spec section 2.3)."""

from __future__ import annotations

import torch
from torch import Tensor

from fdn.layers.base import InvertibleLayer
from fdn.layers.dense import DenseBlock

__all__ = ["AffineCoupling"]


class AffineCoupling(InvertibleLayer):
    r"""Updates both halves of the channels, each conditioned on the other.

    With the input split as ``h_a`` (the first ``split`` channels) and ``h_b`` (the rest)::

        h_a' = h_a + g1(h_b)
        s    = clamp * (2 * sigmoid(g2(h_a')) - 1)
        h_b' = exp(s) * h_b + g3(h_a')

    and ``logdet = sum(s)``. The bounded log-scale (IRN's clamp, alpha = 1) keeps every
    multiplier in ``(e^-1, e)``, which is what keeps training free of overflow. All three
    subnets are :class:`DenseBlock` s whose last convolution starts at zero, so a new coupling
    is the identity.

    References:
        | Invertible Image Rescaling (Xiao et al., 2020), https://arxiv.org/abs/2005.05650

    Arguments:
        channels: the number of channels C of the input.
        split: the channels in ``h_a``; FDN uses the image's channel count (3 or 1).
        hidden_channels: the growth ``gc`` of the Dense Blocks.
        clamp: the bound alpha of the log-scale.

    Example:
        >>> import torch
        >>> layer = AffineCoupling(12, split=3)
        >>> x = torch.randn(1, 12, 4, 4)
        >>> y, logdet = layer(x)
        >>> torch.equal(y, x), logdet.tolist()
        (True, [0.0])
    """

    def __init__(
        self, channels: int, split: int, hidden_channels: int = 32, clamp: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 < split < channels:
            raise ValueError(f"split must be in (0, {channels}), got {split}")
        self.split = split
        self.clamp = clamp
        rest = channels - split
        self.g1 = DenseBlock(rest, split, hidden_channels)
        self.g2 = DenseBlock(split, rest, hidden_channels)
        self.g3 = DenseBlock(split, rest, hidden_channels)

    def _log_scale(self, h_a: Tensor) -> Tensor:
        # Under bfloat16 autocast the subnet's output is bfloat16; s and its log-det
        # are the flow's own arithmetic and stay float32.
        return self.clamp * (2 * torch.sigmoid(self.g2(h_a).to(h_a.dtype)) - 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h_a, h_b = x[:, : self.split], x[:, self.split :]
        h_a = h_a + self.g1(h_b)
        s = self._log_scale(h_a)
        h_b = torch.exp(s) * h_b + self.g3(h_a)
        return torch.cat([h_a, h_b], dim=1), s.sum(dim=(1, 2, 3))

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        h_a, h_b = y[:, : self.split], y[:, self.split :]
        s = self._log_scale(h_a)
        h_b = (h_b - self.g3(h_a)) * torch.exp(-s)
        h_a = h_a - self.g1(h_b)
        return torch.cat([h_a, h_b], dim=1), -s.sum(dim=(1, 2, 3))
