r"""What noise ``fdn.renoise`` synthesises: its standard deviation and spatial correlation.

Each clean image gets AWGN of ``--sigma`` (the seeds ``fdn eval`` uses) and is renoised at
temperature 1; the synthetic noise is the renoised image minus the model's denoised estimate
(``fdn.renoise`` at temperature 0), and also minus the clean image. The table gives, on the
0-255 scale and averaged over images: its standard deviation, its lag-1 autocorrelation
horizontally and vertically, and its mean correlation between colour channels; the real
noise (noisy minus clean) is the reference row. Two draws per image also give the part that
changes from draw to draw (the standard deviation of their difference over sqrt 2) and the
synthetic noise's correlation with the input's own noise (the part z_C carried over). A model
trained on AWGN of a known sigma should give a standard deviation near sigma and correlations
near 0. Training images only.

    OMP_NUM_THREADS=1 nice python benchmarks/renoise_noise.py --sigma 25 --limit 8 \
        --data ../shared/data/train/CBSD432 --models fdn-color-blind run/model.safetensors
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import fdn
from fdn.evaluation import find_dataset
from fdn.images import read_array
from fdn.noise import AWGN


def noise_stats(noise: np.ndarray) -> dict[str, float]:
    """Std (0-255), lag-1 autocorrelations along x and y, and mean inter-channel correlation
    of an ``(H, W, C)`` noise image in [0, 1] units."""

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    channels = noise.shape[2]
    pairs = [(i, j) for i in range(channels) for j in range(i + 1, channels)]
    return {
        "std": 255 * float(noise.std()),
        "rho_x": float(np.mean([corr(c[:, :-1], c[:, 1:]) for c in noise.transpose(2, 0, 1)])),
        "rho_y": float(np.mean([corr(c[:-1], c[1:]) for c in noise.transpose(2, 0, 1)])),
        "rho_rgb": float(np.mean([corr(noise[..., i], noise[..., j]) for i, j in pairs]))
        if pairs
        else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of clean training images")
    parser.add_argument("--models", nargs="+", default=["fdn-color-blind"], help="names or files")
    parser.add_argument("--sigma", type=float, default=25.0, help="AWGN sigma, 0-255")
    parser.add_argument("--limit", type=int, default=8, help="images (default: 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="renoise temperature")
    args = parser.parse_args()
    dataset = find_dataset(args.data, limit=args.limit)
    noise = AWGN(args.sigma)
    cleans = [read_array(item.clean) for item in dataset.items]
    noisies = [
        noise.sample(c, noise.seed_for(item.name, 0))
        for c, item in zip(cleans, dataset.items, strict=True)
    ]
    rows: dict[str, list[dict[str, float]]] = {"real: noisy - clean": []}
    for clean, noisy in zip(cleans, noisies, strict=True):
        rows["real: noisy - clean"].append(noise_stats(noisy - clean))
    for spec in args.models:
        model = fdn.load_model(spec)
        start = time.perf_counter()
        for k, (clean, noisy) in enumerate(zip(cleans, noisies, strict=True)):
            with torch.no_grad():
                denoised = fdn.renoise(noisy, model, temperature=0)[0]
                first, second = fdn.renoise(noisy, model, 2, args.temperature, seed=k)
            synthetic = first - denoised
            stats = noise_stats(synthetic)
            # What changes from draw to draw, and how much of the input's own noise it keeps.
            stats["fresh"] = 255 * float((first - second).std()) / 2**0.5
            stats["rho_real"] = float(
                np.corrcoef(synthetic.ravel(), (noisy - clean).ravel())[0, 1]
            )
            rows.setdefault(f"{spec}: renoised - denoised", []).append(stats)
            for label, noise_image in (
                (f"{spec}: renoised - clean", first - clean),
                (f"{spec}: noisy - denoised", noisy - denoised),
            ):
                rows.setdefault(label, []).append(noise_stats(noise_image))
        print(f"# {spec}: {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\n{len(cleans)} images of {args.data}, AWGN sigma {args.sigma:g}, T={args.temperature:g}"
    )
    print(
        "| noise | std (0-255) | lag-1 rho x | lag-1 rho y | rho between channels "
        "| std between draws / sqrt 2 | rho with the input's noise |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, stats in rows.items():
        mean = {key: np.mean([s[key] for s in stats]) for key in stats[0]}
        extra = f" {mean['fresh']:.2f} | {mean['rho_real']:+.3f} |" if "fresh" in mean else " | |"
        print(
            f"| {label} | {mean['std']:.2f} | {mean['rho_x']:+.3f} | {mean['rho_y']:+.3f} "
            f"| {mean['rho_rgb']:+.3f} |{extra}"
        )


if __name__ == "__main__":
    main()
