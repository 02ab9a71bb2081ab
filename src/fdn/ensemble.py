r"""The self-ensemble: denoise flips and rotations of an image and average them.

A standard test-time boost for CNN denoisers (as in EDSR and InvDN's evaluations); FDN's
paper does not use it, so it is off by default everywhere. The x8 ensemble takes all eight
flips and rotations; the smaller ones take the first two or four of :func:`dihedral`'s order
(the image and its quarter turn; the four quarter turns), most of the x8 gain for a quarter
or half of its time. Measured on the colour model's held-back images (``fdn-color-blind``,
``benchmarks/ensemble_sizes.py``; ``docs/evaluation.md``): x2 +0.10 dB, x4 +0.15, x8
+0.17 over one pass, and each of the other pairs and fours tried scored lower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdn.choices import ensemble_size

__all__ = ["dihedral", "ensemble_name", "self_ensemble", "undo_dihedral"]


def ensemble_name(name: str, size: int = 8) -> str:
    """The name of ``name``'s self-ensemble of ``size`` transforms: ``fdn eval``'s column
    header for it, which ``scripts/release_models.py --psnr-ensemble`` reads back (x8).

    Example:
        >>> ensemble_name("fdn-color-blind"), ensemble_name("bm3d", 4)
        ('fdn-color-blind x8', 'bm3d x4')
    """
    return f"{name} x{size}"


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


def self_ensemble(denoise: Callable[[Tensor], Tensor], noisy: Tensor, size: int = 8) -> Tensor:
    """The mean of ``undo(denoise(transform(noisy)))`` over the first ``size`` (2, 4 or 8) of
    :func:`dihedral`'s transforms.

    Example:
        >>> x = torch.rand(1, 3, 5, 7)
        >>> torch.allclose(self_ensemble(lambda t: t.clamp(0.2, 0.8), x), x.clamp(0.2, 0.8))
        True
    """
    size = ensemble_size(size)
    total = torch.zeros_like(noisy, dtype=torch.float64)
    for k in range(size):
        total += undo_dihedral(denoise(dihedral(noisy, k)), k).double()
    return (total / size).to(noisy.dtype)
