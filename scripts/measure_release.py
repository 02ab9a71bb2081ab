r"""Measures a bundled model after its release (maintainers only): what
``scripts/release_models.py`` dropped with the old weights, and the test-set scores.

A release writes a new record without the old weights' calibrations; this runs every
measurement that follows it, in two lanes side by side (one thread each, for a two-core
machine), each step's output in ``OUT/lane1.log`` and ``OUT/lane2.log``:

- lane 1: the strength curve (``scripts/fit_strength.py``); ``fdn eval`` on the model's test
  sets at strength 1, the protocol releases are compared by, and where the curve is below 1
  at the test sigmas (:func:`default_strength_differs`) at the default strength too; both
  added to the record (``release_models.py --psnr``, ``--psnr-default``);
- lane 2: the out-of-distribution guard (``benchmarks/ood_calibration.py --write``, then
  how often it warns on the test sets, ``--measure``) and, for the models the flow noise
  estimator uses, its curve (``benchmarks/noise_estimation.py --fit --write``), both fitted
  on the model's training folder; with ``--ensemble``, then ``fdn eval --ensemble`` on the test
  sets at the default strength (8x the time of one pass: about 50 minutes of one thread for
  CBSD68 and for BSD68 on an AVX2 CPU), added to the record (``release_models.py
  --psnr-ensemble``) for the model card's self-ensemble sentence.

Lane 1 ends with what the model card shows of the releases: the figure of a blind model's
releases against BM3D, drawn again (``release_models.py --figure``, :data:`RELEASE_FIGURES`),
and the table of releases with the new row last (``release_models.py --table``, in its log);
with ``--ensemble``, lane 2 prints the table again once the ensemble's column has the new row.

    OMP_NUM_THREADS=1 nice python scripts/measure_release.py fdn-grey-blind \
        --data-root ../shared/data --out ~/fdn-runs/measure-grey

The folders come from the record: its training data (``training.data``) and the test sets it
was scored on (``psnr_db``, under ``DATA_ROOT/test``; right after a release, those of the last
release scored), or ``--test-sets``. About an hour for
the grey model on an AVX2 CPU. ``--dry-run`` prints the steps. Then the model card's prose, by hand
(``docs/training.md``, "Releases").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

# DEFAULT_MODELS: the models the flow noise estimator runs (fdn.noise_level.flow_model_name).
from fdn.pretrained import DEFAULT_MODELS, MODELS_JSON

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = ("15", "25", "50")
# The model card's figure of each blind model's releases, one point per release scored.
RELEASE_FIGURES = {
    "fdn-color-blind": "docs/figures/releases-color.svg",
    "fdn-grey-blind": "docs/figures/releases-grey.svg",
}


def _record(name: str, table_path: Path) -> dict:
    table = json.loads(table_path.read_text())
    if name not in table:
        raise SystemExit(f"{table_path}: no bundled model {name!r} ({', '.join(table)})")
    return table[name]


def folders(
    name: str, data_root: Path, test_sets: list[str], table_path: Path
) -> tuple[Path, list[Path]]:
    """``(training folder, test-set folders)`` of bundled model ``name``."""
    record = _record(name, table_path)
    train = data_root / record["training"]["data"]
    # A record just released has no scores yet: its test sets are those of the last release
    # that was scored (the releases table keeps each one's).
    scored = [record, *reversed(record.get("releases", []))]
    keys = next((entry["psnr_db"] for entry in scored if entry.get("psnr_db")), {})
    tests = [Path(t) for t in test_sets] or [data_root / "test" / key for key in keys]
    for folder in [train, *tests]:
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder (give --data-root or --test-sets)")
    if not tests:
        raise SystemExit(f"{name}: its record names no test set: give --test-sets")
    return train, tests


def default_strength_differs(record: dict) -> bool:
    """Whether the default strength can be other than 1 on the test sets (at :data:`SIGMAS`).

    The curve (``strength_curve``, by residual sigma) is linear between its points: an image
    at the lowest test sigma reads it between that sigma's point and the one below, so a
    strength below 1 from that point up can change the scores. Below it, only an image whose
    residual were that of noise a grid step lighter would be touched: the colour curve of
    2026-11-27 (0.9 at sigma 5, 1 from 10 up) leaves CBSD68 at strength 1, and its default
    eval (20 minutes) would only repeat the strength-1 one."""
    curve = record.get("strength_curve")
    if not curve:
        return False
    lowest = min(float(sigma) for sigma in SIGMAS)
    below = [k for k, sigma in enumerate(curve["awgn_sigmas"]) if sigma < lowest]
    start = below[-1] if below else 0
    return any(strength < 1 for strength in curve["strengths"][start:])


# A step that runs only where its condition holds of the record by then: (label, test).
DEFAULT_DIFFERS = ("a strength curve below 1 at the test sigmas", default_strength_differs)


def _python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]


def _eval(name: str, tests: list[Path], out: Path, *extra: str) -> list[str]:
    data = [str(t) for t in tests]
    return [sys.executable, "-m", "fdn", "eval", "--model", name, "--data", *data,
            "--sigma", *SIGMAS, "--no-progress", "--out", str(out), *extra]  # fmt: skip


def lanes(
    name: str,
    data_root: Path,
    train: Path,
    tests: list[Path],
    out: Path,
    noise: bool,
    ensemble: bool = False,
) -> dict:
    """The steps of each lane: lists of ``(command, condition)``, where a condition (or None)
    is a ``(label, test)`` the record must pass by then for the step to run."""
    release = "scripts/release_models.py"
    lane1 = [
        (_python("scripts/fit_strength.py", name, "--data-root", str(data_root)), None),
        (_eval(name, tests, out / "strength1", "--strength", "1"), None),
        (_python(release, "--psnr", f"{name}={out / 'strength1' / 'results.json'}"), None),
        (_eval(name, tests, out / "default"), DEFAULT_DIFFERS),
        (
            _python(release, "--psnr-default", f"{name}={out / 'default' / 'results.json'}"),
            DEFAULT_DIFFERS,
        ),
    ]
    if name in RELEASE_FIGURES:
        figure = ROOT / RELEASE_FIGURES[name]
        lane1.append((_python(release, "--figure", name, str(figure)), None))
    lane1.append((_python(release, "--table", name), None))
    # The guard is set on the training folder; the test sets are only reported on (--measure:
    # how many of their images it warns about, the README's table).
    guard = ("--write", "--data", f"{name}={train}", "--measure", *(f"{name}={t}" for t in tests))
    lane2 = [(_python("benchmarks/ood_calibration.py", *guard), None)]
    if noise:
        fit = ("--fit", "--write", "--limit", "24", "--data", str(train))
        lane2.append((_python("benchmarks/noise_estimation.py", *fit), None))
    if ensemble:
        # After the guard: the eval runs the model as `fdn denoise --ensemble` would.
        lane2.append((_eval(name, tests, out / "ensemble", "--ensemble"), None))
        results = out / "ensemble" / "results.json"
        lane2.append((_python(release, "--psnr-ensemble", f"{name}={results}"), None))
        # Lane 1 printed the table before this score was in: the row with its ensemble column.
        lane2.append((_python(release, "--table", name), None))
    return {"lane1": lane1, "lane2": lane2}


def run_lane(steps: list, name: str, log: Path, table_path: Path, failures: list) -> None:
    """Runs ``steps`` in order, output to ``log``; the first failure ends the lane."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("a") as stream:
        for command, condition in steps:
            if condition and not condition[1](_record(name, table_path)):
                print(f"skipped (needs {condition[0]}): {shlex.join(command)}", file=stream)
                stream.flush()
                continue
            print(f"$ {shlex.join(command)}", file=stream, flush=True)
            code = subprocess.run(command, stdout=stream, stderr=stream, env=env, cwd=ROOT)
            if code.returncode != 0:
                failures.append(f"{shlex.join(command)} exited {code.returncode} (see {log})")
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", metavar="NAME", help="a bundled model just released")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--test-sets", nargs="+", default=[], metavar="DIR")
    parser.add_argument("--out", type=Path, required=True, help="folder for results and logs")
    parser.add_argument(
        "--ensemble", action="store_true", help="also score the x8 self-ensemble (lane 2)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    parser.add_argument("--models-json", type=Path, default=MODELS_JSON, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    train, tests = folders(args.name, args.data_root, args.test_sets, args.models_json)
    noise = args.name in DEFAULT_MODELS.values()
    planned = lanes(args.name, args.data_root, train, tests, args.out, noise, args.ensemble)
    if args.dry_run:
        for lane, steps in planned.items():
            for command, condition in steps:
                when = f"  (if {condition[0]})" if condition else ""
                print(f"{lane}: {shlex.join(command)}{when}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    threads = [
        threading.Thread(
            target=run_lane,
            args=(steps, args.name, args.out / f"{lane}.log", args.models_json, failures),
        )
        for lane, steps in planned.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures:
        print(f"measure_release: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
