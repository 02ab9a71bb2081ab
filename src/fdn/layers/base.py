r"""The contract shared by every invertible layer, and their composition."""

from __future__ import annotations

import typing

import torch
from torch import Tensor, nn

__all__ = ["InvertibleLayer", "SequentialFlow", "autocast_dtype"]


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast gives ``x``'s convolutions now, or None when it is off.

    Under bfloat16 autocast (``--precision bf16``, ``training.precision``) only the Dense
    Blocks compute in bfloat16; the flow's own path (ActNorm, the 1x1 convolution, the
    couplings' arithmetic) and its log-dets stay float32. The meta device (FLOP counting)
    has no autocast.
    """
    device = x.device.type
    if device == "meta" or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


class InvertibleLayer(nn.Module):
    r"""A bijection with a tractable log-determinant.

    Every layer implements two methods with one return type:

    - ``forward(x) -> (y, logdet)``: the encoding direction, with
      ``logdet = log|det dy/dx|`` per sample;
    - ``inverse(y) -> (x, logdet)``: the decoding direction, with
      ``logdet = log|det dx/dy|``, the negative of the forward's.

    ``logdet`` is always a ``(B,)`` tensor in nats, never ``None`` or a Python float, so a
    composition only ever sums tensors.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class SequentialFlow(InvertibleLayer):
    r"""Invertible layers applied in order; the inverse runs them in reverse order.

    Arguments:
        layers: the layers, in the encoding direction.

    Example:
        >>> import torch
        >>> from fdn.layers import ActNorm, Squeeze
        >>> flow = SequentialFlow(Squeeze(), ActNorm(12))
        >>> z, logdet = flow(torch.rand(2, 3, 8, 8))
        >>> z.shape, logdet.shape
        (torch.Size([2, 12, 4, 4]), torch.Size([2]))
    """

    def __init__(self, *layers: InvertibleLayer) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        logdet = y.new_zeros(y.shape[0])
        layers = typing.cast("list[InvertibleLayer]", list(self.layers))
        for layer in reversed(layers):
            y, layer_logdet = layer.inverse(y)
            logdet = logdet + layer_logdet
        return y, logdet
