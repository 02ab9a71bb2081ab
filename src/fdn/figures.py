r"""Pictures people look at: labelled side-by-side panels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["side_by_side"]


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
