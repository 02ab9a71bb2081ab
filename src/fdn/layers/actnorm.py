r"""ActNorm: a per-channel affine map with a data-dependent initialisation (paper eq. 6-7)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fdn.layers.base import InvertibleLayer

__all__ = ["ActNorm"]


class ActNorm(InvertibleLayer):
    r"""``y = exp(log_scale) * x + bias`` per channel.

    On its first forward pass in training mode, the layer sets ``log_scale`` and ``bias`` so
    that the batch it sees comes out with zero mean and unit (biased) variance per channel;
    after that they are ordinary trainable parameters. Whether this has happened is kept in
    the ``initialized`` buffer, so it travels with the state dict: a loaded, resumed or
    evaluated model never re-initialises. In eval mode the layer never initialises.

    Storing the log of the scale keeps the scale positive, so the map stays invertible.

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039

    Arguments:
        channels: the number of channels C of the input.
        eps: added to the standard deviation at initialisation.

    Example:
        >>> import torch
        >>> layer = ActNorm(3).train()
        >>> y, _ = layer(torch.randn(8, 3, 4, 4) * 5 + 2)
        >>> bool(layer.initialized), round(y.mean().item(), 4) == 0
        (True, True)
    """

    initialized: Tensor

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        # The buffer's True, once seen, kept on the Python side: reading the buffer is a device
        # sync per layer per step on a GPU, and under torch.compile a break in the graph.
        self._seen_initialized = False

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Sets the parameters from a batch so that it comes out standardised per channel."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, correction=0)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.bias.copy_(-mean / (std + self.eps))
        self.mark_initialized()

    def mark_initialized(self) -> None:
        """Declares the parameters set (by :meth:`initialize`, or by their maker)."""
        self.initialized.fill_(True)
        self._seen_initialized = True

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._seen_initialized = bool(self.initialized)  # read once, as it is loaded

    def _logdet(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        return (height * width * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._seen_initialized:
            if not self.initialized:
                self.initialize(x)
            self._seen_initialized = True
        return x * self.log_scale.exp() + self.bias, self._logdet(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return (y - self.bias) * torch.exp(-self.log_scale), -self._logdet(y)
