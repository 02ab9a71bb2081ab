r"""The ``fdn`` command: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence

from fdn._version import __version__

__all__ = ["CommandError", "main"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _info(args: argparse.Namespace) -> int:
    from fdn.info import model_info
    from fdn.model import FDN
    from fdn.serialization import load_model

    model = load_model(args.model) if args.model else FDN()
    info = model_info(model, *args.size)
    info["model"] = str(args.model) if args.model else "FDN() (untrained, paper defaults)"
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    config = info["config"]
    height, width = info["image_size"]
    latent = "x".join(str(n) for n in info["latent_shape"])
    lines = [
        f"model            {info['model']}",
        f"architecture     {config['num_blocks']} DownScale Flow Blocks x "
        f"{config['steps_per_block']} Steps of Flow, Dense Blocks gc={config['hidden_channels']}",
        f"image channels   {config['in_channels']}",
        f"parameters       {info['parameters']:,}",
        f"cost             {info['denoise_gflops']:.2f} GFLOPs (MACs) per {height}x{width} "
        f"denoise",
        f"latent           {latent}",
        f"z_C (clean)      channels {info['z_c_channels'][0]}-{info['z_c_channels'][1] - 1}",
        f"z_N (noise)      channels {info['z_n_channels'][0]}-{info['z_n_channels'][1] - 1}"
        " (set to 0 to denoise)",
    ]
    print("\n".join(lines))
    return 0


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available")
    return name


def _denoise(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from fdn.batch import denoise_files, plan_jobs
    from fdn.serialization import load_model

    if args.tile is not None and args.tile < 2 * args.tile_overlap + 4:
        raise CommandError(
            f"--tile {args.tile} must be at least twice --tile-overlap ({args.tile_overlap}) + 4"
        )
    if args.model is None:
        raise CommandError("--model PATH is required (no bundled model yet)")
    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = plan_jobs(args.inputs, args.output)
    model = load_model(args.model, device=_resolve_device(args.device))
    progress = not args.quiet and sys.stderr.isatty()

    def report(line: str) -> None:
        if line.startswith("fdn: error") or not args.quiet:
            tqdm.write(line, file=sys.stderr)

    result = denoise_files(
        jobs, model, args.tile, args.tile_overlap, progress=progress, report=report
    )
    summary = f"{result.denoised} denoised, {result.failed} failed -> {args.output}"
    print(summary, file=sys.stderr if result.failed else sys.stdout)
    return 1 if result.failed else 0


def _train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fdn.config import load_config
    from fdn.training import CHECKPOINT, TrainingStopped, train

    if args.resume:
        if args.config or args.set or args.out:
            raise CommandError(
                "--resume RUN_DIR continues a run with its own saved config; "
                "give no CONFIG, --set or --out with it"
            )
        run_dir = Path(args.resume)
        config = None
    else:
        if not args.config:
            raise CommandError("give a CONFIG.toml, or --resume RUN_DIR")
        config = load_config(args.config, args.set)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = (
            Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-{stamp}"
        )
        if (run_dir / CHECKPOINT).exists():
            raise CommandError(
                f"{run_dir} already holds a run: continue it with --resume "
                f"{run_dir}, or choose another --out"
            )
    progress = sys.stderr.isatty()
    try:
        final = train(config, run_dir, resume=bool(args.resume), progress=progress)
    except TrainingStopped as stopped:
        print(
            f"fdn: {stopped}; checkpoint saved, continue with: fdn train --resume {run_dir}",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    print(f"trained model: {final}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
        help="parameters, FLOPs and latent layout of a model",
        description=(
            "Show a model's parameters, the FLOPs of one denoise, and its latent layout. "
            "Without --model, the untrained paper-default FDN."
        ),
    )
    info.add_argument("--model", metavar="PATH", help="an fdn model file (.safetensors)")
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
    denoise.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs")
    denoise.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    denoise.add_argument("--model", metavar="PATH", help="an fdn model file (.safetensors)")
    denoise.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run (default: auto, CUDA when available)",
    )
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
    denoise.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    denoise.set_defaults(run=_denoise)

    train = commands.add_parser(
        "train",
        help="train FDN (or a DnCNN baseline) from a TOML config",
        description=(
            "Train from a TOML config; --set section.key=value overrides a key. The run folder "
            "gets the resolved config, a JSON-lines log, checkpoints and the final model. "
            "SIGINT/SIGTERM save a checkpoint; --resume RUN_DIR continues exactly."
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
    train.set_defaults(run=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("fdn: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into messages
        if args.debug:
            traceback.print_exc()
        else:
            print(f"fdn: error: {error}", file=sys.stderr)
        return 1
