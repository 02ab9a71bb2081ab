r"""How long ``fdn export`` takes with each of PyTorch's ONNX exporters, and whether the two
graphs run alike in onnxruntime.

Run: ``python benchmarks/export_speed.py [--model fdn-color-blind] [--repeats 3]
[--dynamo-repeats 1] [--size 256]`` (the ``onnx`` extra).

- Seconds of ``export_onnx`` per exporter (:data:`fdn.choices.EXPORTERS`), torch pinned to one
  thread; medians of the repeats (the dynamo exporter's take a minute or more each, hence its
  own, smaller count), and the dynamo exporter's time over the TorchScript one's.
- Seconds of onnxruntime (one thread, median of 5 after a warm-up) on a ``size x size`` image
  for each file, and the largest difference between the two files' outputs.

Printed as JSON. Pause other work on the machine for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fdn.bench import median_seconds
from fdn.choices import EXPORTERS
from fdn.export import export_onnx, load_for_export, onnx_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fdn-color-blind")
    parser.add_argument("--repeats", type=int, default=3, help="TorchScript exports timed")
    parser.add_argument("--dynamo-repeats", type=int, default=1, help="dynamo exports timed")
    parser.add_argument("--size", type=int, default=256, help="onnxruntime's image side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_for_export(args.model)
    repeats = {"torchscript": args.repeats, "dynamo": args.dynamo_repeats}
    noisy = np.random.default_rng(0).random(
        (1, model.config.in_channels, args.size, args.size), dtype=np.float32
    )
    report: dict = {"model": args.model, "threads": 1, "export_s": {}, "onnxruntime_s": {}}
    outputs = {}
    with tempfile.TemporaryDirectory() as folder:
        for exporter in EXPORTERS:
            path = Path(folder) / f"{exporter}.onnx"
            seconds = median_seconds(
                lambda: export_onnx(model, path, exporter),  # noqa: B023
                repeats[exporter],
            )
            report["export_s"][exporter] = round(seconds, 2)
            session = onnx_session(path, threads=1)
            outputs[exporter] = session.run(None, {"noisy": noisy})[0]
            report["onnxruntime_s"][exporter] = round(
                median_seconds(lambda: session.run(None, {"noisy": noisy}), 5),  # noqa: B023
                3,
            )
    first, second = EXPORTERS
    report["dynamo_over_torchscript_export"] = round(
        report["export_s"][second] / report["export_s"][first], 1
    )
    report["max_abs_difference"] = float(np.abs(outputs[first] - outputs[second]).max())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
