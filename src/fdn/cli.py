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
