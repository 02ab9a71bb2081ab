r"""The ``fdn`` command: parses arguments and calls library functions, nothing more.

Every option of every command is declared here, and building the parser imports no torch
(what it checks values against is in :mod:`fdn.choices`), so ``fdn --version`` and
``fdn --help`` answer at once; a command imports what it runs after its arguments parse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from fdn._version import __version__
from fdn.choices import (
    BASELINES,
    DEFAULT_NOISE_ESTIMATOR,
    ENSEMBLE_SIZES,
    EXPORTERS,
    NOISE_ESTIMATORS,
    PRECISIONS,
    WEIGHTS_ENV,
    check_device_name,
    check_strength,
)

if TYPE_CHECKING:
    from fdn.model import FDN

__all__ = ["CommandError", "build_parser", "command_options", "main"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, described as ``what`` in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _device_name(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked without torch."""
    try:
        return check_device_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _baseline_list(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BASELINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown baseline(s) {', '.join(unknown) or text!r}; choose from "
            f"{', '.join(BASELINES)}"
        )
    return names


def _non_negative_float(text: str, what: str = "the value") -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{what} must be >= 0, got {text!r}")
    return value


def _sigma(text: str) -> float:
    return _non_negative_float(text, "sigma")


def _strength(text: str) -> float | None:
    """An argparse type: a denoising strength in [0, 2] (:func:`fdn.choices.check_strength`),
    or ``auto``: the model's default (None)."""
    if text == "auto":
        return None
    try:
        return check_strength(float(text))
    except ValueError as error:
        message = (
            str(error) if "strength" in str(error) else f"expected auto or a number, got {text!r}"
        )
        raise argparse.ArgumentTypeError(message) from None


def _sigma_or_auto(text: str) -> float | str:
    """An argparse type: a sigma, or ``auto`` (non-blind methods are told the estimate)."""
    return "auto" if text.strip().lower() == "auto" else _sigma(text)


def _split_auto(values: Sequence[float | str] | None) -> tuple[list[float] | None, str | None]:
    """``--sigma`` values as (the noise levels, None if none given; the estimator, or None
    without ``auto``)."""
    if not values:
        return None, None
    levels = [float(v) for v in values if v != "auto"]
    return levels or None, DEFAULT_NOISE_ESTIMATOR if "auto" in values else None


def _add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device``, the same for every command (:func:`fdn.runtime.resolve_device`)."""
    parser.add_argument(
        "--device",
        type=_device_name,
        default=default,
        metavar="DEVICE",
        help="where to run: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N "
        f"(default: {default})",
    )


def _add_ensemble_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--ensemble`` (x8) or ``--ensemble-size N`` into ``args.ensemble``, a number of
    transforms (1: off; :func:`fdn.choices.ensemble_size`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ensemble",
        action="store_const",
        const=8,
        default=1,
        help=f"x8 self-ensemble{what}: average over the eight flips and rotations (8x slower, "
        "often better)",
    )
    group.add_argument(
        "--ensemble-size",
        dest="ensemble",
        type=int,
        choices=ENSEMBLE_SIZES[1:],
        metavar="N",
        help=f"self-ensemble of N = 2, 4 or 8 flips and rotations{what} (Nx slower; on the "
        "colour model's held-back images x2 gave 0.10 dB, x4 0.15 and x8 0.17)",
    )


def _add_precision_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--precision {fp32,bf16}``; ``what`` is what runs in bfloat16."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help=f"bf16 runs {what} in bfloat16: about 1.5x faster on CPUs with AVX-512 BF16 or "
        "AMX and on GPUs, slower on other CPUs (default: fp32)",
    )


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``, the same for every command that draws progress bars."""
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (bars are drawn when stderr is a terminal, otherwise "
        "denoise and eval print a line at most once a minute)",
    )


def _add_weights_option(parser: argparse.ArgumentParser) -> None:
    """``--weights DIR``, the same for every command that runs dncnn, dncnn-b or ffdnet; its
    default is resolved when the command runs (:func:`fdn.choices.default_weights`)."""
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="DIR",
        help="folder of the reference weights for dncnn, dncnn-b and ffdnet (default: "
        f"${WEIGHTS_ENV} if set, else ../shared/peer-weights beside the fdn repository; "
        "docs/evaluation.md lists the files and where they are published)",
    )


