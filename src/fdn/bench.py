r"""``fdn bench``: inference time and memory of FDN against DnCNN (and BM3D), side by side.

Each (method, size) runs in a fresh process, so its peak memory is its own: the resident set
(CPU) or the allocator's peak (CUDA) above what the process held before the first denoise.
Times are medians over ``repeats`` runs after one warm-up, with torch's threads pinned.
Weights are random (speed does not depend on their values); FDN's ActNorm is initialised.
Every process runs with glibc's malloc tuned as ``fdn`` runs (:mod:`fdn.runtime`), unless
``tune_allocator=False``: without it, DnCNN spends about half its CPU time faulting in fresh
pages, which flatters every ratio against it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fdn.baselines.dncnn import DnCNN
    from fdn.model import FDN

__all__ = ["bench", "device_name", "measure"]


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def device_name(device: str) -> str:
    if _is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def _model(method: str, device: str) -> FDN | DnCNN:
    torch.manual_seed(0)
    model: FDN | DnCNN
    if method == "fdn":
        from fdn.model import FDN

        model = FDN().train()
        with torch.no_grad():
            model(torch.rand(2, 3, 32, 32))
    else:
        from fdn.baselines.dncnn import DnCNN

        model = DnCNN(in_channels=3)
    return model.to(device).eval()


def _flops(method: str, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(method, "cpu").to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.denoise(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(
    method: str,
    size: int,
    device: str,
    threads: int,
    repeats: int,
    tune_allocator: bool = True,
    precision: str = "fp32",
) -> dict:
    """Times one method at one size in this process; returns a JSON-ready dict."""
    from fdn import runtime
    from fdn.denoising import precision_context

    if tune_allocator:
        runtime.tune_allocator()
    torch.set_num_threads(threads)
    if method == "bm3d":
        import bm3d
        import numpy as np

        image = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
        run = lambda: bm3d.bm3d_rgb(image, 25 / 255)  # noqa: E731
        before = _rss_bytes()
    else:
        model = _model(method, device)
        noisy = torch.rand(1, 3, size, size, device=device)
        before = _rss_bytes()
        if _is_cuda(device):
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)

        def run() -> None:
            with torch.no_grad(), precision_context(precision, device):
                model.denoise(noisy)
            if _is_cuda(device):
                torch.cuda.synchronize(device)

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    if _is_cuda(device) and method != "bm3d":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {
        "method": method,
        "size": size,
        "seconds": statistics.median(times),
        "peak_memory_mb": max(peak, 0) / 2**20,
        "allocator": "tuned" if runtime.allocator_tuned() else "default",
    }


def _in_subprocess(
    method: str,
    size: int,
    device: str,
    threads: int,
    repeats: int,
    tune_allocator: bool,
    precision: str,
) -> dict:
    arguments = (
        f"{method!r}, {size}, {device!r}, {threads}, {repeats}, {tune_allocator}, {precision!r}"
    )
    code = f"import json; from fdn.bench import measure; print(json.dumps(measure({arguments})))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} at {size}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(
    sizes: Sequence[int],
    device: str = "cpu",
    threads: int = 1,
    repeats: int = 3,
    with_bm3d: bool = True,
    say: Callable[[str], object] | None = None,
    tune_allocator: bool = True,
    precision: str = "fp32",
) -> dict:
    """Times FDN, DnCNN and (when installed and on CPU) BM3D at each size."""
    from fdn.info import count_parameters

    methods = ["fdn", "dncnn"]
    notes = []
    if with_bm3d and device == "cpu":
        try:
            import bm3d  # noqa: F401

            methods.append("bm3d")
        except ImportError:
            notes.append("BM3D skipped: pip install 'fdn[baselines]' to time it")
    rows = []
    for size in sizes:
        for method in methods:
            if say:
                say(f"timing {method} at {size}x{size} ...")
            rows.append(
                _in_subprocess(method, size, device, threads, repeats, tune_allocator, precision)
            )
    models = {
        method: {
            "parameters": count_parameters(_model(method, "cpu")),
            "gflops_256": _flops(method, 256) / 2e9,  # MACs, the paper's convention
        }
        for method in ("fdn", "dncnn")
    }
    for row in rows:
        if row["method"] in models:
            macs = models[row["method"]]["gflops_256"] * (row["size"] / 256) ** 2
            row["gmacs_per_second"] = macs / row["seconds"]
    ratios = {}
    for size in sizes:
        by_method = {row["method"]: row for row in rows if row["size"] == size}
        ratios[str(size)] = by_method["fdn"]["seconds"] / by_method["dncnn"]["seconds"]
    return {
        "device": device,
        "device_name": device_name(device),
        "threads": threads,
        "repeats": repeats,
        "precision": precision,
        "allocator": "tuned" if all(row["allocator"] == "tuned" for row in rows) else "default",
        "torch": torch.__version__,
        "models": models,
        "results": rows,
        "fdn_over_dncnn_time": ratios,
        "fdn_over_dncnn_macs": models["fdn"]["gflops_256"] / models["dncnn"]["gflops_256"],
        "notes": notes,
    }
