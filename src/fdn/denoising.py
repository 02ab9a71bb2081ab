r"""Denoising numpy images of any size, dtype and channel count, whole or in feathered tiles."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fdn.choices import PRECISIONS, check_strength, ensemble_size
from fdn.ensemble import self_ensemble
from fdn.images import to_unit_float
from fdn.likelihood import Likelihood, encode_for_likelihood
from fdn.model import FDN, with_sigma_hint

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_TILE",
    "PRECISIONS",
    "denoise_image",
    "denoise_tensor",
    "effective_tile",
    "precision_context",
    "tile_spans",
]

# Above this many pixels an image is denoised in tiles: a whole-image denoise peaks at about
# 460 bytes per pixel on top of the process (benchmarks/denoise_speed.py measures it), so
# 4 MP stays under 2.5 GB in all.
DEFAULT_MAX_PIXELS = 4_000_000
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 32


def precision_context(
    precision: str, device: torch.device | str
) -> contextlib.AbstractContextManager:
    """The context to run a model's inference in for ``precision`` (one of ``PRECISIONS``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 4) -> list[tuple[int, int]]:
    """Start and end of the tiles along one axis.

    Tiles start at multiples of ``multiple``, so that each tile's Squeeze lattice is the whole
    image's and a tile sees its pixels exactly as the whole image would. Consecutive tiles
    overlap by at least ``overlap``; the last one runs to the end.
    """
    if length <= tile:
        return [(0, length)]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, step))
    # The last tile runs to the end from the last aligned start; it is at most
    # ``multiple - 1`` pixels longer than ``tile``, and still overlaps its neighbour enough.
    last = (length - tile) // multiple * multiple
    if last > starts[-1]:
        starts.append(last)
    return [(start, start + tile) for start in starts[:-1]] + [(starts[-1], length)]


def _ramp(start: int, end: int, length: int, overlap: int) -> np.ndarray:
    """Blend weights along one axis of a tile: linear ramps where it overlaps a neighbour."""
    positions = np.arange(end - start, dtype=np.float64) + 0.5
    weight = np.ones(end - start)
    overlap = max(overlap, 1)
    if start > 0:
        weight = np.minimum(weight, positions / overlap)
    if end < length:
        weight = np.minimum(weight, (end - start - positions) / overlap)
    return weight


def _tiles(
    height: int, width: int, tile: int, overlap: int, multiple: int
) -> Iterator[tuple[slice, slice, np.ndarray]]:
    rows = tile_spans(height, tile, overlap, multiple)
    cols = tile_spans(width, tile, overlap, multiple)
    for top, bottom in rows:
        row_weight = _ramp(top, bottom, height, overlap)
        for left, right in cols:
            weight = np.outer(row_weight, _ramp(left, right, width, overlap))
            yield slice(top, bottom), slice(left, right), weight


