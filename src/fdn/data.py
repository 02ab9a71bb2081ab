r"""Training data: random noisy/clean patches, each a pure function of (seed, sample index).

Every patch is decided by ``numpy.random.default_rng([seed, index])``: which image (through
a per-epoch permutation), where to crop, how to flip or rotate, and the noise. So a run is
reproducible with any number of DataLoader workers, and resuming at step ``s`` is just
starting the sampler at sample ``s * batch``: no iterator or RNG state has to be saved. Under
DDP, rank ``r`` of ``w`` takes samples ``(s * w + r) * batch + i``, so the ranks together see
exactly the batch one process of ``w * batch`` would.

Synthetic noise is added after crop and augmentation, in float, on the paper's 0-255 scale,
unclipped (spec 7.2): ``noisy = clean + sigma / 255 * n``, by the noise object of
:func:`fdn.noise.noise_from_config`.
"""

from __future__ import annotations

import copy
import os
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from fdn.config import TrainConfig
from fdn.images import EXTENSIONS, ImageFileError, read_array, to_unit_float
from fdn.noise import noise_from_config, validation_noises

__all__ = [
    "DataError",
    "StepSampler",
    "TrainingPatches",
    "find_pairs",
    "holdout_split",
    "list_images",
    "load_validation",
    "load_validation_by_sigma",
    "make_synthetic_images",
]


# Decoded training images are kept in memory while they take at most this many bytes.
CACHE_BYTES = 1 << 30


class DataError(ValueError):
    """Training or validation data that cannot be used; raised before any step."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (those :data:`fdn.images.EXTENSIONS` names, any case),
    recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    found = _image_files(folder)
    if not found:
        raise DataError(f"{folder}: no images found ({', '.join(sorted(EXTENSIONS))})")
    return found


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def find_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(noisy, clean) image pairs under ``folder``, sorted by the noisy image's path: what
    training, validation and ``fdn eval --paired`` all read.

    Two layouts, the first that ``folder`` has:

    - ``noisy/`` and ``clean/`` folders: each image under ``noisy/`` (recursively) pairs with
      the one of the same path under ``clean/``, or failing that with the one whose path
      differs only in its extension (``noisy/a.png`` with ``clean/a.tif``).
    - SIDD: each ``NOISY_*`` image (any case) anywhere under ``folder`` pairs with the
      ``GT_*`` image of the same name beside it. So ``folder`` may be SIDD's root (holding
      ``Data/SCENE/``), its ``Data`` folder, or one scene.

    Only the image files of :data:`fdn.images.EXTENSIONS` count. A noisy image without its
    clean partner is an error that names them, rather than a pair silently left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    pairs, unmatched = [], []
    if (folder / "noisy").is_dir() and (folder / "clean").is_dir():
        noisy_root, clean_root = folder / "noisy", folder / "clean"
        by_stem = {  # in sorted order, so the last of several extensions wins
            p.relative_to(clean_root).with_suffix("").as_posix(): p
            for p in _image_files(clean_root)
        }
        for noisy in _image_files(noisy_root):
            relative = noisy.relative_to(noisy_root)
            same_name = clean_root / relative
            clean = (
                same_name
                if same_name.is_file()
                else by_stem.get(relative.with_suffix("").as_posix())
            )
            if clean is None:
                unmatched.append(relative.as_posix())
            else:
                pairs.append((noisy, clean))
    else:
        for noisy in _image_files(folder):
            if not noisy.name.upper().startswith("NOISY_"):
                continue
            clean = noisy.with_name("GT_" + noisy.name[len("NOISY_") :])
            if clean.is_file():
                pairs.append((noisy, clean))
            else:
                where = noisy.relative_to(folder).as_posix()
                unmatched.append(f"{where}: no ground truth {clean.name} beside it")
    if unmatched:
        shown = ", ".join(unmatched[:3]) + (" ..." if len(unmatched) > 3 else "")
        raise DataError(f"{folder}: no clean image for {len(unmatched)} noisy ones ({shown})")
    if not pairs:
        raise DataError(
            f"{folder}: no noisy/clean pairs found; expected Data/SCENE/NOISY_*+GT_* or "
            "noisy/ and clean/"
        )
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
    if data.kind == "synthetic":
        make_synthetic_images(root)
    return root, [(path, path) for path in list_images(root)]


def _training_split(config: TrainConfig) -> tuple[Path, list, list]:
    """``(root, kept, held)``: the training folder, the items a run trains on and the ones
    ``data.holdout`` holds back for validation."""
    root, items = _training_items(config)
    kept, held = holdout_split(items, config.data.holdout)
    return root, kept, held


SYNTHETIC_COUNT, SYNTHETIC_SIZE = 40, 96


def make_synthetic_images(folder: Path, count: int = SYNTHETIC_COUNT) -> None:
    """Draws ``count`` clean colour PNGs into ``folder`` (those missing; they are the same on
    every machine): smooth gradients with discs, bars and a faint texture, 96x96.

    What ``data.kind = "synthetic"`` trains on (``configs/smoke.toml``): a first run, or a
    test, that needs no data set.
    """
    from fdn.atomic import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    size = SYNTHETIC_SIZE
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for index in range(count):
        path = folder / f"synthetic_{index:03d}.png"
        if path.is_file():
            continue
        rng = np.random.default_rng([20221209, index])
        start, end = rng.random((2, 3), dtype=np.float32)
        angle = rng.uniform(0, np.pi)
        ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
        image = start + (end - start) * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
        for _ in range(rng.integers(3, 8)):
            colour = rng.random(3, dtype=np.float32)
            cy, cx, r = rng.random(3, dtype=np.float32) * [1, 1, 0.3]
            if rng.integers(2):
                mask = (y - cy) ** 2 + (x - cx) ** 2 < r**2
            else:
                mask = (abs(y - cy) < r) & (abs(x - cx) < r / 3)
            image[mask] = colour
        frequency = rng.uniform(10, 30)
        image += 0.03 * np.sin(2 * np.pi * frequency * (x + 0.5 * y))[..., None]
        pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)

        def save(tmp: Path, p: np.ndarray = pixels) -> None:
            Image.fromarray(p).save(tmp, format="PNG")

        atomic_write(path, save)


def _load(path: Path, channels: int, raw: bool = False) -> np.ndarray:
    """``(H, W, channels)``: float32 in [0, 1], or with ``raw`` the stored uint8/uint16."""
    try:
        return read_array(path, channels, raw=raw)
    except ImageFileError as error:
        raise DataError(f"{error.path}: not a readable image ({error.problem})") from None


def _augment(patch: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "flip" and rng.integers(2):
        patch = patch[:, ::-1]
    elif mode == "flip_rot":
        choice = rng.integers(8)
        patch = np.rot90(patch, k=int(choice % 4))
        if choice >= 4:
            patch = patch[:, ::-1]
    return patch


def _to_tensor(array: np.ndarray) -> Tensor:
    """A float32 ``(H, W, C)`` array as a ``(C, H, W)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


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
        self.noise = noise_from_config(data)  # None for paired (real) noise
        self.items = _training_split(config)[1]
        # Every image is decoded in full now: one corrupt past its header would otherwise
        # crash the step that draws it, and every resume at the same step. While they fit
        # in CACHE_BYTES, the decoded images are kept, which spares a JPEG decode per patch;
        # as stored (uint8 or uint16, a quarter or half of float32), scaled per patch.
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

    @property
    def cached_images(self) -> int:
        """How many decoded images are kept in memory (0: they did not fit in CACHE_BYTES)."""
        return 0 if self._cache is None else len(self._cache)

    def _decoded(self, path: Path) -> np.ndarray:
        """The image at ``path``, from the cache while there is one."""
        if self._cache is not None and path in self._cache:
            return self._cache[path]
        array = _load(path, self.channels, raw=True)
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
        images = [clean] if noisy_path == clean_path else [clean, self._decoded(noisy_path)]
        height, width = clean.shape[:2]
        top = rng.integers(0, height - self.patch + 1)
        left = rng.integers(0, width - self.patch + 1)
        # Cropped before scaling, and each image by its own bit depth (noisy and clean may
        # differ); stacked so that both get the same flip and rotation.
        crops = [
            to_unit_float(image[top : top + self.patch, left : left + self.patch])
            for image in images
        ]
        patch = _augment(crops[0] if len(crops) == 1 else np.dstack(crops), self.augment, rng)
        tensor = _to_tensor(patch)
        clean_patch = tensor[: self.channels]
        if self.noise is None:
            return tensor[self.channels :], clean_patch
        # Drawn from the patch's generator after its crop and flips (a range's sigma first).
        return self.noise.sample(clean_patch, rng), clean_patch


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


