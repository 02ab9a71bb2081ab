r"""Draws ``docs/figures/likelihood.png``: the bits/dim maps (``fdn denoise --likelihood-map``)
of the bundled sample photo with AWGN of sigma 15, and of the same photo with a 64 x 64
one-pixel checkerboard (0 and 255) pasted in at rows 64-127, columns 96-159.

Run: ``python scripts/likelihood_figure.py --out docs/figures/likelihood.png``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fdn.denoising import denoise_image
from fdn.figures import likelihood_map
from fdn.likelihood import Likelihood
from fdn.pretrained import load_pretrained, sample_image_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/likelihood.png"))
    args = parser.parse_args()
    clean = np.asarray(Image.open(sample_image_paths()[1])).astype(np.float64)
    noisy = clean + 15 * np.random.default_rng(0).standard_normal(clean.shape)
    photo = np.rint(np.clip(noisy, 0, 255)).astype(np.uint8)
    pasted = photo.copy()
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.uint8) * 255
    pasted[64:128, 96:160] = board[:, :, None]
    model = load_pretrained("fdn-color-blind")
    maps = []
    with tempfile.TemporaryDirectory() as folder:
        for name, image in (("photo", photo), ("pasted", pasted)):
            likelihood = Likelihood()
            denoise_image(image, model, likelihood=likelihood)
            path = Path(folder) / f"{name}.png"
            mean = likelihood_map(likelihood, *image.shape[:2], path)
            print(f"{name}: {mean:.2f} bits/dim (mean)")
            maps.append(np.asarray(Image.open(path).convert("RGB")))
    gap = np.full((maps[0].shape[0], 16, 3), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([maps[0], gap, maps[1]], axis=1)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
