r"""Training data: random noisy/clean patches, each a pure function of (seed, sample index).

Every patch is decided by ``numpy.random.default_rng([seed, index])``: which image (through
a per-epoch permutation), where to crop, how to flip or rotate, and the noise. So a run is
reproducible with any number of DataLoader workers, and resuming at step ``s`` is just
starting the sampler at sample ``s * batch``: no iterator or RNG state has to be saved. Under
DDP, rank ``r`` of ``w`` takes samples ``(s * w + r) * batch + i``, so the ranks together see
exactly the batch one process of ``w * batch`` would.

Synthetic noise is added after crop and augmentation, in float, on the paper's 0-255 scale,
unclipped (spec 7.2): ``noisy = clean + sigma / 255 * n``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from fdn.config import TrainConfig
from fdn.images import EXTENSIONS

__all__ = [
    "DataError",
    "StepSampler",
    "TrainingPatches",
    "find_pairs",
    "holdout_split",
    "list_images",
    "load_validation",
]


# Decoded training images are kept in memory while they take at most this many bytes.
CACHE_BYTES = 1 << 30


class DataError(ValueError):
    """Training or validation data that cannot be used; raised before any step."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not found:
        raise DataError(f"{folder}: no images found ({', '.join(sorted(EXTENSIONS))})")
    return found


def find_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(noisy, clean) pairs: the SIDD layout ``Data/SCENE/NOISY_*`` with ``GT_*``, or
    ``noisy/`` and ``clean/`` folders matched by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    if (folder / "Data").is_dir():
        pairs = []
        for noisy in sorted((folder / "Data").glob("*/NOISY_*")):
            clean = noisy.with_name("GT_" + noisy.name[len("NOISY_") :])
            if not clean.is_file():
                raise DataError(f"{noisy}: no ground truth {clean.name} beside it")
            pairs.append((noisy, clean))
    elif (folder / "noisy").is_dir() and (folder / "clean").is_dir():
        pairs = []
        for noisy in list_images(folder / "noisy"):
            clean = folder / "clean" / noisy.relative_to(folder / "noisy")
            if not clean.is_file():
                raise DataError(f"{noisy}: no clean image {clean}")
            pairs.append((noisy, clean))
    else:
        raise DataError(f"{folder}: expected Data/SCENE/NOISY_*+GT_* or noisy/ and clean/")
    if not pairs:
        raise DataError(f"{folder}: no noisy/clean pairs found")
    return pairs


def holdout_split(items: list, count: int) -> tuple[list, list]:
    """``(kept, held)``: ``count`` items held back, the same ones for every run and seed.

    The choice is a fixed permutation of the (sorted) list, so a growing folder changes it;
    held items keep their sorted order.
    """
    if count == 0:
        return items, []
    if count >= len(items):
        raise DataError(f"data.holdout: {count} of {len(items)} images leaves none to train on")
    chosen = set(np.random.default_rng(20221209).permutation(len(items))[:count].tolist())
    kept = [item for i, item in enumerate(items) if i not in chosen]
    return kept, [item for i, item in enumerate(items) if i in chosen]


def _training_items(config: TrainConfig) -> tuple[Path, list[tuple[Path, Path]]]:
    """The training folder and its (noisy, clean) items, before the hold-out split."""
    data = config.data
    if not data.train:
        raise DataError("data.train: no training folder given")
    root = config.resolve(data.train)
    if data.kind == "paired":
        return root, find_pairs(root)
    return root, [(path, path) for path in list_images(root)]