@torch.no_grad()
def denoise_tensor(
    image: Tensor,
    model: FDN,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = False,
    ensemble: bool | int = False,
    strength: float | None = None,
    likelihood: Likelihood | None = None,
) -> Tensor:
    """Denoises a ``(C, H, W)`` float image in [0, 1] whose C matches the model.

    With ``tile``, the image is denoised in ``tile x tile`` pieces that overlap by ``overlap``
    pixels and are blended with linear (feathered) weights, so memory is bounded by the tile.
    With ``ensemble`` (True or 8, 4, 2), the result is the self-ensemble of that many flips and
    rotations (:func:`fdn.ensemble.self_ensemble`; that many times the work).
    ``strength`` is :meth:`FDN.denoise`'s (None: the model's default, chosen per tile). Above
    1 (a sigma hint: four denoises) each of its seeded noise draws is added to the whole image
    before it is tiled, so that tiled and untiled results agree as they do at strength 1.

    ``likelihood`` collects the image's bits/dim per pass (tile) and block, from the encode
    each denoise does anyway; the ensemble and strengths above 1, whose encodes see other
    images, pay one more encode of the image for it.
    """
    strength = check_strength(strength)
    size = ensemble_size(ensemble)
    hint = strength if strength is not None and strength > 1 else None  # a sigma hint's
    if likelihood is not None and (size > 1 or hint is not None):
        _score(image, model, tile, overlap, likelihood)
        likelihood = None
    if size > 1:
        return self_ensemble(
            lambda x: denoise_tensor(x, model, tile, overlap, progress, strength=strength),
            image,
            size,
        )
    channels, height, width = image.shape
    if tile is None or (height <= tile and width <= tile):
        return _denoise_piece(image, model, strength, likelihood, 0, 0).to(image.dtype).cpu()
    if overlap < 0 or tile < 2 * overlap + 4:
        raise ValueError(f"tile {tile} must exceed twice the overlap {overlap} plus 4")
    if hint is not None:  # the noise is drawn for the whole image (a batch of one), then tiled
        return with_sigma_hint(
            image[None],
            hint,
            lambda noisy: denoise_tensor(noisy[0], model, tile, overlap, progress, strength=1.0)[
                None
            ],
        )[0]
    multiple = model.config.size_multiple
    out = np.zeros((channels, height, width), dtype=np.float64)
    total = np.zeros((height, width), dtype=np.float64)
    tiles = list(_tiles(height, width, tile, overlap, multiple))
    for rows, cols, weight in tqdm(
        tiles, desc="tiles", unit="tile", leave=False, disable=not progress
    ):
        piece = image[:, rows, cols]
        denoised = _denoise_piece(piece, model, strength, likelihood, rows.start, cols.start)
        out[:, rows, cols] += denoised.double().cpu().numpy() * weight
        total[rows, cols] += weight
    return torch.from_numpy(out / total).to(image.dtype)


def _denoise_piece(
    piece: Tensor,
    model: FDN,
    strength: float | None,
    likelihood: Likelihood | None,
    top: int,
    left: int,
) -> Tensor:
    """One ``(C, h, w)`` image or tile through ``model.denoise``, on the model's device; its
    likelihood into ``likelihood`` (at pixel ``top, left``) from the same encode."""
    parameter = next(model.parameters())
    batch = piece[None].to(parameter.device, parameter.dtype)
    if likelihood is None:
        return model.denoise(batch, strength)[0]
    denoised, z, logdet = model.denoise_with_latent(batch, strength)
    likelihood.add(z, logdet, top, left, model.config.size_multiple)
    return denoised[0]


def _score(
    image: Tensor, model: FDN, tile: int | None, overlap: int, likelihood: Likelihood
) -> None:
    """The likelihood of ``image`` alone, tile by tile as the denoise would cut it."""
    parameter = next(model.parameters())
    height, width = image.shape[1:]
    multiple = model.config.size_multiple
    if tile is None or (height <= tile and width <= tile):
        spans = [(slice(0, height), slice(0, width))]
    else:
        spans = [(rows, cols) for rows, cols, _ in _tiles(height, width, tile, overlap, multiple)]
    for rows, cols in spans:
        piece = image[:, rows, cols][None].to(parameter.device, parameter.dtype)
        z, logdet = encode_for_likelihood(model, piece)
        likelihood.add(z, logdet, rows.start, cols.start, multiple)


