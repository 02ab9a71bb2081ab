r"""Builds the bundled sample images in ``src/fdn/assets`` (run once; the outputs are committed).

The clean image is a 256x256 crop of scikit-image's ``astronaut`` (Eileen Collins; NASA Great
Images; no known copyright restrictions, released into the public domain). The noisy one adds
AWGN with sigma = 25 (0-255 scale) from a fixed seed, rounded and clipped to 8 bits as a real
noisy photo would be stored.

Run: ``python scripts/make_sample.py`` (needs scikit-image).
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ASSETS = Path(__file__).resolve().parents[1] / "src" / "fdn" / "assets"
SIGMA = 25
SEED = 2022


def main() -> None:
    clean = data.astronaut()[0:256, 120:376]
    noise = np.random.default_rng(SEED).normal(0, SIGMA, clean.shape)
    noisy = np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(ASSETS / "astronaut.png", optimize=True)
    Image.fromarray(noisy).save(ASSETS / "astronaut_noisy_sigma25.png", optimize=True)


if __name__ == "__main__":
    main()
