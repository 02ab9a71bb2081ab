r"""How much of the x8 self-ensemble's gain the smaller ensembles keep, on a run's held-back
images (never a test set).

Each held-back image, at each sigma, is denoised once through each of the eight flips and
rotations (:func:`fdn.ensemble.dihedral`); every ensemble in the table is then the mean of
some of those eight results, so all of them are scored on the very same denoises. The rows
are the plain denoise, the pairs (the image with one other transform), the fours (the quarter
turns; the flips and the half turn) and all eight. ``fdn denoise --ensemble-size N`` takes the
first N of the order, which this table chose: docs/evaluation.md.

    OMP_NUM_THREADS=1 python benchmarks/ensemble_sizes.py configs/bundled_color_blind.toml \
        fdn-color-blind --data-root ../shared/data

prints a Markdown table: per sigma the mean PSNR, then the mean over sigmas and the gain over
the plain denoise. About 8 minutes for the colour model (96 images of 256x256) on one thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fdn.config import load_config
from fdn.data import DataError, load_validation_by_sigma
from fdn.ensemble import dihedral, undo_dihedral
from fdn.metrics import psnr
from fdn.model import FDN
from fdn.serialization import load_model

# name: the transforms (indices into fdn.ensemble.dihedral's order) an ensemble averages.
ENSEMBLES = {
    "plain": (0,),
    "quarter turn (x2)": (0, 1),
    "half turn": (0, 2),
    "left-right flip": (0, 4),
    "transpose": (0, 5),
    "up-down flip": (0, 6),
    "quarter turns (x4)": (0, 1, 2, 3),
    "flips and half turn": (0, 2, 4, 6),
    "all eight (x8)": tuple(range(8)),
}


def ensemble_scores(
    model: FDN,
    images: dict[float, list],
    ensembles: dict[str, tuple[int, ...]] = ENSEMBLES,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Per ensemble, the mean PSNR at each sigma of ``images`` (as
    :func:`fdn.data.load_validation_by_sigma` gives them), in that order."""
    needed = sorted({k for transforms in ensembles.values() for k in transforms})
    sums = {name: [] for name in ensembles}
    start = time.perf_counter()
    model = model.eval()
    with torch.no_grad():
        for sigma, pairs in images.items():
            scores: dict[str, list[float]] = {name: [] for name in ensembles}
            for _, noisy, clean in pairs:
                outputs = {
                    k: undo_dihedral(model.denoise(dihedral(noisy, k)), k).double() for k in needed
                }
                for name, transforms in ensembles.items():
                    mean = sum(outputs[k] for k in transforms) / len(transforms)
                    scores[name].append(psnr(mean.float(), clean).item())
            for name in ensembles:
                sums[name].append(float(np.mean(scores[name])))
            if progress:
                print(f"sigma {sigma:g}: {time.perf_counter() - start:.0f} s", flush=True)
    return sums


def table(results: dict[str, list[float]], sigmas: Sequence[float]) -> str:
    """A Markdown table, a row per ensemble: its transforms, PSNR per sigma, mean, gain."""
    head = " | ".join(f"sigma {s:g}" for s in sigmas)
    lines = [
        f"| ensemble | transforms | {head} | mean | gain |",
        "|---|---|" + "---:|" * (len(sigmas) + 2),
    ]
    plain = float(np.mean(next(iter(results.values()))))
    for name, row in results.items():
        cells = " | ".join(f"{value:.3f}" for value in row)
        transforms = ",".join(map(str, ENSEMBLES.get(name, ())))
        mean = float(np.mean(row))
        lines.append(f"| {name} | {transforms} | {cells} | {mean:.4f} | {mean - plain:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (its config.toml) or a config")
    parser.add_argument("model", help="a bundled name or a model file")
    parser.add_argument("--data-root", help="where the run's data is (default: as configured)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15.0, 25.0, 50.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.run / "config.toml" if args.run.is_dir() else args.run)
    if args.data_root:
        config.data.root = args.data_root
    try:
        images = load_validation_by_sigma(config, args.sigmas)
    except DataError as error:
        raise SystemExit(f"{args.run}: {error}") from None
    results = ensemble_scores(load_model(args.model), images, progress=True)
    print(table(results, args.sigmas))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
