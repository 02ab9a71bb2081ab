"""The options the calibration benchmarks share (``ood_calibration.py``,
``noise_estimation.py --fit``): what they measure for a bundled model's weights is printed as
JSON, or with ``--write`` stored as one key of the model's record in ``models.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fdn.pretrained import MODELS_JSON, model_record, store_calibration


def add_options(parser: argparse.ArgumentParser, key: str) -> None:
    """``--write`` and ``--models-json PATH`` for a script that calibrates ``key``."""
    parser.add_argument(
        "--write", action="store_true", help=f"store each {key} in models.json (else print it)"
    )
    parser.add_argument(
        "--models-json",
        type=Path,
        default=MODELS_JSON,
        metavar="PATH",
        help="the table --write stores into (default: the package's)",
    )


def write_or_print(args: argparse.Namespace, key: str, calibrations: dict[str, dict]) -> None:
    """Stores ``calibrations`` (model name -> its ``key``) as ``args`` say, or prints them.

    Each is stored only if the model's weights are still those it was measured on: the
    table as this process first read it (``model_record`` reads it once, when the
    measurement loaded the model), checked against the table as it is now."""
    if not args.write:
        print(json.dumps(calibrations, indent=2))
        return
    measured_for = {name: model_record(name)["sha256"] for name in calibrations}
    try:
        store_calibration(args.models_json, key, calibrations, measured_for)
    except ValueError as error:  # released again meanwhile: one line, not a traceback
        raise SystemExit(str(error)) from None
    print(f"{key} of {', '.join(calibrations)} written to {args.models_json}")
