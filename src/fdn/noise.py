r"""Synthetic noise as small objects, and repeatable noise for test sets.

A noise model is a frozen dataclass derived from :class:`Noise`: :class:`AWGN` at a fixed
sigma, or :class:`AWGNRange` drawing one sigma per sample (blind training). Each has a
``describe()`` (``"awgn-25"``, ``"awgn-0-55"``) that names it in results, and a ``sample``
that adds it to a clean image; ``sample`` is the one place where the paper's 0-255 scale is
converted. Training, validation, ``fdn eval`` and ``fdn compare`` all go through it. Another
model (Poisson-Gaussian, say) is one more subclass with its own ``describe`` and ``_add``.

``sample`` takes either a ``numpy.random.Generator`` (training: the patch's generator, which
also decided its crop) or an integer seed (test sets: the noise is drawn on the CPU with a
``torch.Generator``, so it is the same on any device). For test sets the seed comes from
:meth:`Noise.seed_for`, derived from a base seed, the image's name and the noise alone, so
every method sees the same noisy image, a rerun gives the same numbers, and adding or
removing images from a folder does not change the noise of the others. The noisy image is
float and unclipped (FDN_SPEC.md section 7.2): values may leave [0, 1].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from fdn.config import DataConfig, ValidationConfig

__all__ = [
    "AWGN",
    "AWGNRange",
    "Noise",
    "add_gaussian_noise",
    "noise_from_config",
    "noise_seed",
    "validation_noises",
]

Image = TypeVar("Image", Tensor, np.ndarray)
RngOrSeed = np.random.Generator | int


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)


def noise_seed(image_name: str, sigma: float, seed: int = 0) -> int:
    """A 63-bit seed for ``image_name`` at noise level ``sigma`` (0-255 scale).

    Example:
        >>> noise_seed("test001.png", 25) == noise_seed("test001.png", 25.0)
        True
        >>> noise_seed("test001.png", 25) == noise_seed("test001.png", 50)
        False
    """
    return _seed(f"{seed}/{image_name}/{float(sigma)!r}")


def _standard_normal(shape: tuple[int, ...], rng: RngOrSeed) -> Tensor:
    """``N(0, I)`` float32 on the CPU: from the numpy generator, or a torch one seeded."""
    if isinstance(rng, np.random.Generator):
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    generator = torch.Generator().manual_seed(int(rng))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class Noise:
    """A synthetic noise model; subclasses are frozen dataclasses.

    A subclass implements :meth:`describe` and :meth:`_add`; :meth:`seed_for` may be
    overridden where older seeds must be kept (as :class:`AWGN` does).
    """

    def describe(self) -> str:
        """A short stable name, such as ``"awgn-25"``: what results are keyed by."""
        raise NotImplementedError

    def sample(self, clean: Image, rng: RngOrSeed) -> Image:
        """``clean`` (in [0, 1]) with this noise added, of the same type, shape and device.

        Arguments:
            clean: a tensor (on any device) or a numpy array, any shape.
            rng: a ``numpy.random.Generator`` (draws advance it) or an integer seed.
        """
        if isinstance(clean, np.ndarray):
            return self._add(torch.from_numpy(clean), rng).numpy()
        return self._add(clean, rng)

    def _add(self, clean: Tensor, rng: RngOrSeed) -> Tensor:
        raise NotImplementedError

    def seed_for(self, image_name: str, seed: int = 0) -> int:
        """The seed of ``image_name``'s noise in a test set with base seed ``seed``."""
        return _seed(f"{seed}/{image_name}/{self.describe()}")


def _with_gaussian(clean: Tensor, sigma: float, rng: RngOrSeed) -> Tensor:
    # The only conversion from the paper's 0-255 scale.
    noise = _standard_normal(tuple(clean.shape), rng)
    return clean + (float(sigma) / 255) * noise.to(device=clean.device, dtype=clean.dtype)


@dataclass(frozen=True)
class AWGN(Noise):
    """Additive white Gaussian noise of standard deviation ``sigma`` (0-255 scale)."""

    sigma: float

    def describe(self) -> str:
        return f"awgn-{self.sigma:g}"

    def _add(self, clean: Tensor, rng: RngOrSeed) -> Tensor:
        return _with_gaussian(clean, self.sigma, rng)

    def seed_for(self, image_name: str, seed: int = 0) -> int:
        # The seeds test sets have always had (fdn eval tables depend on them).
        return noise_seed(image_name, self.sigma, seed)


@dataclass(frozen=True)
class AWGNRange(Noise):
    """AWGN whose sigma is drawn uniformly from ``[low, high]`` (0-255) for each sample.

    With a numpy generator the sigma is drawn from it, before the noise; with an integer
    seed, from ``numpy.random.default_rng(seed)``.
    """

    low: float
    high: float

    def describe(self) -> str:
        return f"awgn-{self.low:g}-{self.high:g}"

    def draw_sigma(self, rng: RngOrSeed) -> float:
        """One sigma from the range."""
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return float(generator.uniform(self.low, self.high))

    def _add(self, clean: Tensor, rng: RngOrSeed) -> Tensor:
        return _with_gaussian(clean, self.draw_sigma(rng), rng)


def noise_from_config(data: DataConfig) -> Noise | None:
    """The training noise of ``config.data``: None for real (paired) noise."""
    if data.kind == "paired":
        return None
    if data.sigma_range is not None:
        low, high = data.sigma_range
        return AWGNRange(low, high)
    return AWGN(data.sigma)


def validation_noises(settings: ValidationConfig) -> list[Noise]:
    """One noise per validation sigma (``validation.sigmas``, else ``validation.sigma``)."""
    return [AWGN(sigma) for sigma in settings.sigmas or [settings.sigma]]


def add_gaussian_noise(clean: Tensor, sigma: float, seed: int) -> Tensor:
    """Returns ``clean + sigma / 255 * n``, ``n ~ N(0, I)`` drawn on the CPU from ``seed``.

    Arguments:
        clean: a (B, C, H, W) batch in [0, 1].
        sigma: the noise standard deviation on the 0-255 scale.
        seed: seeds the noise; the same seed and shape give the same noise on any device.
    """
    return AWGN(sigma).sample(clean, seed)
