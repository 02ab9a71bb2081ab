r"""How fast ``fdn denoise`` runs on this CPU, and how much memory a 24-megapixel photo takes.

Run: ``python benchmarks/denoise_speed.py [--size 512] [--repeats 3] [--big 6000x4000]``.

- Seconds per megapixel of ``denoise_image`` on a ``size x size`` colour image, with torch's
  threads pinned to 1 and to 2; the median of ``repeats`` runs after one warm-up.
- Peak resident memory (RSS) of whole-image denoises of 0.25 and 1 megapixel, each in its own
  process, and the bytes per pixel they imply (what sets the auto-tiling budget).
- Peak RSS of ``fdn denoise`` on a ``big`` colour JPEG (24 MP by default), in its own process,
  with the default automatic tiling: the run a practitioner makes on a camera photo.

The model is the paper-default FDN with ActNorm initialised on data; speed and memory do not
depend on the weights' values. Malloc is tuned as ``fdn`` tunes it (``fdn.runtime``); run with
``FDN_TUNE_MALLOC=0`` to measure without.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fdn import FDN, denoise_image, save_model, tune_allocator
from fdn.bench import median_seconds


def paper_model() -> FDN:
    torch.manual_seed(0)
    model = FDN().train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))
    return model.eval()


def seconds_per_megapixel(model: FDN, size: int, threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    denoise_image(image, model)  # warm-up
    return median_seconds(lambda: denoise_image(image, model), repeats) / (size * size / 1e6)


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """Runs ``command`` and returns (its peak RSS in GB, seconds)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, seconds


def whole_image_rss(pixels_per_side: int, threads: int) -> float:
    here = str(Path(__file__).parent)
    code = (
        f"import numpy as np, torch, sys; sys.path.insert(0, {here!r});"
        f"torch.set_num_threads({threads});"
        "from denoise_speed import paper_model; from fdn import denoise_image, tune_allocator;"
        "tune_allocator();"
        f"denoise_image(np.zeros(({pixels_per_side}, {pixels_per_side}, 3), np.uint8), "
        "paper_model(), max_pixels=None)"
    )
    return peak_rss_of([sys.executable, "-c", code])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", default="6000x4000", help="WxH of the large photo")
    parser.add_argument("--threads", type=int, default=2, help="threads for the memory runs")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed part")
    args = parser.parse_args()

    tuned = tune_allocator()
    model = paper_model()
    results: dict = {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "allocator": "tuned" if tuned else "default",
    }
    if not args.no_speed:
        for threads in (1, 2):
            results[f"seconds_per_megapixel_{threads}_thread"] = seconds_per_megapixel(
                model, args.size, threads, args.repeats
            )
        print(json.dumps(results, indent=2), flush=True)

    # Memory of whole-image denoises, each in a fresh process (RUSAGE_CHILDREN keeps the max
    # over all children, so run the smaller one first).
    small = whole_image_rss(512, args.threads)
    large = whole_image_rss(1024, args.threads)
    results["peak_rss_gb_whole_0.26MP"] = small
    results["peak_rss_gb_whole_1.05MP"] = large
    results["bytes_per_pixel_whole_image"] = (large - small) * 1e9 / (1024**2 - 512**2)
    print(json.dumps(results, indent=2), flush=True)

    width, height = (int(n) for n in args.big.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        from PIL import Image

        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        noise = np.random.default_rng(0).normal(0, 25, (height, width, 3)).astype(np.float32)
        photo = np.clip(ramp + noise, 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(folder / "photo.jpg", quality=95)
        del photo, noise
        model_path = save_model(model, folder / "fdn.safetensors")
        command = [
            sys.executable,
            "-m",
            "fdn",
            "denoise",
            str(folder / "photo.jpg"),
            "-o",
            str(folder / "out"),
            "--model",
            str(model_path),
            "--quiet",
            "--threads",
            str(args.threads),
        ]
        rss, seconds = peak_rss_of(command)
    results[f"fdn_denoise_{width}x{height}_peak_rss_gb"] = rss
    results[f"fdn_denoise_{width}x{height}_seconds"] = seconds
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
