r"""Pictures people look at: labelled side-by-side panels, likelihood maps."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from fdn.likelihood import Likelihood

__all__ = ["colour_scale", "likelihood_map", "side_by_side"]

# Viridis at eight even stops (dark blue for low, yellow for high): readable in grey too.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [70, 50, 126],
        [54, 92, 141],
        [39, 127, 142],
        [31, 161, 135],
        [74, 193, 109],
        [160, 218, 57],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def side_by_side(
    panels: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike, gap: int = 8
) -> Path:
    """Writes the images ``panels`` (label, uint8 array ``(H, W[, C])``) in a row, each with
    its label underneath, as a PNG. All panels must have the same size."""
    from fdn.images import ImageFile, write_image

    arrays = [np.asarray(a) for _, a in panels]
    arrays = [np.repeat(a[:, :, None], 3, 2) if a.ndim == 2 else a[:, :, :3] for a in arrays]
    height, width = arrays[0].shape[:2]
    if any(a.shape[:2] != (height, width) for a in arrays):
        raise ValueError("all panels must have the same size")
    font = ImageFont.load_default(size=max(12, width // 18))
    caption = font.size + 10  # type: ignore[union-attr]  # FreeType: a sized font
    canvas = Image.new("RGB", (len(arrays) * (width + gap) - gap, height + caption), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _), array) in enumerate(zip(panels, arrays, strict=True)):
        left = i * (width + gap)
        canvas.paste(Image.fromarray(array.astype(np.uint8)), (left, 0))
        text_width = draw.textlength(label, font=font)
        draw.text((left + (width - text_width) / 2, height + 4), label, fill="black", font=font)
    pixels = np.asarray(canvas)
    return write_image(path, ImageFile(pixels, None, "PNG", "RGB"), pixels)


def colour_scale(values: np.ndarray) -> np.ndarray:
    """Viridis colours, uint8 ``(..., 3)``, of ``values`` in [0, 1] (clipped)."""
    position = np.clip(values, 0, 1) * (len(_VIRIDIS) - 1)
    low = np.minimum(position.astype(int), len(_VIRIDIS) - 2)
    fraction = (position - low)[..., None]
    colours = _VIRIDIS[low] * (1 - fraction) + _VIRIDIS[low + 1] * fraction
    return np.rint(colours).astype(np.uint8)


def likelihood_map(
    likelihood: Likelihood, height: int, width: int, path: str | os.PathLike
) -> float:
    """Writes an image's bits/dim map as a PNG: each block's value in colour at the image's
    size (``height x width``), with a colour scale bar and its bits/dim range on the right.
    Returns the image's mean bits/dim (over its blocks).

    The colours follow ``log(1 + v - min)``: natural images span a bit or two per dimension,
    regions unlike any training image tens to hundreds, and both stay visible."""
    from fdn.images import ImageFile, write_image

    blocks = likelihood.block_map(height, width)
    low, high = float(blocks.min()), float(blocks.max())
    spread = max(math.log1p(high - low), 1e-9)
    pixels = np.repeat(np.repeat(blocks, likelihood.block, 0), likelihood.block, 1)
    picture = colour_scale(np.log1p(pixels[:height, :width] - low) / spread)
    font = ImageFont.load_default(size=11)
    middle = low + math.expm1(spread / 2)
    labels = [f"{high:.1f}", f"{low:.1f}", f"{middle:.1f}", "bits/dim"]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(draw.textlength(label, font=font) for label in labels)) + 2
    bar, gap = 12, 6
    canvas = Image.new("RGB", (width + 2 * gap + bar + label_width, height), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    ramp = colour_scale(np.linspace(1, 0, height))[:, None, :].repeat(bar, 1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(ramp)), (width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    text_left = width + 2 * gap + bar
    draw.text((text_left, 0), labels[0], fill="black", font=font)
    if height >= 40:  # room for the bottom label and the unit without overlap
        draw.text((text_left, height - 13), labels[1], fill="black", font=font)
        draw.text((text_left, height // 2 - 6), labels[2], fill="black", font=font)
    if height >= 80:
        draw.text((text_left, height // 4 - 6), labels[3], fill="black", font=font)
    image = np.asarray(canvas)
    write_image(path, ImageFile(image, None, "PNG", "RGB"), image)
    return float(blocks.mean())
