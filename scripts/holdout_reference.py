r"""A baseline's PSNR on a run's validation images: the very noisy images that training's
validation scores (fixed-seed noise, ``fdn.data.load_validation``), so the number is a
reference line for the run's curve (``fdn curves --hline BM3D=VALUE``).

Run: ``python scripts/holdout_reference.py RUN_DIR_OR_CONFIG [--method bm3d] [--data-root DIR]``.
It needs a fixed ``data.sigma`` (a non-blind run) and the ``baselines`` extra for BM3D/NLM.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fdn.baselines.classical import BM3D, NonLocalMeans
from fdn.config import load_config
from fdn.data import load_validation
from fdn.metrics import psnr

METHODS = {"bm3d": BM3D, "nlm": NonLocalMeans}


def reference_psnr(config_path: Path, method: str, data_root: str | None = None) -> float:
    """The mean PSNR of ``method`` told the run's sigma, on the run's validation images."""
    config = load_config(config_path)
    if data_root:
        config.data.root = data_root
    sigma = config.data.sigma
    if config.data.kind != "awgn" or config.data.sigma_range or not sigma:
        raise SystemExit(f"{config_path}: a reference needs AWGN at one fixed data.sigma")
    denoiser = METHODS[method]()
    images = load_validation(config)
    if not images:
        raise SystemExit(f"{config_path}: the config has no validation images")
    scores = [
        psnr(denoiser.denoise(noisy, sigma), clean).item()
        for _, noisy, clean in tqdm(images, desc=method, unit="image")
    ]
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (its config.toml) or a config")
    parser.add_argument("--method", choices=sorted(METHODS), default="bm3d")
    parser.add_argument("--data-root", help="where the run's data is now (default: as trained)")
    args = parser.parse_args(argv)
    config = args.run / "config.toml" if args.run.is_dir() else args.run
    value = reference_psnr(config, args.method, args.data_root)
    print(f"{args.method}: {value:.3f} dB on the validation images of {config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
