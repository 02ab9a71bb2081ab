r"""Which thread count ``fdn denoise`` should use by default, on a quiet machine and a busy one.

Run: ``python benchmarks/threads.py [--size 1024] [--repeats 3] [--busy 0 1]``.

Each variant is a fresh ``fdn denoise`` process on the same ``size x size`` colour photo-like
image (the time a user waits, start-up and model load included); the variants take turns in
each round, so drift slows all alike, and the median of ``repeats`` rounds is reported. With
``--busy N``, N competing CPU-bound processes (one-thread matrix products, at normal priority,
as another user's job would be) run throughout. The variants:

- ``1 thread``: ``--threads 1``.
- ``N threads, spin``: ``--threads N`` (N = the usable cores) with OpenMP's threads spinning
  while they wait (``OMP_WAIT_POLICY=ACTIVE``), as PyTorch ran before fdn chose its default.
- ``N threads, passive``: the same with ``OMP_WAIT_POLICY=PASSIVE``.
- ``default``: no option, no environment: what ``fdn denoise`` does now.

Pause other jobs of your own first: the ``--busy 0`` row is meant to be a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

COMPETITOR = (
    "import torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)


def photo_like(size: int, path: Path) -> None:
    """A smooth random colour image with AWGN of sigma 25, saved as PNG."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (size // 32 + 1, size // 32 + 1, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float64)
    noisy = np.clip(np.round(smooth + rng.normal(0, 25, smooth.shape)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(path)


def variants(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
    }
    return {
        "1 thread": (["--threads", "1"], clean),
        f"{cores} threads, spin": (
            ["--threads", str(cores)],
            {**clean, "OMP_WAIT_POLICY": "ACTIVE"},
        ),
        f"{cores} threads, passive": (
            ["--threads", str(cores)],
            {**clean, "OMP_WAIT_POLICY": "PASSIVE"},
        ),
        "default": ([], clean),
    }


def run_once(image: Path, out: Path, args: list[str], env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "fdn", "denoise", str(image), "-o", str(out)]
    start = time.perf_counter()
    subprocess.run(
        [*command, "--device", "cpu", "--no-progress", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def measure(image: Path, folder: Path, busy: int, repeats: int) -> dict[str, float]:
    cores = len(os.sched_getaffinity(0))
    competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(busy)]
    try:
        time.sleep(2 if busy else 0)
        chosen = variants(cores)
        times: dict[str, list[float]] = {name: [] for name in chosen}
        run_once(image, folder / "warm", *chosen["1 thread"])  # page cache, .pyc files
        for _ in range(repeats):
            for name, (args, env) in chosen.items():
                times[name].append(run_once(image, folder / name.replace(" ", "_"), args, env))
        return {name: statistics.median(values) for name, values in times.items()}
    finally:
        for process in competitors:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side (1024)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, median reported (3)")
    parser.add_argument(
        "--busy", type=int, nargs="+", default=[0, 1], help="competing processes (0 1)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        image = folder / "noisy.png"
        photo_like(args.size, image)
        cpus, size = os.cpu_count(), args.size
        print(f"fdn denoise, {size}x{size} colour, {cpus} CPUs, median of {args.repeats} runs")
        for busy in args.busy:
            medians = measure(image, folder, busy, args.repeats)
            one = medians["1 thread"]
            print(f"\n{busy} competing process(es):")
            for label, seconds in medians.items():
                print(f"  {label:22s} {seconds:6.2f} s  ({seconds / one:.2f}x one thread)")


if __name__ == "__main__":
    main()
