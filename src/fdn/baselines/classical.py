r"""Classical non-blind baselines: BM3D (``bm3d`` package) and non-local means (scikit-image).

Both come from optional packages (``pip install 'fdn-denoise[baselines]'``), imported when a
denoiser is built; without them the constructor raises :class:`MissingExtraError`, whose
message says what to install. Both receive the noisy image as float64, unclipped, like the
networks, with sigma converted to the [0, 1] intensity scale; their outputs are clamped to
[0, 1].

References:
    | Image Denoising by Sparse 3-D Transform-Domain Collaborative Filtering
    | (Dabov et al., IEEE TIP 2007); colour images use CBM3D (``bm3d.bm3d_rgb``, opponent
    | colour space), as in the denoising literature's CBSD68 tables.
    | A Non-Local Algorithm for Image Denoising (Buades et al., CVPR 2005).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from fdn._version import DISTRIBUTION

__all__ = ["BM3D", "MissingExtraError", "NonLocalMeans"]


class MissingExtraError(ImportError):
    """An optional package that a baseline needs is not installed."""


def _require(module: str, package: str, method: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{method} needs the {package!r} package, which is not installed: "
            f"pip install '{DISTRIBUTION}[baselines]' (or pip install {package})"
        ) from None


def _per_image(noisy: Tensor, function: Callable[[np.ndarray], np.ndarray]) -> Tensor:
    """Applies ``function`` to each (H, W, C) float64 image of the batch."""
    outputs = []
    for image in noisy.detach().cpu().to(torch.float64):
        array = image.permute(1, 2, 0).numpy()  # (H, W, C)
        denoised = np.asarray(function(array), dtype=np.float64).reshape(array.shape)
        outputs.append(torch.from_numpy(denoised).permute(2, 0, 1))
    return torch.stack(outputs).to(noisy.dtype).clamp(0, 1)


def _require_sigma(method: str, sigma: float | None) -> float:
    if sigma is None:
        raise ValueError(f"{method} needs the noise level sigma")
    return sigma / 255


class BM3D:
    r"""BM3D for grey images, CBM3D (``bm3d_rgb``) for colour ones, given the true sigma.

    Arguments:
        profile: the ``bm3d`` package's parameter profile, ``"np"`` (its default) or
            ``"refilter"``, ``"vn"``, ``"high"``, ``"deb"``.
        name: the method's name in tables.
    """

    blind = False

    def __init__(self, profile: str = "np", name: str = "BM3D") -> None:
        self._bm3d = _require("bm3d", "bm3d", "BM3D")
        self.profile = profile
        self.name = name

    def supports(self, channels: int, sigma: float | None) -> str | None:
        if channels not in (1, 3):
            return f"handles 1- or 3-channel images, not {channels}-channel ones"
        return None if sigma is not None else "needs the noise level sigma"

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        level = _require_sigma(self.name, sigma)

        def run(array: np.ndarray) -> np.ndarray:
            if array.shape[-1] == 3:
                return self._bm3d.bm3d_rgb(array, level, profile=self.profile)
            if array.shape[-1] == 1:
                return self._bm3d.bm3d(array[..., 0], level, profile=self.profile)
            raise ValueError(f"BM3D handles 1 or 3 channels, got {array.shape[-1]}")

        return _per_image(noisy, run)


class NonLocalMeans:
    r"""scikit-image's fast non-local means, given the true sigma.

    The parameters are scikit-image's own recommendation for the fast mode with a known
    sigma: 5x5 patches, a 13x13 search window, and ``h = 0.6 sigma``.

    Arguments:
        h_factor: filter strength ``h`` as a multiple of sigma.
        patch_size: side of the compared patches.
        patch_distance: search radius.
        name: the method's name in tables.
    """

    blind = False

    def __init__(
        self,
        h_factor: float = 0.6,
        patch_size: int = 5,
        patch_distance: int = 6,
        name: str = "NLM",
    ) -> None:
        self._restoration = _require("skimage.restoration", "scikit-image", "NLM")
        self.h_factor = h_factor
        self.patch_size = patch_size
        self.patch_distance = patch_distance
        self.name = name

    def supports(self, channels: int, sigma: float | None) -> str | None:
        return None if sigma is not None else "needs the noise level sigma"

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        level = _require_sigma(self.name, sigma)

        def run(array: np.ndarray) -> np.ndarray:
            return self._restoration.denoise_nl_means(
                array,
                h=self.h_factor * level,
                sigma=level,
                fast_mode=True,
                patch_size=self.patch_size,
                patch_distance=self.patch_distance,
                channel_axis=-1,
            )

        return _per_image(noisy, run)