def _progress(args: argparse.Namespace) -> str:
    """How to show progress: ``"off"`` with --no-progress, ``"bar"`` on a terminal, otherwise
    ``"lines"`` (a line at most once a minute, for logs of background runs)."""
    if not args.progress:
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def command_options(args: argparse.Namespace) -> dict:
    """A command's parsed options as keyword arguments (without ``command``, ``debug`` and
    ``run``, the parser's own)."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "debug", "run")}


def _info(args: argparse.Namespace) -> int:
    from fdn.info import describe, info_lines

    info = describe(args.model, args.paper, *args.size)
    print(json.dumps(info, indent=2) if args.json else "\n".join(info_lines(info)))
    return 0


def _denoise(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from fdn.batch import denoise_files, plan_jobs
    from fdn.pretrained import resolve_model
    from fdn.runtime import resolve_device

    if args.tile is not None and args.tile < 2 * args.tile_overlap + 4:
        raise CommandError(
            f"--tile {args.tile} must be at least twice --tile-overlap ({args.tile_overlap}) + 4"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = plan_jobs(args.inputs, args.output)
    device = resolve_device(args.device)
    model: FDN | Callable[[int], FDN]
    if args.model is not None:
        model = resolve_model(args.model, 3, device)
    else:
        models: dict[int, FDN] = {}

        def bundled(channels: int) -> FDN:
            """The bundled model for grey or colour."""
            if channels not in models:
                models[channels] = resolve_model(None, channels, device)
            return models[channels]

        model = bundled

    progress = "off" if args.quiet else _progress(args)

    def report(line: str) -> None:
        if line.startswith(("fdn: error", "fdn: warning")) or not args.quiet:
            tqdm.write(line, file=sys.stderr)

    result = denoise_files(
        jobs,
        model,
        args.tile,
        args.tile_overlap,
        progress=progress,
        report=report,
        ensemble=args.ensemble,
        precision=args.precision,
        strength=args.strength,
        ood_check=args.ood_check,
        likelihood_map=args.likelihood_map,
    )
    summary = f"{result.denoised} denoised, {result.failed} failed -> {args.output}"
    print(summary, file=sys.stderr if result.failed else sys.stdout)
    return 1 if result.failed else 0


def _renoise(args: argparse.Namespace) -> int:
    from fdn.batch import plan_jobs
    from fdn.pretrained import resolve_model
    from fdn.runtime import resolve_device
    from fdn.synthesis import renoise_files

    jobs = plan_jobs(args.inputs, args.output)
    device = resolve_device(args.device)
    models: dict[int, FDN] = {}

    def model(channels: int) -> FDN:
        """--model, or the bundled model for grey or colour."""
        key = 0 if args.model is not None else channels
        if key not in models:
            models[key] = resolve_model(args.model, channels, device)
        return models[key]

    written, failed = renoise_files(jobs, model, args.samples, args.temperature, args.seed)
    summary = f"{written} written, {failed} failed -> {args.output}"
    print(summary, file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    import time

    from fdn.config import load_config
    from fdn.training import CHECKPOINT, TrainingStopped, train

    if args.fork:
        if args.config or args.init or args.resume or not args.out:
            raise CommandError(
                "--fork RUN_DIR branches a run into a new folder: give --out NEW_DIR and "
                "--set for what the branch changes, and no CONFIG, --init or --resume"
            )
        run_dir = Path(args.out)
        config = None
        if (run_dir / CHECKPOINT).exists():
            raise CommandError(f"{run_dir} already holds a run: choose another --out")
    elif args.resume:
        if args.config or args.out or args.init:
            raise CommandError(
                "--resume RUN_DIR continues a run with its own saved config; "
                "give no CONFIG, --out or --init with it (--set only for where and how "
                "fast it runs: data.root, training.device, ...)"
            )
        run_dir = Path(args.resume)
        config = None
    else:
        if not args.config:
            raise CommandError("give a CONFIG.toml, or --resume RUN_DIR")
        config = load_config(args.config, args.set)
        if args.init:
            config.training.init = args.init
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = (
            Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-{stamp}"
        )
        if (run_dir / CHECKPOINT).exists():
            raise CommandError(
                f"{run_dir} already holds a run: continue it with --resume "
                f"{run_dir}, or choose another --out"
            )
    try:
        result = train(
            config,
            run_dir,
            resume=bool(args.resume),
            progress=_progress(args) == "bar",
            changes=args.set if args.resume or args.fork else (),
            fork=args.fork,
        )
    except TrainingStopped as stopped:
        print(
            f"fdn: {stopped}; checkpoint saved, continue with: fdn train --resume {run_dir}",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    if result.model_file is not None:  # rank 0 of a distributed run, or a single process
        print(f"trained model: {result.model_file}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from fdn.denoising import denoise_image
    from fdn.figures import side_by_side
    from fdn.images import read_array, read_image, write_image
    from fdn.metrics import psnr
    from fdn.pretrained import resolve_model, sample_image_paths
    from fdn.runtime import resolve_device

    device = resolve_device(args.device)
    noisy_path, clean_path = sample_image_paths()
    noisy, clean = read_image(noisy_path), read_image(clean_path)
    model = resolve_model(args.model, 3, device)
    denoised = denoise_image(noisy.pixels, model)
    reference = torch.from_numpy(read_array(clean_path, noisy.pixels.shape[2]))
    reference = reference.permute(2, 0, 1)[None].double()

    def score(pixels: np.ndarray) -> float:
        scaled = pixels / np.iinfo(pixels.dtype).max  # as read_array scales a file's values
        return psnr(torch.from_numpy(scaled).permute(2, 0, 1)[None], reference).item()

    out = Path(args.out)
    result = write_image(out / "astronaut_denoised.png", noisy, denoised)
    noisy_db, denoised_db = score(noisy.pixels), score(denoised)
    figure = side_by_side(
        [
            (f"noisy (sigma 25): {noisy_db:.2f} dB", noisy.pixels),
            (f"FDN: {denoised_db:.2f} dB", denoised),
            ("clean", clean.pixels),
        ],
        out / "astronaut_comparison.png",
    )
    print(f"denoised:   {result}")
    print(f"comparison: {figure}")
    print(
        f"PSNR: noisy {noisy_db:.2f} dB -> denoised {denoised_db:.2f} dB "
        f"(+{denoised_db - noisy_db:.2f} dB)"
    )
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from fdn.ablation import grid_cells, run_grid

    if args.dry_run:
        for name, sets in grid_cells(args.grid):
            overrides = " ".join(f"--set {s}" for s in [*args.set, *sets])
            print(f"fdn train {args.config} --out {args.out}/{name} {overrides}")
        return 0
    table = run_grid(args.grid, args.config, args.out, args.set, progress=_progress(args) == "bar")
    print(table.read_text(), end="")
    print(f"table: {table}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from fdn.status import StatusError, format_status, run_status

    failed = 0
    for path in args.runs:  # `fdn status runs/*/`: the runs among the folders, the rest named
        try:
            print(format_status(run_status(path)))
        except StatusError as error:
            print(f"fdn: error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _curves(args: argparse.Namespace) -> int:
    from fdn.curves import average_curves, parse_line, parse_run, plot_curves, read_curve

    runs = [parse_run(text) for text in args.runs]
    curves = []
    for label, path in runs:
        curves.append(read_curve(path, args.y, args.x, label, args.since))
        if args.y == "val_psnr":  # and those of the averages it keeps beside its own
            curves += average_curves(path, args.x, label, args.since)
    for curve in curves:
        print(
            f"{curve.label}: {len(curve.points)} points, last {args.y} {curve.points[-1][1]:.4g}"
        )
    lines = [parse_line(text) for text in args.hline]
    out = plot_curves(curves, args.out, args.y, args.x, args.title, lines, not args.no_noisy)
    print(f"curves: {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fdn.export import export_onnx, load_for_export, smallest_size

    model = load_for_export(args.model)
    path = export_onnx(model, args.out, args.exporter)
    smallest = smallest_size(model.config.size_multiple)
    print(f"ONNX: {path} (input 'noisy', (B, C, H, W) float32 in [0, 1], any H, W >= {smallest})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fdn.bench import bench
    from fdn.runtime import resolve_device

    device = str(resolve_device(args.device))
    say = None if args.json else (lambda line: print(line, file=sys.stderr))
    report = bench(
        args.sizes,
        device,
        args.threads,
        args.repeats,
        say=say,
        tune_allocator=not args.default_allocator,
        precision=args.precision,
        fdn_model=args.model,
        paper=args.paper,
        with_bm3d=args.bm3d,
        onnx=args.onnx,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"FDN model: {report['models']['fdn']['model']}")
    print(
        f"device: {report['device_name']} ({device}), {args.threads} thread(s), "
        f"median of {args.repeats}, {report['allocator']} malloc, {args.precision}"
    )
    for method, facts in report["models"].items():
        print(
            f"{method:6s} {facts['parameters']:>10,} parameters, "
            f"{facts['gflops_256']:.2f} GFLOPs (MACs) per 256x256"
        )
    print(f"{'method':11s} {'size':>6s} {'seconds':>9s} {'GMACs/s':>9s} {'peak MB':>9s}")
    for row in report["results"]:
        rate = row.get("gmacs_per_second")
        print(
            f"{row['method']:11s} {row['size']:>6d} {row['seconds']:>9.3f} "
            f"{'-' if rate is None else f'{rate:.1f}':>9s} {row['peak_memory_mb']:>9.0f}"
        )
    for size, ratio in report["fdn_over_dncnn_time"].items():
        print(f"FDN / DnCNN time at {size}: {ratio:.2f}")
    print(f"FDN / DnCNN multiply-accumulates: {report['fdn_over_dncnn_macs']:.2f}")
    for size, ratio in report.get("onnxruntime_over_fdn_time", {}).items():
        print(f"onnxruntime / PyTorch FDN time at {size}: {ratio:.2f}")
    for note in report["notes"]:
        print(note)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fdn.evaluation import run_eval

    sigmas, estimator = _split_auto(args.sigmas)
    options = {**command_options(args), "sigmas": sigmas, "estimator": estimator}
    return run_eval(**{**options, "progress": _progress(args)})


def _compare(args: argparse.Namespace) -> int:
    from fdn.compare import build_methods, compare
    from fdn.runtime import resolve_device

    levels, estimator = _split_auto(args.sigma)
    if levels is not None and len(levels) > 1:
        raise CommandError(f"--sigma: one noise level (and auto), got {len(levels)}")
    sigma = levels[0] if levels else 50.0
    methods = build_methods(args.methods, args.weights, resolve_device(args.device))
    figure, scores = compare(args.image, methods, sigma, args.out, args.inset, estimator=estimator)
    for label, score in scores:
        print(f"{label:24s} {score:6.2f} dB")
    print(f"figure: {figure}")
    return 0


def _estimate_noise(args: argparse.Namespace) -> int:
    from fdn.noise_level import estimate_files
    from fdn.runtime import resolve_device

    def report(line: str) -> None:
        print(f"fdn estimate-noise: {line}", file=sys.stderr)

    rows, failed = estimate_files(args.inputs, args.methods, resolve_device(args.device), report)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        width = max([len("file"), *(len(row["file"]) for row in rows)])
        print(f"{'file':{width}s}" + "".join(f" {m:>7s}" for m in args.methods))
        for row in rows:
            values = "".join(f" {row['sigma'][m]:7.2f}" for m in args.methods)
            print(f"{row['file']:{width}s}{values}")
    return 1 if failed else 0


def _add_images_in_out(parser: argparse.ArgumentParser, metavar: str) -> None:
    """The inputs, ``-o OUT`` and ``--model`` of the commands that write one output per image."""
    parser.add_argument("inputs", nargs="+", metavar=metavar, help="files, folders or globs")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="a bundled model name or an fdn model file (default: the bundled blind model "
        "for each image's channels: fdn-color-blind or fdn-grey-blind)",
    )


def _add_model_choice(parser: argparse.ArgumentParser, model_help: str, paper_help: str) -> None:
    """``--model NAME|PATH`` or ``--paper`` (not both): the model ``info`` and ``bench`` use."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME|PATH", help=model_help)
    which.add_argument("--paper", action="store_true", help=paper_help)


