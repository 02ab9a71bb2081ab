r"""Calibrates the likelihood guard of ``fdn denoise``: each bundled model's ``ood_guard``.

For each bundled model, random patches of its TRAINING folder (CBSD432 for colour, Train400
for grey; the faces of faces/celeba/train for fdn-faces-sigma50) as its last training stage
drew them (``fdn.data.TrainingPatches`` built from ``stage_config`` in models.json, so with
its patch size, flips and rotations, noise and held-back images: the blind models 96 x 96
with a random flip or rotation and AWGN of sigma uniform in [0, 55]; the faces model 64 x 64,
no augmentation, sigma 50) are scored in bits/dim, each both in float (as in training) and
rounded and clipped to 8 bits (as image files arrive). The threshold is the 99.9th percentile
of those scores plus a margin. The script prints each model's ``ood_guard`` (the threshold,
the scores' median, 99.9th percentile and maximum, a checkerboard's score, and what was
measured on) as JSON; ``--write`` stores it in the model's record in ``models.json``
(``--models-json``, the package's by default), which ``fdn.likelihood.ood_threshold`` reads.
A release drops it: calibrate again after each. Calibrate on training folders only, never on
a test set.

``--measure`` then reports, for other folders (held-out test sets, to REPORT only), the
fraction of whole images at each sigma (noised as ``fdn eval`` does, then stored in 8 bits)
that the guard would warn about, as ``fdn denoise`` scores them (the same pass).

    OMP_NUM_THREADS=1 nice python benchmarks/ood_calibration.py --write \
        --data ../shared/data/train/CBSD432 ../shared/data/train/Train400 \
        --measure ../shared/data/test/CBSD68 ../shared/data/test/BSD68

A folder is matched with the blind model of its channel count; ``NAME=FOLDER`` names the
model (``--data fdn-faces-sigma50=../shared/data/faces/celeba/train``, and so in
``--measure``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fdn.config import config_from_dict
from fdn.data import TrainingPatches, list_images
from fdn.denoising import denoise_image
from fdn.images import read_array
from fdn.likelihood import Likelihood, bits_per_dim_map, ood_threshold
from fdn.noise import AWGN
from fdn.pretrained import DEFAULT_MODELS, data_name, load_pretrained, model_record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_table import add_options, write_or_print

PERCENTILE = 99.9
MARGIN = 2.0  # bits/dim above the percentile
MEASURE_SIGMAS = (0.0, 15.0, 25.0, 50.0)


def _channels(folder: str) -> int:
    return read_array(list_images(folder)[0]).shape[2]


def _model_and_folder(spec: str) -> tuple[str, str]:
    """``NAME=FOLDER``, or a folder alone: the blind model of its channel count."""
    name, _, folder = spec.rpartition("=")
    return name or DEFAULT_MODELS[3 if _channels(folder) >= 3 else 1], folder


def _training_patches(model_name: str, folder: str, seed: int) -> TrainingPatches:
    """The model's last training stage's patch draw (``stage_config`` in models.json: patch
    size, augmentation, noise and hold-out), reading the training images from ``folder``."""
    stage = model_record(model_name).get("stage_config")
    if not stage:
        raise SystemExit(f"{model_name}: models.json has no stage_config to draw patches as")
    stage = {**stage, "data": {**stage["data"], "train": str(Path(folder).resolve())}}
    return TrainingPatches(config_from_dict(stage), seed)


def training_scores(folder: str, model_name: str, patches: int, seed: int) -> np.ndarray:
    """Bits/dim of ``patches`` noisy training patches, drawn as in training (float, not
    clipped) and each also rounded and clipped to 8 bits."""
    model = load_pretrained(model_name)
    draw = _training_patches(model_name, folder, seed)
    scores: list[float] = []
    batch = 64
    for start in range(0, patches, batch):
        floats = torch.stack(
            [draw[index][0] for index in range(start, min(start + batch, patches))]
        )
        stored = (floats.clamp(0, 1) * 255).round() / 255
        with torch.no_grad():
            for y in (floats, stored):
                z, logdet = model.encode(y)
                scores += bits_per_dim_map(z, logdet).mean(dim=(1, 2)).tolist()
    return np.asarray(scores)


def checkerboard(model_name: str) -> tuple[float, float]:
    """A 1-pixel 256x256 checkerboard of 0 and 255 (mean 127.5) through ``fdn denoise``'s
    path: its bits/dim, and the mean of what the denoise makes of it (0-255), both quoted in
    the README and the model card."""
    model = load_pretrained(model_name)
    board = (np.indices((256, 256)).sum(0) % 2).astype(np.uint8) * 255
    board = np.repeat(board[:, :, None], model.config.in_channels, 2)
    likelihood = Likelihood()
    denoised = denoise_image(board, model, likelihood=likelihood)
    return likelihood.worst, float(np.asarray(denoised, dtype=np.float64).mean())


def measure(folder: str, model_name: str, threshold: float | None) -> None:
    """The guard's statistic on every image of ``folder`` at each sigma, as fdn denoise sees
    a file: noised as fdn eval noises it, stored in 8 bits, scored on the denoise's pass."""
    model = load_pretrained(model_name)
    paths = list_images(folder)
    for sigma in MEASURE_SIGMAS:
        noise = AWGN(sigma)
        scores = []
        for path in paths:
            clean = read_array(path, model.config.in_channels)
            noisy = noise.sample(clean, noise.seed_for(path.stem, 0))
            stored = np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
            likelihood = Likelihood()
            denoise_image(stored, model, likelihood=likelihood)
            scores.append(likelihood.worst)
        values = np.asarray(scores)
        warned = int((values > threshold).sum()) if threshold is not None else 0
        print(
            f"{folder} ({model_name}) sigma {sigma:g}: {len(values)} images, bits/dim "
            f"mean {values.mean():.2f} max {values.max():.2f}; warned {warned}/{len(values)}"
        )


