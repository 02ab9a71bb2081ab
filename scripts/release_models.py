r"""Packages trained runs as the bundled models in ``src/fdn/weights`` (maintainers only).

For each run: the model (its final file, or the last checkpoint of a run that was stopped)
is stored in float16 when that costs under 0.01 dB of PSNR on a check set (else float32),
its SHA-256 is recorded, and ``models.json`` gets the record of how it was trained.

Run: ``python scripts/release_models.py NAME=RUN_DIR [NAME=RUN_DIR ...] --check-data DIR``
where the check set is clean images noised at sigma 25 from a fixed seed (centre crops).
Measured PSNRs are added to the record afterwards with ``--psnr NAME=results.json`` (an
``fdn eval --out`` results file that has NAME as a method).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch

from fdn.config import config_from_dict
from fdn.data import _centre_crop, _load, _to_tensor, list_images
from fdn.metrics import psnr
from fdn.model import FDN
from fdn.noise import add_gaussian_noise, noise_seed
from fdn.serialization import load_model, save_model
from fdn.training import CHECKPOINT, build_model

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "fdn" / "weights"


def trained_model(run_dir: Path) -> tuple[FDN, dict, int]:
    """The run's model, its config dict, and the iterations it was trained for."""
    checkpoint = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    model = build_model(config_from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint["config"], checkpoint["step"]


@torch.no_grad()
def check_psnr(model: FDN, folder: Path, count: int = 10, crop: int = 128) -> float:
    scores = []
    for path in list_images(folder)[:count]:
        clean = _centre_crop(_to_tensor(_load(path, model.config.in_channels))[None], crop)
        noisy = add_gaussian_noise(clean, 25, noise_seed(path.name, 25))
        scores.append(psnr(model.denoise(noisy), clean).item())
    return sum(scores) / len(scores)


def training_seconds(run_dir: Path, batch_size: int) -> float:
    """Time spent in training steps, from the log's throughput: a run stopped and resumed in
    a later session does not count the time in between (file times would)."""
    seconds, last_step = 0.0, 0
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "images_per_s" in row and row["images_per_s"] > 0:
            seconds += (row["step"] - last_step) * batch_size / row["images_per_s"]
        last_step = row["step"]
    return seconds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release(name: str, run_dir: Path, check_data: Path) -> dict:
    model, config, iterations = trained_model(run_dir)
    target = WEIGHTS / f"{name}.safetensors"
    save_model(model, target, dtype=torch.float16)
    full, half = check_psnr(model, check_data), check_psnr(load_model(target), check_data)
    storage = "float16"
    if abs(full - half) >= 0.01:
        save_model(model, target)
        storage = "float32"
    wall = training_seconds(run_dir, config["training"]["batch_size"])
    data = config["data"]
    return {
        "file": target.name,
        "sha256": sha256(target),
        "config": model.config.to_dict(),
        "storage": storage,
        "float16_psnr_change_db": half - full,
        "training": {
            "data": data["train"],
            "noise": f"AWGN, sigma uniform in {data['sigma_range']}"
            if data["sigma_range"]
            else f"AWGN, sigma {data['sigma']}",
            "patch_size": data["patch_size"],
            "augment": data["augment"],
            "batch_size": config["training"]["batch_size"],
            "iterations": iterations,
            "optimizer": f"Adam lr {config['optim']['lr']}, milestones "
            f"{config['optim']['milestones']}, gamma {config['optim']['gamma']}",
            "loss": "{lambda_nll} * NLL + {lambda_rec} * L1".format(**config["optim"]),
            "seed": config["training"]["seed"],
            "hardware": os.environ.get("FDN_TRAINED_ON", "CPU"),
            "wall_hours": round(wall / 3600, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="NAME=RUN_DIR")
    parser.add_argument(
        "--check-data",
        type=Path,
        action="append",
        default=[],
        help="clean images for the float16 check, one per run, in order",
    )
    parser.add_argument(
        "--psnr",
        action="append",
        default=[],
        metavar="NAME=RESULTS.json",
        help="add an fdn eval results.json summary to NAME's record",
    )
    args = parser.parse_args()
    table_path = WEIGHTS / "models.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    for entry, check in zip(args.runs, args.check_data, strict=True):
        name, run_dir = entry.split("=", 1)
        table[name] = release(name, Path(run_dir), check)
        print(
            f"{name}: {table[name]['storage']}, "
            f"float16 change {table[name]['float16_psnr_change_db']:+.4f} dB"
        )
    for entry in args.psnr:
        name, results = entry.split("=", 1)
        record = table[name].setdefault("psnr_db", {})
        for row in json.loads(Path(results).read_text())["means"]:
            if row["method"] == name:
                sigma = f"sigma{row['sigma']:g}"
                record.setdefault(row["dataset"], {})[sigma] = round(row["psnr"], 2)
    table_path.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
