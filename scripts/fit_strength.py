r"""Fits a bundled model's strength curve (maintainers only): the strength its default denoise
uses, by the noise it finds in an image (``FDN.strength_curve``).

A model trained to zero its noise code z_N does not always do best at zeroing it: where it
still keeps some image detail in z_N (lightly noisy images, most of all through the small
grey model), scaling z_N by ``1 - strength`` with a strength below 1 keeps that detail. For
each sigma of a grid, the run's held-back training images (the model's ``stage_config``:
``data.holdout``, fixed-seed AWGN and crop as its validation drew them; never a test set) are
encoded once and decoded at the strengths of a grid, from 1 down, until ``--patience``
strengths in a row bring no better mean PSNR (0: the whole grid). Per sigma, the strength
with the best mean PSNR is kept where it beats strength 1 by at least ``--min-gain`` dB (else
1), and the curve's x is the mean :func:`fdn.model.residual_sigma` of the strength-1 denoise
over those images: what the model measures at run time, so the curve needs no noise estimator.

The PSNR rises to one peak as the strength falls from 1, then falls away: at each of the 16
sigmas of the bundled models' last fits over the whole grid (colour and grey, 2026-11-27),
stopping 3 strengths past the best found the same strength, with a quarter (colour) to a
third (grey) of the decodes.

    OMP_NUM_THREADS=1 nice python scripts/fit_strength.py fdn-grey-blind \
        --data-root ../shared/data

writes ``strength_curve`` into ``models.json`` (with what it was fitted on and the gain per
sigma) and prints the table. A release replaces the record and so drops its curve: fit again
after each release. ``--dry-run`` prints without writing. The curve goes into ``models.json``
as it is when the fit ends (``fdn.pretrained.store_calibration``, as the other calibrations
do), so what was written meanwhile stays; a model released again meanwhile gets no curve
(fit again).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from fdn.config import config_from_dict
from fdn.data import load_validation
from fdn.metrics import psnr
from fdn.model import FDN, residual_sigma
from fdn.pretrained import store_calibration
from fdn.serialization import load_model

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "fdn" / "weights"
SIGMAS = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0)
STRENGTHS = tuple(round(0.05 * k, 2) for k in range(21))  # 0, 0.05, ..., 1
PATIENCE = 3  # strengths past the best before the walk down the grid stops


def check_strengths(strengths: tuple) -> None:
    """A grid of strengths must hold 1: every gain is measured against it."""
    if 1.0 not in strengths:
        raise SystemExit("the strengths must include 1 (the baseline)")


def scores(
    model: FDN,
    images: list[tuple[str, torch.Tensor, torch.Tensor]],
    strengths: tuple,
    patience: int = PATIENCE,
) -> tuple[np.ndarray, float]:
    """Mean PSNR of the images at each strength (:func:`image_scores`' rows; NaN for the
    strengths skipped), and their mean residual sigma at strength 1."""
    grid, residual = image_scores(model, images, strengths, patience)
    return grid.mean(axis=1), residual


@torch.no_grad()
def image_scores(
    model: FDN,
    images: list[tuple[str, torch.Tensor, torch.Tensor]],
    strengths: tuple,
    patience: int = PATIENCE,
) -> tuple[np.ndarray, float]:
    """The PSNR of each image at each strength, shape ``(strengths, images)``, and the
    images' mean residual sigma at strength 1.

    Each image is encoded once; the strengths are decoded from the highest down, and after
    ``patience`` strengths in a row without a better mean (0: never) the rest are skipped:
    their rows are NaN."""
    check_strengths(strengths)
    encoded = []
    for _, noisy, clean in images:
        z, _ = model.encode(model.pad(noisy))
        encoded.append((z, noisy, clean))
    grid = np.full((len(strengths), len(images)), np.nan)
    residuals, best, since_best = [], -np.inf, 0
    for k in sorted(range(len(strengths)), key=lambda k: -strengths[k]):
        for i, (z, noisy, clean) in enumerate(encoded):
            height, width = noisy.shape[-2:]
            denoised = model.decode(model.disentangle(z, strengths[k]))[..., :height, :width]
            denoised = denoised.clamp(0, 1)
            grid[k, i] = psnr(denoised, clean).item()
            if strengths[k] == 1.0:
                residuals.append(residual_sigma(noisy, denoised).item())
        mean = grid[k].mean()
        best, since_best = (mean, 0) if mean > best else (best, since_best + 1)
        if patience and since_best >= patience:
            break
    return grid, float(np.mean(residuals))


def fit(
    table: dict,
    name: str,
    weights: Path,
    data_root: str | None,
    sigmas: tuple = SIGMAS,
    strengths: tuple = STRENGTHS,
    min_gain: float = 0.02,
    patience: int = PATIENCE,
) -> dict:
    """The strength curve of ``table[name]``, fitted on its stage's held-back images."""
    record = table[name]
    config = config_from_dict(record["stage_config"])
    if data_root:
        config.data.root = data_root
    if not config.data.holdout or config.validation.folder:
        raise SystemExit(f"{name}: its stage had no held-back images (data.holdout) to fit on")
    check_strengths(strengths)
    model = load_model(weights / record["file"]).eval()
    rows = []
    for sigma in sigmas:
        config.validation.sigmas = [sigma]
        started = time.perf_counter()
        means, residual = scores(model, load_validation(config), strengths, patience)
        best = int(np.nanargmax(means))
        gain = float(means[best] - means[strengths.index(1.0)])
        chosen = strengths[best] if gain >= min_gain else 1.0
        rows.append((sigma, residual, chosen, gain if chosen != 1.0 else 0.0))
        print(
            f"{name} sigma {sigma:g}: residual sigma {residual:.2f}, PSNR at strength "
            + ", ".join(
                f"{s:g}: {m:.3f}" for s, m in zip(strengths, means, strict=True) if not np.isnan(m)
            )
            + f"; chosen {chosen:g} (+{rows[-1][3]:.3f} dB)"
            + f" in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    residuals = [row[1] for row in rows]
    if any(b <= a for a, b in itertools.pairwise(residuals)):
        raise SystemExit(f"{name}: the residual sigma does not grow with sigma: {residuals}")
    return {
        "sigmas": [round(row[1], 3) for row in rows],
        "strengths": [row[2] for row in rows],
        "awgn_sigmas": [row[0] for row in rows],
        "gain_db": [round(row[3], 3) for row in rows],
        "fitted_on": f"{config.data.holdout} held-back images of {config.data.train}",
        "min_gain_db": min_gain,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("--data-root", help="where the models' data is now (default: as trained)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help=argparse.SUPPRESS)
    parser.add_argument("--min-gain", type=float, default=0.02, help="dB over strength 1")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument(
        "--patience",
        type=int,
        default=PATIENCE,
        help="strengths past the best before the walk from 1 down stops (0: the whole grid)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)
    if args.patience < 0:
        parser.error(f"--patience must be 0 or more, got {args.patience}")
    torch.set_num_threads(1)
    table_path = args.weights / "models.json"
    table = json.loads(table_path.read_text())
    curves: dict[str, dict | None] = {}  # None: strength 1 everywhere, no curve
    for name in args.names:
        curve = fit(
            table,
            name,
            args.weights,
            args.data_root,
            tuple(args.sigmas),
            STRENGTHS,
            args.min_gain,
            args.patience,
        )
        print(f"{name}: strength curve {json.dumps(curve)}")
        if all(strength == 1.0 for strength in curve["strengths"]):
            print(f"{name}: strength 1 everywhere; no curve kept")
            curve = None
        curves[name] = curve
    if args.dry_run:
        return 0
    # Into models.json as it is now (a release's --psnr may have written it meanwhile); a
    # model released again meanwhile gets no stale curve (ValueError).
    fitted = {name: table[name].get("sha256") for name in curves}
    try:
        store_calibration(table_path, "strength_curve", curves, fitted)
    except ValueError as error:  # released again meanwhile: one line, not a traceback
        raise SystemExit(f"fit_strength.py: {error}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