def build_parser() -> argparse.ArgumentParser:
    """The ``fdn`` parser: every command and option (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="fdn", description="Flow-based image denoising (FDN, Liu et al. 2022)."
    )
    parser.add_argument("--version", action="version", version=f"fdn {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser(
        "info",
        help="architecture, parameters, FLOPs and training record of a model",
        description=(
            "Show a model's architecture, parameters, the FLOPs of one denoise and its latent "
            "layout, and for a bundled model how it was trained (iterations, patches, CPU and "
            "GPU hours), its held-back and test-set PSNR and its recipe config. Without "
            "--model, the bundled colour model fdn-color-blind (and fdn-grey-blind in brief); "
            "--paper for the paper's configuration."
        ),
    )
    _add_model_choice(
        info,
        "a bundled model or a model file (default: fdn-color-blind)",
        "the paper's configuration, FDN(), untrained",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--size",
        nargs=2,
        type=_positive_int,
        default=(256, 256),
        metavar=("H", "W"),
        help="image size the FLOPs are counted for (default: 256 256)",
    )
    info.set_defaults(run=_info)

    denoise = commands.add_parser(
        "denoise",
        help="denoise image files and folders",
        description=(
            "Denoise images (PNG, JPEG, TIFF, BMP, WebP; 8 or 16 bit; grey, grey+alpha, RGB, "
            "RGBA, palette). Folders are searched recursively and their layout is kept under "
            "OUT; every output keeps its input's name, format, mode and bit depth. Inputs "
            "are never overwritten, and outputs are written atomically."
        ),
    )
    _add_images_in_out(denoise, "INPUT")
    _add_device_option(denoise)
    denoise.add_argument(
        "--threads", type=_positive_int, metavar="N", help="CPU threads (default: torch's)"
    )
    denoise.add_argument(
        "--tile",
        type=_positive_int,
        metavar="N",
        help="denoise in N x N tiles to bound memory (default: whole images, tiled "
        "automatically above 4 megapixels)",
    )
    denoise.add_argument(
        "--tile-overlap",
        type=_non_negative_int,
        default=32,
        metavar="M",
        help="overlap of neighbouring tiles, blended smoothly (default: 32)",
    )
    _add_ensemble_options(denoise, "")
    denoise.add_argument(
        "--strength",
        type=_strength,
        default=None,
        metavar="S",
        help="0 leaves the input, 1 the model's estimate, up to 2 for stronger denoising: a "
        "noise hint (adds noise of sigma 30*(S-1) and averages 4 denoises, 4x slower). "
        "Default auto: 1, or the strength a bundled model's fitted curve gives for the noise "
        "it finds (fdn-grey-blind: below 1 on light noise; see docs/model-card.md)",
    )
    _add_precision_option(denoise, "the convolutions")
    denoise.add_argument(
        "--likelihood-map",
        action="store_true",
        help="also write NAME_bpd.png beside each output: the image's bits/dim under the "
        "model per 4x4 block, with a colour scale; and print its mean bits/dim",
    )
    denoise.add_argument(
        "--no-ood-check",
        dest="ood_check",
        action="store_false",
        help="do not warn about images far from the bundled model's training images "
        "(judged by their bits/dim; the check is free, from the denoise's own encode)",
    )
    denoise.add_argument(
        "--quiet", action="store_true", help="no progress bar or notices (warnings stay)"
    )
    _add_progress_option(denoise)
    denoise.set_defaults(run=_denoise)

    renoise = commands.add_parser(
        "renoise",
        help="new noisy versions of images, drawn from a model's learned noise",
        description=(
            "Encode each image, keep its clean code z_C, draw a new noise code z_N ~ N(0, T^2 I) "
            "and decode: a new noisy version of the same scene, with the noise the model "
            "learned (for data augmentation, or to see what a model thinks noise is). Writes "
            "OUT/NAME_renoise_K.EXT for K = 1..N in the input's format; inputs are never "
            "overwritten, and outputs are written atomically."
        ),
    )
    _add_images_in_out(renoise, "IMAGE")
    renoise.add_argument(
        "--samples",
        type=_positive_int,
        default=1,
        metavar="N",
        help="noisy versions to write per image (default: 1)",
    )
    renoise.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=1.0,
        metavar="T",
        help="standard deviation of the new z_N: 1 is the model's noise, 0 its denoised "
        "estimate, between them less noise (default: 1)",
    )
    renoise.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the noise draws; the same seed gives the same files (default: 0)",
    )
    _add_device_option(renoise)
    renoise.set_defaults(run=_renoise)

    evaluate = commands.add_parser(
        "eval",
        help="PSNR/SSIM tables: FDN models and baselines on test sets",
        description=(
            "Run FDN models (bundled names or files) and baselines (bm3d, nlm, dncnn, "
            "dncnn-b, ffdnet) on the same fixed-seed noisy images; print a Markdown table in "
            "the paper's layout, and with --out write table.md, results.csv and results.json."
        ),
    )
    evaluate.add_argument(
        "--model",
        dest="models",
        action="extend",
        nargs="+",
        default=[],
        metavar="[NAME[@SIGMA]=]PATH",
        help="model files: FDN or DnCNN .safetensors, or DnCNN/FFDNet reference .pth files. "
        "Files with the same NAME form one column; @SIGMA marks a model for that noise level "
        "only (default: the file name, used at every sigma)",
    )
    evaluate.add_argument(
        "--baselines",
        type=_baseline_list,
        default=[],
        metavar="LIST",
        help=f"comma-separated, from {', '.join(BASELINES)}",
    )
    _add_weights_option(evaluate)
    evaluate.add_argument(
        "--data", nargs="+", required=True, metavar="DIR", help="test set folders"
    )
    evaluate.add_argument(
        "--sigma",
        dest="sigmas",
        nargs="+",
        type=_sigma_or_auto,
        metavar="S",
        help="AWGN levels on the 0-255 scale (default: 15 25 50; with --paired: none, or the "
        "levels non-blind methods are told); add 'auto' to tell non-blind methods each noisy "
        f"image's estimated sigma (fdn estimate-noise's {DEFAULT_NOISE_ESTIMATOR}) instead",
    )
    evaluate.add_argument(
        "--paired",
        action="store_true",
        help="real noise: noisy/clean pairs (SIDD Data/SCENE/NOISY_*, GT_*; or noisy/ + "
        "clean/ folders matched by name)",
    )
    evaluate.add_argument("--out", type=Path, metavar="DIR", help="write table.md, CSV, JSON")
    evaluate.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        metavar="DIR",
        help="the --out folder of an earlier fdn eval: its methods join the table without "
        "running again, after a check that it scored the same noisy images (seed, images, "
        "noise, and a digest of the noisy pixels)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    evaluate.add_argument(
        "--limit", type=_positive_int, metavar="N", help="only the first N images of each data set"
    )
    _add_device_option(evaluate)
    _add_ensemble_options(evaluate, " for every method")
    evaluate.add_argument(
        "--strength",
        type=_strength,
        default=None,
        metavar="S",
        help="every FDN model's denoise strength, as fdn denoise's (default auto: each "
        "model's own; 1 is the paper's denoise, the protocol releases are compared by)",
    )
    _add_precision_option(evaluate, "every network's convolutions")
    _add_progress_option(evaluate)
    evaluate.set_defaults(run=_eval)

    compare = commands.add_parser(
        "compare",
        help="a figure: clean, noisy and each method's result with PSNR and a zoomed inset",
        description=(
            "Noise a clean image (fixed seed), denoise it with each method, and write a strip "
            "of panels with PSNR under each and the same zoomed inset, placed where the "
            "methods differ most unless --inset TOP LEFT is given."
        ),
    )
    compare.add_argument("image", help="a clean image")
    compare.add_argument(
        "--methods",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        default=["fdn:fdn-color-blind", "bm3d", "ffdnet"],
        metavar="LIST",
        help="comma-separated: fdn:MODEL (bundled name or file), bm3d, nlm, dncnn, "
        "dncnn-b, ffdnet (default: fdn:fdn-color-blind,bm3d,ffdnet)",
    )
    compare.add_argument(
        "--sigma",
        nargs="+",
        type=_sigma_or_auto,
        metavar="S",
        help="AWGN level on the 0-255 scale (default: 50); add 'auto' to tell non-blind "
        f"methods the noisy image's estimated sigma ({DEFAULT_NOISE_ESTIMATOR}) instead",
    )
    compare.add_argument("--out", required=True, metavar="PNG", help="the PNG to write")
    compare.add_argument(
        "--inset",
        nargs=2,
        type=_non_negative_int,
        metavar=("TOP", "LEFT"),
        help="top-left corner of the zoomed inset (default: where the methods differ most)",
    )
    _add_weights_option(compare)
    _add_device_option(compare)
    compare.set_defaults(run=_compare)

    estimate = commands.add_parser(
        "estimate-noise",
        help="estimate the noise level (AWGN sigma, 0-255) of images",
        description=(
            "Estimate the standard deviation of each image's additive white Gaussian noise on "
            "the 0-255 scale, and print a table (or JSON). A file that cannot be read is "
            "reported on one line and the others go on; the exit status is then 1."
        ),
    )
    estimate.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="files, folders or globs"
    )
    estimate.add_argument(
        "--method",
        dest="methods",
        nargs="+",
        choices=NOISE_ESTIMATORS,
        default=[DEFAULT_NOISE_ESTIMATOR],
        help="one or more estimators, one column each: flow (the bundled blind model's "
        "residual, calibrated), pca (patch covariance), mad (wavelet median) (default: "
        f"{DEFAULT_NOISE_ESTIMATOR})",
    )
    estimate.add_argument(
        "--json", action="store_true", help="print JSON: [{file, sigma: {method: value}}]"
    )
    _add_device_option(estimate)
    estimate.set_defaults(run=_estimate_noise)

    demo = commands.add_parser(
        "demo",
        help="denoise the bundled sample photo with the bundled model",
        description=(
            "Denoise the bundled sample (a public-domain NASA photo with AWGN of sigma 25) "
            "with the bundled colour model; write the result and a side-by-side comparison, "
            "and print the PSNR."
        ),
    )
    demo.add_argument("--out", default="fdn-demo", help="output folder (default: fdn-demo)")
    demo.add_argument("--model", metavar="NAME|PATH", help="another bundled name or file")
    _add_device_option(demo)
    demo.set_defaults(run=_demo)

    train = commands.add_parser(
        "train",
        help="train FDN (or a DnCNN baseline) from a TOML config",
        description=(
            "Train from a TOML config; --set section.key=value overrides a key. The run folder "
            "gets the resolved config, a JSON-lines log, checkpoints and the final model. "
            "SIGINT/SIGTERM save a checkpoint; --resume RUN_DIR continues exactly, on "
            "another device or data root with --set training.device=... / data.root=..."
        ),
    )
    train.add_argument("config", nargs="?", metavar="CONFIG.toml", help="the run's config")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable)",
    )
    train.add_argument(
        "--out", metavar="RUN_DIR", help="run folder (default: runs/CONFIG-DATE-TIME)"
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument(
        "--fork",
        metavar="RUN_DIR",
        help="branch the run in RUN_DIR into --out from its checkpoint (weights, optimiser, "
        "step), with --set changes to anything but [model] and the optimiser's own settings "
        "(optim.betas, optim.warmup, ...), e.g. to compare a patch size or a learning rate "
        "from one trained state; "
        "model.steps_per_block may grow (the added Steps of Flow start as the identity)",
    )
    train.add_argument(
        "--init",
        metavar="NAME|PATH",
        help="start from a trained model (a bundled name or a .safetensors file) with a fresh "
        "optimiser, e.g. to fine-tune on your own data; its architecture must match [model], "
        "but for more steps_per_block (the added Steps of Flow start as the identity)",
    )
    _add_progress_option(train)
    train.set_defaults(run=_train)

    bench = commands.add_parser(
        "bench",
        help="time an FDN model (the bundled one by default) against DnCNN (and BM3D)",
        description=(
            "Inference time (median after a warm-up) and peak memory of FDN and DnCNN, each "
            "size in a fresh process, with their parameters and FLOPs and the FDN/DnCNN time "
            "ratio; BM3D too when installed (CPU). The FDN is the bundled colour model "
            "fdn-color-blind unless --model names another, or --paper asks for the paper's "
            "configuration; the report names it."
        ),
    )
    _add_model_choice(
        bench,
        "the FDN to time: a bundled model or a model file (default: fdn-color-blind)",
        "time the paper's configuration, FDN() (4.4M parameters), with random weights",
    )
    bench.add_argument(
        "--sizes",
        nargs="+",
        type=_positive_int,
        default=[256, 512, 1024],
        metavar="N",
        help="image sizes to time, N x N each (default: 256 512 1024)",
    )
    # The CPU by default: the numbers bench reports (docs/performance.md) are CPU numbers.
    _add_device_option(bench, default="cpu")
    bench.add_argument("--threads", type=_positive_int, default=1, help="torch threads (1)")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="timed runs (3)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.add_argument(
        "--no-bm3d",
        dest="bm3d",
        action="store_false",
        help="leave BM3D out even when it is installed",
    )
    bench.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc untuned (see fdn.runtime), to measure what it costs",
    )
    _add_precision_option(bench, "both networks' convolutions (BM3D is unaffected)")
    bench.add_argument(
        "--onnx",
        action="store_true",
        help="also time the FDN exported to ONNX in onnxruntime (CPU; the onnx extra)",
    )
    bench.set_defaults(run=_bench)

    export = commands.add_parser(
        "export",
        help="export a model's denoise graph to ONNX",
        description=(
            "Write MODEL's denoise (strength 1, float32: reflect-pad to its size multiple, "
            "encode, zero z_N, decode, crop, clamp) as one ONNX file with dynamic batch, "
            "height and width, and the 1x1 convolutions' inverses precomputed. Needs the onnx "
            "extra."
        ),
    )
    export.add_argument("model", metavar="MODEL", help="a bundled model name or a model file")
    export.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    export.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=EXPORTERS[0],
        help="PyTorch's TorchScript exporter (seconds; deprecated by PyTorch) or its dynamo "
        "exporter (a minute or two; for a PyTorch without the other); the same graph "
        "(default: %(default)s)",
    )
    export.set_defaults(run=_export)

    ablate = commands.add_parser(
        "ablate",
        help="run the paper's ablation grids (Table I, Table II) into one table",
        description=(
            "Train every cell of an ablation grid from one base config: table1 = 1-3 blocks x "
            "2/4/8 steps, table2 = z_C fraction 1/8..7/8. Finished cells are skipped and "
            "interrupted ones resume; the table of validation PSNRs goes to OUT/table.md."
        ),
    )
    ablate.add_argument(
        "grid",
        choices=("table1", "table2"),
        help="table1: 1-3 blocks x 2/4/8 steps; table2: z_C fraction 1/8..7/8",
    )
    ablate.add_argument("config", metavar="BASE.toml", help="the base config of every cell")
    ablate.add_argument("--out", required=True, metavar="DIR", help="one run folder per cell")
    ablate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a key of the base config in every cell",
    )
    ablate.add_argument("--dry-run", action="store_true", help="print the runs, train nothing")
    _add_progress_option(ablate)
    ablate.set_defaults(run=_ablate)

    curves = commands.add_parser(
        "curves",
        help="draw training curves of runs (validation PSNR by default) as an SVG",
        description=(
            "Draw a logged value of each run (from RUN_DIR/log.jsonl) against training steps, "
            "wall-clock hours or CPU hours as an SVG line plot: one line per run, a legend, and "
            "for val_psnr the noisy input's PSNR as a dashed line when the log has it, and "
            "the PSNR of each moving average a run keeps beside its own (training.ema_extra)."
        ),
    )
    curves.add_argument(
        "runs",
        nargs="+",
        metavar="[LABEL=]RUN_DIR",
        help="run folders (or their log.jsonl), each named LABEL (default: the folder's name)",
    )
    curves.add_argument("--out", required=True, metavar="FILE.svg", help="the SVG file to write")
    curves.add_argument(
        "--x",
        choices=("step", "wall", "cpu"),
        default="step",
        help="x axis: training steps, wall-clock hours or CPU hours (default: step)",
    )
    curves.add_argument(
        "--y",
        default="val_psnr",
        metavar="KEY",
        help="the log key to draw, e.g. loss, nll, mse, lr (default: val_psnr)",
    )
    curves.add_argument("--title", metavar="TEXT", help="a title above the plot")
    curves.add_argument(
        "--since",
        type=int,
        metavar="STEP",
        help="only the rows from STEP on, hours counted from it: forks of one run compared "
        "from the step they share, their parent's history left out",
    )
    curves.add_argument(
        "--hline",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a dotted reference line at VALUE, e.g. BM3D=27.9 (a baseline on the same "
        "validation images: scripts/holdout_reference.py); repeatable",
    )
    curves.add_argument(
        "--no-noisy", action="store_true", help="leave out the noisy input's PSNR line"
    )
    curves.set_defaults(run=_curves)

    status = commands.add_parser(
        "status",
        help="where training runs stand: step, pace, validations, next validation",
        description=(
            "Read run folders of fdn train (their config.toml and log.jsonl; no checkpoint is "
            "loaded) and print each run's step, steps per hour of training time, its "
            "validations (and those of the moving averages kept beside its own), and when its "
            "next validation and checkpoint come at that pace."
        ),
    )
    status.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    status.set_defaults(run=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)  # --help, --version and bad options stop here
    # Before torch starts OpenMP: threads that spin while they wait for work hold their cores,
    # so on a machine busy with other jobs the default (all cores) ran 2-5x slower than one
    # thread. Passive waiting costs nothing measurable on a quiet one (docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fdn.runtime import tune_allocator  # imports torch

    tune_allocator()
    previous = _exit_on_sigterm()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("fdn: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into messages
        if args.debug:
            traceback.print_exc()
        else:
            print(f"fdn: error: {_error_line(error)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _error_line(error: BaseException) -> str:
    """The error's message as the one line that ``main`` prints.

    PyTorch's DataLoader re-raises a worker's exception with the worker's whole traceback in
    the message ("Caught DataError in DataLoader worker process 0.", "Original Traceback (most
    recent call last):", ...); its last line is the original exception, the part that tells
    the user what is wrong. Any other message has its line breaks and spaces collapsed.
    """
    text = str(error)
    if "Original Traceback" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1]
    return " ".join(text.split()) or type(error).__name__


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_on_sigterm() -> Callable[[int, FrameType | None], Any] | int | None:
    """SIGTERM as an exception, so that a file being written is removed, not left as a
    temporary file (SIGINT already is one: KeyboardInterrupt). Training catches both
    itself to save a checkpoint. Returns the previous handler (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        return None
