r"""The Dense Block subnet of the affine couplings (spec section 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fdn.layers.base import autocast_dtype

__all__ = ["DenseBlock"]


class DenseBlock(nn.Module):
    r"""Five densely connected 3x3 convolutions, as IRN's ``DenseBlock``.

    Convolution k sees the concatenation of the input and the outputs of convolutions
    1 .. k-1. The first four have ``growth`` output channels and a LeakyReLU(0.2); the last
    maps to ``out_channels`` with no activation. The first four start Xavier-normal scaled by
    0.1, and the last starts at zero, so the block outputs 0 at initialisation and every
    coupling that uses it starts as the identity.

    References:
        | Invertible Image Rescaling (Xiao et al., 2020), https://arxiv.org/abs/2005.05650

    Arguments:
        in_channels: input channels.
        out_channels: output channels.
        growth: channels added by each of the first four convolutions (``gc``, 32 in FDN).

    Example:
        >>> import torch
        >>> block = DenseBlock(3, 9)
        >>> block(torch.randn(1, 3, 8, 8)).abs().max().item()
        0.0
    """

    def __init__(self, in_channels: int, out_channels: int, growth: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels + k * growth, growth, 3, padding=1) for k in range(4)
        )
        self.last = nn.Conv2d(in_channels + 4 * growth, out_channels, 3, padding=1)
        self.activation = nn.LeakyReLU(0.2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: Tensor) -> Tensor:
        dtype = autocast_dtype(x)
        if dtype is not None:
            # Concatenate in the autocast type, not float32 (cat would promote the activations).
            x = x.to(dtype)
        features = [x]
        for conv in self.convs:
            features.append(self.activation(conv(torch.cat(features, dim=1))))
        return self.last(torch.cat(features, dim=1))
