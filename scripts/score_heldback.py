r"""Scores models on a run's held-back images at strength 1 and at their best strength
(maintainers: the release decision).

A run's validation scores its moving average at strength 1, but ``fdn denoise`` applies the
model's strength curve (``scripts/fit_strength.py``), fitted after each release. Two models
whose strength-1 scores differ can score the same once each has its curve: a PSNR-trained
branch gained 0.021 dB over its L1 twin at strength 1 and 0.002 at the best strength
(``docs/training.md``). So a candidate is compared with the release at both: per sigma, the
mean PSNR at strength 1 and at the best strength of a grid (what a fitted curve can at most
reach), on the run's held-back images (its ``data.holdout`` or validation folder, fixed-seed
noise, as its validation drew them; never a test set).

    OMP_NUM_THREADS=1 python scripts/score_heldback.py ~/fdn-runs/grey9-psnr \
        fdn-grey-blind ~/fdn-runs/grey9-psnr/best.safetensors --data-root ../shared/data

prints a row per model (the best strength in brackets) and the two means, then how each
model after the first differs from it image by image, at strength 1 and at the best strength:
the mean difference, its standard error and on how many images it is better (the release
decision's figures, ``scripts/release_models.py``). A model may also be
a run's checkpoint, ``RUN/checkpoint.pt`` (its moving average, as a release takes it, at any
step, not only at a validation) or ``RUN/checkpoint.pt@0.9995`` (the average of that decay it
keeps beside its own, ``training.ema_extra``); ``RUN/checkpoint.pt@raw`` is the weights the
optimiser steps, without an average, and ``RUN/checkpoint.pt@all`` the run's own average and
every one beside it, one row each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from fdn.config import TrainConfig, load_config
from fdn.data import DataError, load_validation_by_sigma
from fdn.metrics import paired_difference
from fdn.model import FDN
from fdn.runstate import load_checkpoint
from fdn.serialization import load_model
from fdn.training import TrainingError, checkpoint_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_strength import check_strengths, image_scores

SIGMAS = (15.0, 25.0, 50.0)
STRENGTHS = tuple(round(0.6 + 0.05 * k, 2) for k in range(9))  # 0.6, 0.65, ..., 1


def best_strength_scores(
    models: dict[str, FDN],
    config: TrainConfig,
    sigmas: tuple = SIGMAS,
    strengths: tuple = STRENGTHS,
) -> dict[str, dict]:
    """Per model: ``{"strength_1": [...], "best": [...], "best_strength": [...]}`` over
    ``sigmas``, the mean PSNR of ``config``'s held-back images (its validation's, with the
    sigma set to each in turn; ``config`` is left as it was), and under ``"images_1"`` and
    ``"images_best"`` each image's PSNR, sigma after sigma, at strength 1 and at its sigma's
    best strength (:func:`comparisons`)."""
    check_strengths(strengths)
    try:
        images_by_sigma = load_validation_by_sigma(config, sigmas)
    except DataError as error:
        raise SystemExit(str(error)) from None
    results = {}
    for key, model in models.items():
        row: dict[str, list] = {
            name: [] for name in ("strength_1", "best", "best_strength", "images_1", "images_best")
        }
        for sigma in sigmas:
            grid, _ = image_scores(model.eval(), images_by_sigma[float(sigma)], strengths)
            means = grid.mean(axis=1)
            best = int(np.nanargmax(means))  # the strengths the walk skipped are NaN
            one = strengths.index(1.0)
            row["strength_1"].append(float(means[one]))
            row["best"].append(float(means[best]))
            row["best_strength"].append(strengths[best])
            row["images_1"] += grid[one].tolist()
            row["images_best"] += grid[best].tolist()
        results[key] = row
    return results


def expanded(specs: list[str]) -> list[str]:
    """``specs`` with each ``PATH.pt@all`` replaced by the checkpoint's own average and every
    one it keeps beside it (``PATH.pt``, ``PATH.pt@DECAY``...), to compare horizons at once."""
    out = []
    for spec in specs:
        if not spec.endswith(".pt@all"):
            out.append(spec)
            continue
        path = spec.removesuffix("@all")
        try:
            kept = load_checkpoint(Path(path)).get("ema_extra", {})
        except (TrainingError, FileNotFoundError) as error:
            raise SystemExit(f"{spec}: {error}") from None
        out += [path] + [f"{path}@{key}" for key in kept]
    return out


def model_of(spec: str) -> FDN:
    """A bundled name, a model file, or a checkpoint ``PATH.pt[@DECAY]`` (its moving average,
    or the one of that decay kept beside it; ``@raw``: its weights without an average)."""
    path, _, decay = spec.partition("@") if ".pt@" in spec else (spec, "", "")
    if not path.endswith(".pt"):
        return load_model(spec)
    try:
        if decay == "raw":
            model, _ = checkpoint_model(path, raw=True)
        else:
            model, _ = checkpoint_model(path, float(decay) if decay else None)
    except (TrainingError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"{spec}: {error}") from None
    if not isinstance(model, FDN):
        raise SystemExit(f"{spec}: not an FDN run")
    return model


def score(
    config_path: Path,
    models: list[str],
    data_root: str | None = None,
    sigmas: tuple = SIGMAS,
    strengths: tuple = STRENGTHS,
) -> dict[str, dict]:
    """:func:`best_strength_scores` of bundled names or model files, on the held-back images
    of the run config at ``config_path``."""
    config = load_config(config_path)
    if data_root:
        config.data.root = data_root
    try:
        return best_strength_scores(
            {spec: model_of(spec) for spec in expanded(models)}, config, sigmas, strengths
        )
    except SystemExit as error:
        raise SystemExit(f"{config_path}: {error}") from None


def table(results: dict[str, dict], sigmas: tuple = SIGMAS) -> str:
    """A markdown table: per sigma the strength-1 and best PSNR, then the two means."""
    head = " | ".join(f"sigma {s:g}: s1 / best" for s in sigmas)
    lines = [f"| model | {head} | mean s1 | mean best |", "|---" * (len(sigmas) + 3) + "|"]
    for spec, row in results.items():
        cells = " | ".join(
            f"{one:.3f} / {best:.3f} ({strength:g})"
            for one, best, strength in zip(
                row["strength_1"], row["best"], row["best_strength"], strict=True
            )
        )
        means = f"{np.mean(row['strength_1']):.4f} | {np.mean(row['best']):.4f}"
        lines.append(f"| {spec} | {cells} | {means} |")
    return "\n".join(lines)


def comparisons(results: dict[str, dict]) -> list[str]:
    """A line per model after the first: how it differs from the first, image by image over
    every sigma, at strength 1 and at the best strengths (:func:`fdn.metrics.paired_difference`:
    the mean difference, its standard error, on how many images it is better)."""
    (first, base), *others = results.items()
    return [
        f"{spec} against {first}: strength 1 "
        f"{paired_difference(row['images_1'], base['images_1'])}; best strength "
        f"{paired_difference(row['images_best'], base['images_best'])}"
        for spec, row in others
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (its config.toml) or a config")
    parser.add_argument(
        "models",
        nargs="+",
        help="bundled names, model files, or checkpoints (RUN/checkpoint.pt[@DECAY|@raw|@all])",
    )
    parser.add_argument("--data-root", help="where the run's data is now (default: as trained)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = args.run / "config.toml" if args.run.is_dir() else args.run
    sigmas = tuple(args.sigmas)
    results = score(config, args.models, args.data_root, sigmas)
    print("\n".join([table(results, sigmas), *comparisons(results)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