def calibrate(name: str, folder: str, patches: int, seed: int) -> dict:
    """Model ``name``'s ``ood_guard``, measured on ``patches`` patches of ``folder``."""
    started = time.perf_counter()
    scores = training_scores(folder, name, patches, seed)
    cut = float(np.percentile(scores, PERCENTILE))
    board_score, board_mean = checkerboard(name)
    guard = {
        "threshold_bits_per_dim": round(cut + MARGIN, 2),
        "median": round(float(np.median(scores)), 2),
        "percentile_99_9": round(cut, 2),
        "max": round(float(scores.max()), 2),
        "patches": patches,  # each scored twice: in float and stored in 8 bits
        "margin": MARGIN,
        "seed": seed,
        "data": data_name(name, folder),
        "checkerboard_bits_per_dim": round(board_score, 1),
        "checkerboard_denoised_mean": round(board_mean, 1),
    }
    print(
        f"{name} on {folder}: {scores.size} scores in {time.perf_counter() - started:.0f} s; "
        f"bits/dim median {guard['median']}, 99th {np.percentile(scores, 99):.2f}, "
        f"{PERCENTILE}th {guard['percentile_99_9']}, max {guard['max']}; "
        f"threshold {guard['threshold_bits_per_dim']}; checkerboard {board_score:.1f} "
        f"bits/dim, denoised mean {board_mean:.0f}"
    )
    return guard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="[NAME=]training folders")
    parser.add_argument("--patches", type=int, default=4000, help="patches per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", nargs="*", default=[], help="[NAME=]folders to report on")
    add_options(parser, "ood_guard")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    guards = {}
    for spec in args.data:
        name, folder = _model_and_folder(spec)
        guards[name] = calibrate(name, folder, args.patches, args.seed)
    write_or_print(args, "ood_guard", guards)
    for spec in args.measure:
        name, folder = _model_and_folder(spec)
        guard = guards.get(name)
        threshold = (
            guard["threshold_bits_per_dim"] if guard else ood_threshold(load_pretrained(name))
        )
        measure(folder, name, threshold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
