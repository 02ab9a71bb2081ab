r"""Draws ``docs/figures/strength.png``: a crop of a real noisy photo, and the bundled blind
model's output on it at strengths 0.5, 1, 1.5 and 2 (``fdn denoise --strength``).

The photo in the docs is scikit-image's ``hubble_deep_field.jpg`` (the Hubble eXtreme Deep
Field, NASA; public domain): real sensor noise, stored as a JPEG. Each crop is denoised with a
margin of context around it, so its edges are denoised as they would be in the whole photo,
and every panel is scaled up with nearest-neighbour so that the grain stays visible. The
panels are rounded to even grey levels (at most 1 level off, which no eye sees), so that the
PNG stays under 400 kB: the strongest panels' fine, smooth gradients compress badly.

Run: ``python scripts/strength_figure.py PHOTO --out docs/figures/strength.png
--crop TOP LEFT [SIZE]`` (``--model`` picks another model than the bundled blind one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fdn.denoising import denoise_image
from fdn.figures import side_by_side
from fdn.images import read_image
from fdn.pretrained import resolve_model

STRENGTHS = (0.5, 1.0, 1.5, 2.0)
MARGIN = 32  # pixels of context denoised around the crop and cut away afterwards


def even(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels rounded to the nearest even level (255 to 254): one bit less to store."""
    return np.minimum(2 * np.rint(pixels / 2), 254).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path, help="a noisy photo (colour or grey)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/strength.png"))
    parser.add_argument(
        "--crop",
        type=int,
        nargs="+",
        default=[0, 0, 192],
        metavar="N",
        help="TOP LEFT [SIZE] of the square crop (default: 0 0 192)",
    )
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour zoom")
    parser.add_argument("--model", help="a bundled model name or a model file")
    args = parser.parse_args()
    top, left, size = (*args.crop, 192)[:3]

    pixels = read_image(args.photo).pixels[:, :, :3]  # (H, W, C) uint8; alpha dropped
    height, width = pixels.shape[:2]
    if not (0 <= top <= height - size and 0 <= left <= width - size):
        parser.error(f"--crop {top} {left} {size} is outside the {height}x{width} photo")
    # The crop with up to MARGIN pixels of the photo around it, and where the crop sits in it.
    y0, x0 = max(0, top - MARGIN), max(0, left - MARGIN)
    context = pixels[y0 : min(height, top + size + MARGIN), x0 : min(width, left + size + MARGIN)]
    inner = (slice(top - y0, top - y0 + size), slice(left - x0, left - x0 + size))
    model = resolve_model(args.model, pixels.shape[2])

    panels = [("input", context[inner])]
    for strength in STRENGTHS:
        denoised = denoise_image(context, model, strength=strength)[inner]
        label = f"strength {strength:g}" + (" (default)" if strength == 1 else "")
        panels.append((label, denoised))
    zoomed = [
        (label, np.kron(even(a), np.ones((args.scale, args.scale, 1), a.dtype)))
        for label, a in panels
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = side_by_side(zoomed, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