def load_validation(config: TrainConfig, seen: int = 0) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, noisy, clean)`` validation images, ``(1, C, H, W)``, with fixed-seed noise.

    ``seen``: instead, that many of the images the run trains on (a fixed choice, whatever
    the seed), under the same protocol (crop, noise, seeds): what a model scores on images it
    has learned from, against the held-back ones (``scripts/memorisation.py``).
    """
    settings = config.validation
    if seen:
        root, kept, _ = _training_split(config)
        if seen > len(kept):
            raise DataError(f"{root}: {seen} training images asked for, {len(kept)} there")
        chosen = np.sort(np.random.default_rng(20221210).permutation(len(kept))[:seen])
        items = [kept[i] for i in chosen.tolist()]
    elif settings.every == 0:
        return []
    elif settings.folder:
        root = config.resolve(settings.folder)
        if config.data.kind == "paired":
            items = find_pairs(root)
        else:
            items = [(path, path) for path in list_images(root)]
    elif config.data.holdout:
        root, _, items = _training_split(config)
    else:
        return []
    if settings.max_images and not seen:
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
        for noise in validation_noises(settings):
            noisy = noise.sample(clean, noise.seed_for(name, settings.seed))
            images.append((clean_path.name, noisy, clean))
    return images


def load_validation_by_sigma(
    config: TrainConfig, sigmas: Sequence[float]
) -> dict[float, list[tuple[str, Tensor, Tensor]]]:
    """:func:`load_validation`'s images with each of ``sigmas`` in turn as the validation's
    only noise level (the same fixed-seed noise its validation draws at that sigma), per
    sigma; ``config`` is left as it was. DataError when the run holds nothing back."""
    config = copy.deepcopy(config)
    config.validation.every = max(config.validation.every, 1)  # 0 would load nothing
    images = {}
    for sigma in sigmas:
        config.validation.sigmas = [float(sigma)]
        images[float(sigma)] = load_validation(config)
        if not images[float(sigma)]:
            raise DataError("the run has no held-back images to score on")
    return images


@typing.overload
def _centre_crop(image: Tensor, size: int) -> Tensor: ...
@typing.overload
def _centre_crop(image: None, size: int) -> None: ...
def _centre_crop(image: Tensor | None, size: int) -> Tensor | None:
    if image is None:
        return None
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]
