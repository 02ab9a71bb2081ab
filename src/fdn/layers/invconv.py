r"""Invertible 1x1 convolution with a plain weight matrix (paper eq. 8-9, spec section 2.2)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdn.layers.base import InvertibleLayer, autocast_dtype

__all__ = ["InvConv1x1"]


def _full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off: this map is the flow's main path, which bfloat16 would round to 8 bits.

    It is a small share of the flow's work; the Dense Blocks carry the rest in bfloat16.
    """
    if autocast_dtype(x) is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


class InvConv1x1(InvertibleLayer):
    r"""Mixes channels with a learned invertible C x C matrix W, the same at every pixel.

    W is stored plainly (C^2 parameters, which is what matches the paper's 4.38M count) and
    starts as a random rotation. Its log-determinant and inverse are computed in float64 and
    cast back, because a float32 ``slogdet``/``inv`` of a drifting W loses exactness first.

    In eval mode, W is treated as a constant: its inverse and log-determinant are computed
    once and cached, keyed on W's version counter, so an optimiser step, ``copy_`` or
    ``load_state_dict`` drops the cache. In training mode, or whenever gradients for W are
    wanted, they are recomputed on every call so that autograd sees them.

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039

    Arguments:
        channels: the number of channels C.
        generator: the random generator of the rotation initialisation.

    Example:
        >>> import torch
        >>> layer = InvConv1x1(4).double().eval()
        >>> x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
        >>> torch.allclose(layer.inverse(layer(x)[0])[0], x)
        True
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        gaussian = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
        rotation, _ = torch.linalg.qr(gaussian)
        self.weight = nn.Parameter(rotation.float())
        self._cache: tuple[tuple, Tensor, Tensor] | None = None

    def _use_cache(self) -> bool:
        return not self.training and not (torch.is_grad_enabled() and self.weight.requires_grad)

    def _cache_key(self) -> tuple:
        w = self.weight
        return (w._version, w.data_ptr(), w.dtype, w.device)

    def _compute(self) -> tuple[Tensor, Tensor]:
        """Returns ``(W^-1, log|det W|)``, both computed in float64 and cast to W's dtype."""
        w64 = self.weight.double()
        inverse = torch.linalg.inv(w64).to(self.weight.dtype)
        logabsdet = torch.linalg.slogdet(w64).logabsdet.to(self.weight.dtype)
        return inverse, logabsdet

    def _inverse_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        if not self._use_cache():
            return self._compute()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, *self._compute())
        return self._cache[1], self._cache[2]

    def _logabsdet(self) -> Tensor:
        if self._use_cache():
            return self._inverse_and_logabsdet()[1]
        return torch.linalg.slogdet(self.weight.double()).logabsdet.to(self.weight.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        channels = self.weight.shape[0]
        height, width = x.shape[-2:]
        with _full_precision(x):
            y = F.conv2d(x, self.weight.view(channels, channels, 1, 1))
        return y, (height * width * self._logabsdet()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        channels = self.weight.shape[0]
        height, width = y.shape[-2:]
        weight_inverse, logabsdet = self._inverse_and_logabsdet()
        with _full_precision(y):
            x = F.conv2d(y, weight_inverse.view(channels, channels, 1, 1))
        return x, (-height * width * logabsdet).expand(y.shape[0])

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        # Moving the module (device or dtype) invalidates the cached inverse.
        self._cache = None
        return super()._apply(fn, recurse)
