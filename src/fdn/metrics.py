r"""PSNR and SSIM, on one declared convention (FDN_SPEC.md section 7.3).

Both images are clamped to [0, 1], scaled to 0-255 and rounded to whole numbers (what saving
them as 8-bit files would do), then compared in float64:

* PSNR is ``20 log10(255 / sqrt(MSE))`` over all pixels and channels of one image.
* SSIM is the Gaussian-window SSIM of Wang et al. (11x11 window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, L = 255), averaged over the window positions that lie wholly inside the image
  (no padding) and over the channels.

This is what ``skimage.metrics.peak_signal_noise_ratio(clean, denoised, data_range=255)`` and
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255, channel_axis=...)`` give on the rounded 8-bit images; the tests check it.
Each function returns one value per image of the batch; a mean over a data set is the mean of
these per-image values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SSIM_WINDOW", "PairedDifference", "paired_difference", "psnr", "quantize", "ssim"]

SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def quantize(image: Tensor) -> Tensor:
    """Clamps to [0, 1] and rounds to the 8-bit grid: float64 values in {0, 1, ..., 255}."""
    return torch.round(image.detach().to(torch.float64).clamp(0, 1) * 255)


def _check_pair(denoised: Tensor, clean: Tensor) -> None:
    if denoised.shape != clean.shape or denoised.dim() != 4:
        raise ValueError(
            "expected two (B, C, H, W) batches of the same shape, got "
            f"{tuple(denoised.shape)} and {tuple(clean.shape)}"
        )


def psnr(denoised: Tensor, clean: Tensor) -> Tensor:
    """Per-image PSNR in dB, shape ``(B,)``; ``inf`` where the rounded images are equal.

    Example:
        >>> clean = torch.zeros(1, 1, 4, 4)
        >>> round(psnr(clean + 1 / 255, clean).item(), 2)
        48.13
    """
    _check_pair(denoised, clean)
    mse = (quantize(denoised) - quantize(clean)).pow(2).flatten(1).mean(dim=1)
    return 20 * torch.log10(255 / mse.sqrt())


def _gaussian_window(device: torch.device) -> Tensor:
    radius = SSIM_WINDOW // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    return kernel / kernel.sum()


def ssim(denoised: Tensor, clean: Tensor) -> Tensor:
    """Per-image SSIM, shape ``(B,)``; images must be at least 11x11.

    Example:
        >>> clean = torch.rand(2, 3, 16, 16)
        >>> ssim(clean, clean)
        tensor([1., 1.], dtype=torch.float64)
    """
    _check_pair(denoised, clean)
    height, width = clean.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {height}x{width}")
    batch, channels = clean.shape[:2]
    # Every channel is filtered on its own: fold the channels into the batch.
    x = quantize(denoised).reshape(batch * channels, 1, height, width)
    y = quantize(clean).reshape(batch * channels, 1, height, width)
    kernel = _gaussian_window(x.device)

    def blur(image: Tensor) -> Tensor:
        # Separable Gaussian, "valid" positions only: (N, 1, H - 10, W - 10).
        image = F.conv2d(image, kernel.view(1, 1, -1, 1))
        return F.conv2d(image, kernel.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / (
        (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    )
    return ssim_map.reshape(batch, -1).mean(dim=1)


@dataclass(frozen=True)
class PairedDifference:
    """How two models' per-image scores on the same noisy images differ: the mean difference,
    its standard error (how far the mean could move on other images like these; NaN for fewer
    than two images), on how many images the first scores higher, and of how many."""

    mean: float
    standard_error: float
    better: int
    count: int

    def __str__(self) -> str:
        return (
            f"{self.mean:+.4f}, standard error {self.standard_error:.4f} over {self.count} "
            f"images; better on {self.better}"
        )


def paired_difference(scores: Sequence[float], baselines: Sequence[float]) -> PairedDifference:
    """``scores - baselines`` image by image (both models denoised the same noisy images), so
    the images' own spread cancels: a held-back gain of a few standard errors is one that
    reached the test sets in the bundled models' releases (docs/training.md).

    Example:
        >>> str(paired_difference([30.0, 31.0, 32.5], [30.0, 30.5, 32.0]))
        '+0.3333, standard error 0.1667 over 3 images; better on 2'
    """
    if len(scores) != len(baselines):
        raise ValueError(f"{len(scores)} scores against {len(baselines)} baselines")
    differences = np.subtract(scores, baselines, dtype=np.float64)
    count = len(differences)
    error = float(np.std(differences, ddof=1) / np.sqrt(count)) if count > 1 else float("nan")
    mean = float(differences.mean()) if count else float("nan")
    return PairedDifference(mean, error, int((differences > 0).sum()), count)
