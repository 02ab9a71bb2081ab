r"""``fdn bench``: inference time and memory of FDN against DnCNN (and BM3D), side by side.

Each (method, size) runs in a fresh process, so its peak memory is its own: the resident set
(CPU) or the allocator's peak (CUDA) above what the process held before the first denoise.
Times are medians over ``repeats`` runs after one warm-up, with torch's threads pinned.
The FDN timed is the bundled colour model unless another is named (a bundled name or a model
file), or the paper's configuration with ``paper=True``: that one, and DnCNN, have random
weights (speed does not depend on their values), with FDN's ActNorm initialised. DnCNN and
BM3D take as many channels as the FDN.
Every process runs with glibc's malloc tuned as ``fdn`` runs (:mod:`fdn.runtime`), unless
``tune_allocator=False``: without it, DnCNN spends about half its CPU time faulting in fresh
pages, which flatters every ratio against it.
With ``onnx=True`` the same FDN is also exported (:mod:`fdn.export`) and timed in
onnxruntime, with as many intra-op threads as torch gets.
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

from fdn._version import DISTRIBUTION

if TYPE_CHECKING:
    from fdn.baselines.dncnn import DnCNN
    from fdn.model import FDN

__all__ = ["bench", "device_name", "measure", "median_seconds"]


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def device_name(device: str) -> str:
    if _is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def _fdn(spec: str | None, paper: bool) -> tuple[FDN, str]:
    """The FDN to time and its label (:func:`fdn.info.choose_model`)."""
    from fdn.info import choose_model

    torch.manual_seed(0)
    model, label = choose_model(spec, paper)
    if paper:
        model.train()
        with torch.no_grad():
            model(torch.rand(2, model.config.in_channels, 32, 32))
    return model.eval(), label


def _model(method: str, device: str, spec: str | None, paper: bool, channels: int) -> FDN | DnCNN:
    model: FDN | DnCNN
    if method == "fdn":
        model = _fdn(spec, paper)[0]
    else:
        from fdn.baselines.dncnn import DnCNN

        torch.manual_seed(0)
        model = DnCNN(in_channels=channels)
    return model.to(device).eval()


def _flops(model: FDN | DnCNN, channels: int, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from fdn.model import FDN

    model = model.to("meta")
    counter = FlopCounterMode(display=False)
    image = torch.empty(1, channels, size, size, device="meta")
    with counter, torch.no_grad():
        # At strength 1: a strength curve reads the residual's values, which meta has not.
        model.denoise(image, 1.0) if isinstance(model, FDN) else model.denoise(image)
    return counter.get_total_flops()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``run`` (warm it up first if it needs it)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    method: str,
    size: int,
    device: str,
    threads: int,
    repeats: int,
    tune_allocator: bool = True,
    precision: str = "fp32",
    fdn_model: str | None = None,
    paper: bool = False,
    channels: int = 3,
) -> dict:
    """Times one method at one size on ``channels``-channel images in this process; returns a
    JSON-ready dict. ``fdn_model`` and ``paper`` choose the FDN, as :func:`bench` does; for
    ``method="onnxruntime"``, ``fdn_model`` is the exported ONNX file."""
    from fdn import runtime
    from fdn.denoising import precision_context

    if tune_allocator:
        runtime.tune_allocator()
    torch.set_num_threads(threads)
    if method == "bm3d":
        import bm3d
        import numpy as np

        image = np.random.default_rng(0).random((size, size, channels)).astype(np.float32)
        if channels == 1:
            run = lambda: bm3d.bm3d(image[..., 0], 25 / 255)  # noqa: E731
        else:
            run = lambda: bm3d.bm3d_rgb(image, 25 / 255)  # noqa: E731
        before = _rss_bytes()
    elif method == "onnxruntime":
        from fdn.export import onnx_session

        assert fdn_model is not None
        session = onnx_session(fdn_model, threads)
        image = torch.rand(1, channels, size, size).numpy()
        run = lambda: session.run(None, {"noisy": image})  # noqa: E731
        before = _rss_bytes()
    else:
        model = _model(method, device, fdn_model, paper, channels)
        noisy = torch.rand(1, channels, size, size, device=device)
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
    seconds = median_seconds(run, repeats)
    if _is_cuda(device) and method != "bm3d":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {
        "method": method,
        "size": size,
        "seconds": seconds,
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
    fdn_model: str | None,
    paper: bool,
    channels: int,
) -> dict:
    arguments = (
        f"{method!r}, {size}, {device!r}, {threads}, {repeats}, {tune_allocator}, {precision!r}, "
        f"{fdn_model!r}, {paper}, {channels}"
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
    fdn_model: str | None = None,
    paper: bool = False,
    onnx: bool = False,
) -> dict:
    """Times FDN, DnCNN and (when installed and on CPU) BM3D at each size. The FDN is the
    bundled colour model, or ``fdn_model`` (a bundled name or a model file), or with ``paper``
    the paper's configuration; the report names it (``models["fdn"]["model"]``). ``onnx``
    also times that FDN exported to ONNX in onnxruntime (CPU only)."""
    import tempfile

    from fdn.info import count_parameters

    fdn, label = _fdn(fdn_model, paper)
    channels = fdn.config.in_channels
    methods = ["fdn", "dncnn"]
    notes = []
    if with_bm3d and device == "cpu":
        try:
            import bm3d  # noqa: F401

            methods.append("bm3d")
        except ImportError:
            notes.append(f"BM3D skipped: pip install '{DISTRIBUTION}[baselines]' to time it")
    if onnx and device != "cpu":
        raise ValueError("--onnx times onnxruntime on the CPU only: use --device cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fdn-bench-") as workdir:
        onnx_file = None
        if onnx:
            from fdn.export import export_onnx

            if say:
                say("exporting the FDN to ONNX ...")
            onnx_file = str(export_onnx(fdn, os.path.join(workdir, "fdn.onnx")))
            methods.insert(1, "onnxruntime")
        for size in sizes:
            for method in methods:
                if say:
                    say(f"timing {method} at {size}x{size} ...")
                rows.append(
                    _in_subprocess(
                        method,
                        size,
                        device,
                        threads,
                        repeats,
                        tune_allocator,
                        precision,
                        onnx_file if method == "onnxruntime" else fdn_model,
                        paper,
                        channels,
                    )
                )
    dncnn = _model("dncnn", "cpu", fdn_model, paper, channels)
    models: dict[str, dict] = {}
    for method, model, name in (("fdn", fdn, label), ("dncnn", dncnn, "DnCNN-S, random weights")):
        models[method] = {
            "model": name,
            "parameters": count_parameters(model),
            "gflops_256": _flops(model, channels, 256) / 2e9,  # MACs, the paper's convention
        }
    for row in rows:
        if row["method"] in (*models, "onnxruntime"):
            network = "fdn" if row["method"] == "onnxruntime" else row["method"]
            macs = models[network]["gflops_256"] * (row["size"] / 256) ** 2
            row["gmacs_per_second"] = macs / row["seconds"]
    ratios, onnx_ratios = {}, {}
    for size in sizes:
        by_method = {row["method"]: row for row in rows if row["size"] == size}
        ratios[str(size)] = by_method["fdn"]["seconds"] / by_method["dncnn"]["seconds"]
        if "onnxruntime" in by_method:
            fdn_seconds = by_method["fdn"]["seconds"]
            onnx_ratios[str(size)] = by_method["onnxruntime"]["seconds"] / fdn_seconds
    report = {
        "device": device,
        "device_name": device_name(device),
        "threads": threads,
        "repeats": repeats,
        "precision": precision,
        "channels": channels,
        "allocator": "tuned" if all(row["allocator"] == "tuned" for row in rows) else "default",
        "torch": torch.__version__,
        "models": models,
        "results": rows,
        "fdn_over_dncnn_time": ratios,
        "fdn_over_dncnn_macs": models["fdn"]["gflops_256"] / models["dncnn"]["gflops_256"],
        "notes": notes,
    }
    if onnx:
        report["onnxruntime_over_fdn_time"] = onnx_ratios
    return report