def _load(path: Path, channels: int) -> np.ndarray:
    """``(H, W, C)`` uint8."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as error:  # noqa: BLE001 - decoders raise many kinds; name the file
        raise DataError(f"{path}: not a readable image ({' '.join(str(error).split())})") from None
    return array[:, :, None] if array.ndim == 2 else array


def _augment(patch: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "flip" and rng.integers(2):
        patch = patch[:, ::-1]
    elif mode == "flip_rot":
        choice = rng.integers(8)
        patch = np.rot90(patch, k=choice % 4)
        if choice >= 4:
            patch = patch[:, ::-1]
    return patch


def _to_tensor(array: np.ndarray) -> Tensor:
    return (
        torch.from_numpy(np.ascontiguousarray(array).transpose(2, 0, 1).astype(np.float32)) / 255
    )


class TrainingPatches(Dataset):
    r"""Noisy/clean training patches indexed by a global sample number.

    Arguments:
        config: the run's config (``data`` and ``model.in_channels`` are read).
        seed: the run's seed.

    Checks every image when built (readable, at least one patch large), so a bad dataset
    fails before the first step.
    """

    def __init__(self, config: TrainConfig, seed: int) -> None:
        data = config.data
        self.channels = config.model.in_channels
        self.patch = data.patch_size
        self.augment = data.augment
        self.seed = seed
        self.kind = data.kind
        self.sigma = data.sigma
        self.sigma_range = data.sigma_range
        self.items = holdout_split(_training_items(config)[1], data.holdout)[0]
        # Every image is decoded in full now: one corrupt past its header would otherwise
        # crash the step that draws it, and every resume at the same step. While they fit
        # in CACHE_BYTES, the decoded images are kept, which spares a JPEG decode per patch.
        self._cache: dict[Path, np.ndarray] | None = {}
        self._cached_bytes = 0
        for noisy, clean in self.items:
            clean_array = self._decoded(clean)
            size = clean_array.shape[1], clean_array.shape[0]
            if noisy != clean and self._decoded(noisy).shape[:2] != clean_array.shape[:2]:
                raise DataError(f"{noisy}: size differs from {clean.name}")
            if min(size) < self.patch:
                raise DataError(
                    f"{clean}: {size[0]}x{size[1]} is smaller than the "
                    f"{self.patch}x{self.patch} patch (data.patch_size)"
                )
        self._orders: dict[int, np.ndarray] = {}

    def _decoded(self, path: Path) -> np.ndarray:
        """The image at ``path``, from the cache while there is one."""
        if self._cache is not None and path in self._cache:
            return self._cache[path]
        array = _load(path, self.channels)
        if self._cache is not None:
            self._cache[path] = array
            self._cached_bytes += array.nbytes
            if self._cached_bytes > CACHE_BYTES:
                self._cache = None  # too big to keep: decode per patch from now on
        return array

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int) -> tuple[Path, Path]:
        epoch, position = divmod(index, len(self.items))
        if epoch not in self._orders:
            self._orders = {
                epoch: np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.items))
            }
        return self.items[self._orders[epoch][position]]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, index])
        noisy_path, clean_path = self._item(index)
        clean = self._decoded(clean_path)
        stack = (
            clean if noisy_path == clean_path else np.dstack([clean, self._decoded(noisy_path)])
        )
        height, width = stack.shape[:2]
        top = rng.integers(0, height - self.patch + 1)
        left = rng.integers(0, width - self.patch + 1)
        patch = _augment(
            stack[top : top + self.patch, left : left + self.patch], self.augment, rng
        )
        tensor = _to_tensor(patch)
        clean_patch = tensor[: self.channels]
        if self.kind == "paired":
            return tensor[self.channels :], clean_patch
        sigma = self.sigma if self.sigma_range is None else rng.uniform(*self.sigma_range)
        noise = rng.standard_normal(clean_patch.shape, dtype=np.float32)
        return clean_patch + float(sigma) / 255 * torch.from_numpy(noise), clean_patch


class StepSampler(Sampler[int]):
    """Sample indices for steps ``start .. stop - 1`` of ``batch`` samples on ``rank``."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.stop):
            first = (step * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batch


def load_validation(config: TrainConfig) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, noisy, clean)`` validation images, ``(1, C, H, W)``, with fixed-seed noise."""
    from fdn.noise import add_gaussian_noise, noise_seed

    settings = config.validation
    if settings.every == 0:
        return []
    if settings.folder:
        root = config.resolve(settings.folder)
        if config.data.kind == "paired":
            items = find_pairs(root)
        else:
            items = [(path, path) for path in list_images(root)]
    elif config.data.holdout:
        root, items = _training_items(config)
        items = holdout_split(items, config.data.holdout)[1]
    else:
        return []
    if settings.max_images:
        items = items[: settings.max_images]
    channels = config.model.in_channels
    images = []
    for noisy_path, clean_path in items:
        clean = _to_tensor(_load(clean_path, channels))[None]
        noisy = _to_tensor(_load(noisy_path, channels))[None] if noisy_path != clean_path else None
        if settings.crop:
            clean, noisy = _centre_crop(clean, settings.crop), _centre_crop(noisy, settings.crop)
        if noisy is not None:
            images.append((clean_path.name, noisy, clean))
            continue
        # One noisy copy per validation sigma; a blind model is scored on their mean.
        name = str(clean_path.relative_to(root))
        for sigma in settings.sigmas or [settings.sigma]:
            noisy = add_gaussian_noise(clean, sigma, noise_seed(name, sigma, settings.seed))
            images.append((clean_path.name, noisy, clean))
    return images


def _centre_crop(image: Tensor | None, size: int) -> Tensor | None:
    if image is None:
        return None
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]
