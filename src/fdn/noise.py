r"""Repeatable synthetic noise for test sets: one fixed seed per image and noise level.

The seed is derived from a base seed, the image's name and sigma alone, so every method sees
the same noisy image, a rerun gives the same numbers, and adding or removing images from a
folder does not change the noise of the others. The noisy image is float and unclipped
(FDN_SPEC.md section 7.2): values may leave [0, 1].
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["add_gaussian_noise", "noise_seed"]


def noise_seed(image_name: str, sigma: float, seed: int = 0) -> int:
    """A 63-bit seed for ``image_name`` at noise level ``sigma`` (0-255 scale).

    Example:
        >>> noise_seed("test001.png", 25) == noise_seed("test001.png", 25.0)
        True
        >>> noise_seed("test001.png", 25) == noise_seed("test001.png", 50)
        False
    """
    key = f"{seed}/{image_name}/{float(sigma)!r}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def add_gaussian_noise(clean: Tensor, sigma: float, seed: int) -> Tensor:
    """Returns ``clean + sigma / 255 * n``, ``n ~ N(0, I)`` drawn on the CPU from ``seed``.

    Arguments:
        clean: a (B, C, H, W) batch in [0, 1].
        sigma: the noise standard deviation on the 0-255 scale.
        seed: seeds the noise; the same seed and shape give the same noise on any device.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
    return clean + (sigma / 255) * noise.to(device=clean.device, dtype=clean.dtype)
