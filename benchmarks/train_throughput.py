r"""Training throughput: FDN's fast path (bf16 + channels-last) against float32, and DnCNN.

Run: ``python benchmarks/train_throughput.py [--config configs/bundled_color_blind.toml]
[--device cpu|cuda] [--threads 1] [--steps 7] [--batch 16] [--patch 64] [--profile 15]
[--compile inductor|cudagraphs]``.

Every variant takes one optimisation step in turn (the trainer's own loss, autocast and
layout; Adam; gradient clipping), round after round, so that a machine whose speed drifts
slows all of them alike; after two warm-up rounds, iterations/s and images/s are medians over
``steps`` rounds. The variants: FDN of the config's ``[model]`` in float32 NCHW (the path
before ``training.precision``) and in bf16 + channels-last, and the DnCNN baseline in
float32. Prints JSON with the speed-up of the fast path and FDN's time over DnCNN's.
``--profile N`` then profiles one more step of each variant (``torch.profiler``) and prints,
on standard error, its N operators with the most time of their own: where a step goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fdn import runtime
from fdn.config import load_config
from fdn.denoising import precision_context
from fdn.training import _Objective, build_model, compile_objective

ROOT = Path(__file__).resolve().parents[1]


def make_step(config, device: torch.device, batch: int, patch: int) -> Callable[[int], None]:  # noqa: ANN001
    """One training step of ``config``'s model on a fixed random batch (compiled as its
    ``training.compile`` says, on the first call)."""
    model = build_model(config).to(device).train()
    fast = config.training.precision == "bf16"
    channels = config.model.in_channels
    clean = torch.rand(batch, channels, patch, patch, device=device)
    noisy = clean + 25 / 255 * torch.randn_like(clean)
    if fast:
        model.to(memory_format=torch.channels_last)
        clean, noisy = (t.contiguous(memory_format=torch.channels_last) for t in (clean, noisy))
    objective = compile_objective(_Objective(model, config), config.training.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step(index: int) -> None:
        with precision_context(config.training.precision, device):
            loss = objective(noisy, clean, index)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "bundled_color_blind.toml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=0, help="default: the config's")
    parser.add_argument("--patch", type=int, default=0, help="default: the config's")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print each variant's top N ops"
    )
    parser.add_argument(
        "--compile",
        choices=("inductor", "cudagraphs"),
        help="add FDN with training.compile so, in bf16 on a GPU and float32 on a CPU: its "
        "speed-up over the same path eager, and the seconds of its two warm-up rounds",
    )
    args = parser.parse_args()
    runtime.tune_allocator()  # as every fdn command does: fdn train runs this way
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = load_config(args.config)
    batch = args.batch or base.training.batch_size
    patch = args.patch or base.data.patch_size
    variants = {
        "fdn_fp32": load_config(args.config, ["training.precision='fp32'"]),
        "fdn_bf16_channels_last": load_config(args.config, ["training.precision='bf16'"]),
        "dncnn_fp32": load_config(
            args.config, ["model.kind='dncnn'", "training.precision='fp32'"]
        ),
    }
    # The compiled step at the precision a run takes on this device (bf16 on a GPU, float32
    # on this project's CPUs), against the same path eager.
    precision = "bf16" if device.type == "cuda" else "fp32"
    eager = {"fp32": "fdn_fp32", "bf16": "fdn_bf16_channels_last"}[precision]
    if args.compile:
        settings = [f"training.precision='{precision}'", f"training.compile='{args.compile}'"]
        variants[f"{eager}_compiled"] = load_config(args.config, settings)
    steps = {name: make_step(config, device, batch, patch) for name, config in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    warm_up = dict.fromkeys(steps, 0.0)
    for round_ in range(args.steps + 2):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(round_)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
            else:
                warm_up[name] += time.perf_counter() - start
    results: dict = {
        "config": Path(args.config).name,
        "model": {k: v for k, v in base.model.__dict__.items() if not k.startswith("dncnn")},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "patch": patch,
        "steps": args.steps,
        "torch": torch.__version__,
        "allocator": "tuned" if runtime.allocator_tuned() else "default",
    }
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {
            "seconds_per_iteration": median,
            "iterations_per_s": 1 / median,
            "images_per_s": batch / median,
        }
    seconds = {name: results[name]["seconds_per_iteration"] for name in times}
    results["fast_path_speedup"] = seconds["fdn_fp32"] / seconds["fdn_bf16_channels_last"]
    results["fdn_fp32_over_dncnn_time"] = seconds["fdn_fp32"] / seconds["dncnn_fp32"]
    if args.compile:
        results["compile"] = args.compile
        results["compiled_speedup"] = seconds[eager] / seconds[f"{eager}_compiled"]
        results["compiled_warm_up_s"] = warm_up[f"{eager}_compiled"]
    print(json.dumps(results, indent=2))
    if args.profile:
        profile(steps, args.steps + 2, args.profile)


def profile(steps: dict[str, Callable[[int], None]], index: int, rows: int) -> None:
    """One more step of each variant under ``torch.profiler``: its operators by own time."""
    import sys

    from torch.profiler import profile as profiler

    for name, step in steps.items():
        with profiler() as recorded:
            step(index)
        table = recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        print(f"{name}:\n{table}", file=sys.stderr)


if __name__ == "__main__":
    main()
