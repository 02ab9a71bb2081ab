r"""The figures the core issue asks for: round-trip error and CPU denoise time.

Run: ``python benchmarks/core_numbers.py [--repeats 5]``. Weights are randomised the same way
as in the tests (ActNorm initialised on data, every parameter perturbed), since exactness is a
property of the architecture, not of training. Times are medians over repeats after one
warm-up, with torch's intra-op threads pinned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fdn import FDN
from fdn.bench import median_seconds
from fdn.info import count_parameters, denoise_flops

from helpers import randomize


def round_trip_error(dtype: torch.dtype, shape: tuple[int, ...], scale: float) -> float:
    torch.manual_seed(0)
    model = randomize(FDN(), shape=(4, 3, 32, 32), scale=scale).to(dtype)
    y = torch.rand(shape, dtype=dtype)
    with torch.no_grad():
        return (model.decode(model.encode(y)[0]) - y).abs().max().item()


def denoise_seconds(threads: int, size: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = randomize(FDN(), shape=(4, 3, 32, 32), scale=0.02).float()
    y = torch.rand(1, 3, size, size)
    with torch.no_grad():
        model.denoise(y)  # warm-up
        return median_seconds(lambda: model.denoise(y), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    results = {
        "parameters_rgb": count_parameters(FDN()),
        "parameters_grey": count_parameters(FDN(in_channels=1)),
        "gflops_rgb_256": denoise_flops(FDN()) / 2e9,
        "gflops_grey_256": denoise_flops(FDN(in_channels=1)) / 2e9,
        "round_trip_float64_2x3x128x128": round_trip_error(torch.float64, (2, 3, 128, 128), 0.1),
        "round_trip_float32_2x3x128x128": round_trip_error(torch.float32, (2, 3, 128, 128), 0.1),
        "round_trip_float32_2x3x128x128_mild": round_trip_error(
            torch.float32, (2, 3, 128, 128), 0.02
        ),
        "round_trip_float32_2x3x128x128_at_init": round_trip_error(
            torch.float32, (2, 3, 128, 128), 0.0
        ),
    }
    for threads in (1, 2):
        results[f"denoise_{args.size}_seconds_{threads}_threads"] = denoise_seconds(
            threads, args.size, args.repeats
        )
    results["torch"] = torch.__version__
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
