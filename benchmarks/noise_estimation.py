r"""How well each noise-level estimator (``fdn.estimate_noise``) finds the AWGN sigma.

For every image of every folder and every sigma, the noisy image ``fdn eval`` makes (the same
seeds, :meth:`fdn.noise.AWGN.seed_for`) goes through each estimator; the table gives the mean
absolute error and the mean signed error (bias), on the 0-255 scale. ``flow-raw`` is the flow
estimator without its calibration.

``--fit`` instead fits the flow estimator's calibration on training images: the mean raw
estimate at each sigma of a grid, per bundled model, printed as JSON (each model's
``noise_calibration``); ``--write`` stores it in the model's record in ``models.json``
(``--models-json``, the package's by default), where the estimator reads it. A release drops
it: fit again after each. Fit on training folders only, never on a test set.

    OMP_NUM_THREADS=1 nice python benchmarks/noise_estimation.py --fit --write --limit 24 \
        --data ../shared/data/train/CBSD432 ../shared/data/train/Train400
    OMP_NUM_THREADS=1 nice python benchmarks/noise_estimation.py \
        --data ../shared/data/test/CBSD68 ../shared/data/test/BSD68
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from fdn.evaluation import find_dataset
from fdn.images import read_array
from fdn.noise import AWGN
from fdn.noise_level import METHODS, _calibrated, estimate_noise, flow_model_name
from fdn.pretrained import data_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_table import add_options, write_or_print

FIT_SEED = 1  # the noise seed of the fit: not the base seed 0 of the measurements
FIT_SIGMAS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 55.0)


def noisy_images(folder: str, sigma: float, limit: int | None, seed: int):  # noqa: ANN201
    """(name, noisy (H, W, C) float32) for each image of ``folder``, as fdn eval noises it."""
    dataset = find_dataset(folder, limit=limit)
    noise = AWGN(sigma)
    for item in dataset.items:
        clean = read_array(item.clean)
        yield item.name, noise.sample(clean, noise.seed_for(item.name, seed))


def fit(folders: list[str], limit: int | None) -> dict[str, dict]:
    """Each bundled model's ``noise_calibration``: its mean raw estimate at each sigma of
    :data:`FIT_SIGMAS` on the images of ``folders`` (each folder's images go to the model for
    their channel count)."""
    raws: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    data: dict[str, list[str]] = defaultdict(list)
    for folder in folders:
        for sigma in FIT_SIGMAS:
            for _, noisy in noisy_images(folder, sigma, limit, seed=FIT_SEED):
                model = flow_model_name(noisy.shape[2])
                raws[model][sigma].append(estimate_noise(noisy, "flow", calibrate=False))
                if folder not in data[model]:
                    data[model].append(folder)
    table = {}
    for model, by_sigma in raws.items():
        means = [float(np.mean(by_sigma[s])) for s in FIT_SIGMAS]
        if any(b <= a for a, b in itertools.pairwise(means)):
            raise SystemExit(f"{model}: the raw estimate is not increasing in sigma: {means}")
        table[model] = {
            "sigmas": list(FIT_SIGMAS),
            "raw": [round(m, 3) for m in means],
            "images": len(by_sigma[FIT_SIGMAS[0]]),
            "seed": FIT_SEED,
            "data": ", ".join(data_name(model, folder) for folder in data[model]),
        }
    return table


def measure(
    folders: list[str], sigmas: list[float], limit: int | None, estimators: list[str]
) -> list[dict]:
    rows = []
    methods = [*estimators, "flow-raw"] if "flow" in estimators else list(estimators)
    for folder in folders:
        name = Path(folder).resolve().name
        for sigma in sigmas:
            errors: dict[str, list[float]] = defaultdict(list)
            seconds: dict[str, float] = defaultdict(float)
            for _, noisy in noisy_images(folder, sigma, limit, seed=0):
                for method in estimators:
                    start = time.perf_counter()
                    if method == "flow":
                        raw = estimate_noise(noisy, "flow", calibrate=False)
                        seconds[method] += time.perf_counter() - start
                        model = flow_model_name(noisy.shape[2])
                        errors["flow"].append(_calibrated(raw, model) - sigma)
                        errors["flow-raw"].append(raw - sigma)
                        continue
                    errors[method].append(estimate_noise(noisy, method) - sigma)
                    seconds[method] += time.perf_counter() - start
            for method in methods:
                values = np.array(errors[method])
                rows.append(
                    {
                        "data": name,
                        "sigma": sigma,
                        "method": method,
                        "images": len(values),
                        "mae": float(np.abs(values).mean()),
                        "bias": float(values.mean()),
                        "max_error": float(np.abs(values).max()),
                        "seconds": seconds[method.removesuffix("-raw")] / len(values),
                    }
                )
    return rows


def markdown(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| Data | sigma | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    cells: dict[tuple[str, float], dict[str, str]] = defaultdict(dict)
    for r in rows:
        cells[r["data"], r["sigma"]][r["method"]] = f"{r['mae']:.2f} ({r['bias']:+.2f})"
    for (data, sigma), by_method in cells.items():
        lines.append(f"| {data} | {sigma:g} | " + " | ".join(by_method[m] for m in methods) + " |")
    for data in dict.fromkeys(r["data"] for r in rows):
        means = [
            np.mean([r["mae"] for r in rows if r["data"] == data and r["method"] == m])
            for m in methods
        ]
        lines.append(f"| {data} | mean | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    seconds = [np.mean([r["seconds"] for r in rows if r["method"] == m]) for m in methods]
    lines += [
        "",
        "Seconds per image: "
        + ", ".join(f"{m} {s:.3g}" for m, s in zip(methods, seconds, strict=True)),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR", help="image folders")
    parser.add_argument(
        "--sigmas", nargs="+", type=float, default=[5, 15, 25, 50], help="AWGN levels (0-255)"
    )
    parser.add_argument("--limit", type=int, help="only the first N images of each folder")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="estimators to run"
    )
    parser.add_argument("--fit", action="store_true", help="fit the flow's calibration instead")
    add_options(parser, "noise_calibration")  # with --fit
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.write and not args.fit:
        parser.error("--write stores what --fit fits: give both")
    torch.set_num_threads(1)
    if args.fit:
        write_or_print(args, "noise_calibration", fit(args.data, args.limit))
        return 0
    rows = measure(args.data, args.sigmas, args.limit, args.methods)
    print(markdown(rows), end="")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
