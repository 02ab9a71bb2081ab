r"""The x8 self-ensemble: denoise the eight flips and rotations of an image and average them.

A standard test-time boost for CNN denoisers (as in EDSR and InvDN's evaluations); FDN's
paper does not use it, so it is off by default everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["dihedral", "ensemble_name", "self_ensemble", "undo_dihedral"]


def ensemble_name(name: str) -> str:
    """The name of ``name``'s x8 self-ensemble: ``fdn eval``'s column header for it, which
    ``scripts/release_models.py --psnr-ensemble`` reads back.

    Example:
        >>> ensemble_name("fdn-color-blind")
        'fdn-color-blind x8'
    """
    return f"{name} x8"


def dihedral(x: Tensor, k: int) -> Tensor:
    """The k-th (0-7) element of the dihedral group acting on the last two dimensions:
    ``k % 4`` quarter turns, then a left-right flip when ``k >= 4``."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def undo_dihedral(x: Tensor, k: int) -> Tensor:
    """The inverse of :func:`dihedral`."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def self_ensemble(denoise: Callable[[Tensor], Tensor], noisy: Tensor) -> Tensor:
    """The mean of ``undo(denoise(transform(noisy)))`` over the eight transforms.

    Example:
        >>> x = torch.rand(1, 3, 5, 7)
        >>> torch.allclose(self_ensemble(lambda t: t.clamp(0.2, 0.8), x), x.clamp(0.2, 0.8))
        True
    """
    total = torch.zeros_like(noisy, dtype=torch.float64)
    for k in range(8):
        total += undo_dihedral(denoise(dihedral(noisy, k)), k).double()
    return (total / 8).to(noisy.dtype)