def effective_tile(
    height: int, width: int, tile: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> int | None:
    """The tile size a denoise uses: ``tile`` if given, else :data:`DEFAULT_TILE` for an
    image above ``max_pixels`` pixels, else None (the whole image at once)."""
    if tile is None and max_pixels is not None and height * width > max_pixels:
        return DEFAULT_TILE
    return tile


# The float pixel values denoise_image accepts: [0, 1], with room for noise around it.
FLOAT_RANGE = (-1.0, 2.0)


def _to_unit_float(image: np.ndarray) -> np.ndarray:
    if image.dtype in (np.uint8, np.uint16):
        return to_unit_float(image)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("the image has NaN or infinite values")
        # Noisy pixels stray a little outside [0, 1]; far beyond it the image is on another
        # scale (0-255 floats, say), and values near float32's limit would overflow the flow.
        low, high = float(image.min()), float(image.max())
        if low < FLOAT_RANGE[0] or high > FLOAT_RANGE[1]:
            raise ValueError(
                f"float pixel values must lie in [0, 1] (noisy ones a little outside, within "
                f"{list(FLOAT_RANGE)}); this image spans [{low:.4g}, {high:.4g}]: rescale it"
            )
        return image.astype(np.float32)
    raise ValueError(f"unsupported dtype {image.dtype}: use uint8, uint16 or float")


def _from_unit_float(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if dtype == np.uint16:
        return np.rint(np.clip(image, 0, 1) * 65535).astype(np.uint16)
    return image.astype(dtype)


def denoise_image(
    image: np.ndarray,
    model: FDN | str | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    ensemble: bool | int = False,
    precision: str = "fp32",
    strength: float | None = None,
    likelihood: Likelihood | None = None,
) -> np.ndarray:
    r"""Denoises a numpy image and returns one of the same shape and dtype.

    Arguments:
        image: ``(H, W)`` or ``(H, W, C)``, uint8, uint16 or float in [0, 1]. C is 1 or 3
            colour channels, or 2 or 4 with alpha last; alpha is returned unchanged.
        model: the FDN, on the device to use; or a bundled model's name
            (``"fdn-color-blind"``) or a model file's path; or None, the bundled model for
            the image's channels (grey or colour), on the CPU.
        tile: denoise in tiles of this size (pixels); None for the whole image, unless it has
            more than ``max_pixels`` pixels, in which case it is tiled at 1024.
        overlap: overlap of neighbouring tiles, blended linearly.
        max_pixels: above this, an untiled request is tiled; None never tiles on its own.
        progress: show a progress bar over tiles.
        ensemble: average the denoised flips and rotations (the self-ensemble): True or 8
            for all eight, 4 or 2 for the first four or two (:func:`fdn.ensemble.self_ensemble`).
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 convolutions
            (see :data:`fdn.choices.PRECISIONS`).
        strength: how much noise to remove, in [0, 2] (:meth:`FDN.denoise`): 0 returns the
            image, 1 the model's estimate, above 1 adds a noise hint that smooths more (four
            denoises). None (the default): 1, or for a bundled model with a fitted strength
            curve, the curve's strength for the noise it finds in each image (or tile).
        likelihood: a :class:`fdn.likelihood.Likelihood` to collect the image's bits/dim in,
            per pass and per block, from the denoise's own encode (each channel is a pass
            through a grey model; a grey image is one pass, replicated, through a colour one).

    A grey image through a colour model is replicated to RGB, denoised, and averaged back to
    grey; a colour image through a grey model is denoised one channel at a time.

    Example:
        >>> import numpy as np
        >>> model = FDN(hidden_channels=4, steps_per_block=1).eval()
        >>> out = denoise_image(np.zeros((5, 7, 3), dtype=np.uint8), model)
        >>> out.shape, out.dtype
        ((5, 7, 3), dtype('uint8'))
    """
    strength = check_strength(strength)
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"expected an (H, W) or (H, W, C) image with C <= 4, got {array.shape}")
    if min(array.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    colour = array if array.ndim == 3 else array[:, :, None]
    alpha = None
    if colour.shape[2] in (2, 4):
        colour, alpha = colour[:, :, :-1], colour[:, :, -1:]
    if not isinstance(model, FDN):
        from fdn.pretrained import resolve_model

        model = resolve_model(model, colour.shape[2])
    unit = torch.from_numpy(_to_unit_float(colour)).permute(2, 0, 1)  # (C, H, W)
    height, width = unit.shape[1:]
    tile = effective_tile(height, width, tile, max_pixels)
    model_channels = model.config.in_channels
    channels = unit.shape[0]

    def run(pixels: Tensor) -> Tensor:
        return denoise_tensor(
            pixels, model, tile, overlap, progress, ensemble, strength, likelihood
        )

    with precision_context(precision, next(model.parameters()).device):
        if channels == model_channels:
            denoised = run(unit)
        elif channels == 1 and model_channels == 3:
            denoised = run(unit.expand(3, -1, -1)).mean(dim=0, keepdim=True)
        elif model_channels == 1:
            denoised = torch.cat([run(unit[c : c + 1]) for c in range(channels)])
        else:
            raise ValueError(
                f"cannot denoise a {channels}-channel image with a {model_channels}-channel model"
            )
    result = _from_unit_float(denoised.permute(1, 2, 0).numpy(), array.dtype)
    if alpha is not None:
        result = np.concatenate([result, alpha], axis=2)
    return result.reshape(array.shape)
