r"""Training throughput of FDN and of the DnCNN baseline, on the same device and data shape.

Run: ``python benchmarks/train_throughput.py [--device cpu|cuda] [--batch 16] [--patch 64]
[--steps 5] [--threads 2]``. Each model takes ``steps`` timed optimisation steps (Adam, its
own loss, the trainer's step code) after two warm-up steps, on random patches; iterations/s
and images/s are medians over the timed steps. The paper's settings are batch 16-32 at
64x64 (CelebA) to 144x144 (SIDD); the default is CelebA-like at batch 16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fdn.config import config_from_dict
from fdn.training import _Objective, build_model


def step_times(kind: str, device: torch.device, batch: int, patch: int, steps: int) -> list[float]:
    config = config_from_dict({"model": {"kind": kind}, "data": {"patch_size": patch}})
    model = build_model(config).to(device).train()
    objective = _Objective(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    clean = torch.rand(batch, 3, patch, patch, device=device)
    noisy = clean + 50 / 255 * torch.randn_like(clean)
    times = []
    for step in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = objective(noisy, clean, step)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict = {
        "device": name,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "patch": args.patch,
        "torch": torch.__version__,
    }
    for kind in ("fdn", "dncnn"):
        median = statistics.median(step_times(kind, device, args.batch, args.patch, args.steps))
        results[kind] = {
            "iterations_per_s": 1 / median,
            "images_per_s": args.batch / median,
            "seconds_per_iteration": median,
        }
    results["fdn_over_dncnn_time"] = (
        results["fdn"]["seconds_per_iteration"] / results["dncnn"]["seconds_per_iteration"]
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
