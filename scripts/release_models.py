r"""Releases trained runs as the bundled models in ``src/fdn/weights`` (maintainers only).

For each ``NAME=RUN_DIR``, the run's model (the moving average when the run keeps one; the
last checkpoint of a run that was stopped) is scored on the run's held-back validation images
(``data.holdout``: the mean PSNR over ``validation.sigmas``), and so is the current release
NAME. Only a run that scores higher, by at least ``--min-standard-errors`` (2) standard errors
of the paired difference over the images, replaces it: no test set decides anything, and a
gain the images' noise could give is not released. Where the run
or the release was trained with a loss other than L1, the run must also score higher at the
best strength per sigma (``scripts/score_heldback.py``), which strength 1 alone misjudges.
A released model is stored in float16 when that costs under 0.01 dB on the same images (else
float32), its SHA-256 is recorded, and ``models.json`` gets its training record, the
iterations and CPU hours summed over every stage that continued the release (``--init
NAME``), and a line in its table of releases. A run may be released again after it trained
on (the checkpoint's ``run_id`` names it across resumes): only its steps and hours since its
last release are added, so a long schedule need not be cut into stages to be released along
the way.

Run: ``python scripts/release_models.py NAME=RUN_DIR [...] [--data-root DIR]``. Measured
test-set PSNRs are added afterwards with ``--psnr NAME=results.json`` (an ``fdn eval --out``
results file with NAME as a method); they go to the record and its latest release line.
Only the records of the models it changed are written, into ``models.json`` as it is then and
under a lock (``fdn.atomic.update_json``): two releases, or a release and a calibration
(``scripts/fit_strength.py``, ``benchmarks/ood_calibration.py --write``,
``benchmarks/noise_estimation.py --fit --write``), may run at once.

A released model's record is new: what was calibrated for the weights it replaces (its
``strength_curve``, ``ood_guard`` and ``noise_calibration``) is dropped, and the script prints
the command that measures each again into ``models.json``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import tempfile
import typing
from pathlib import Path

import numpy as np
import torch

from fdn.atomic import update_json
from fdn.config import TrainConfig
from fdn.curves import Curve, kept_path, kept_steps, plot_curves, read_log
from fdn.data import load_validation
from fdn.ensemble import ensemble_name
from fdn.metrics import paired_difference
from fdn.model import FDN
from fdn.serialization import load_model, save_model
from fdn.training import CHECKPOINT, TrainingError, checkpoint_model, validation_psnrs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_heldback import best_strength_scores

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "fdn" / "weights"
MIN_STANDARD_ERRORS = 2.0  # the held-back gain a release needs, in its standard errors
# What is calibrated for a release's weights after it (a key of its record), and the command
# that measures it again into models.json (docs/training.md, "Releases").
RECALIBRATIONS = {
    "strength_curve": "python scripts/fit_strength.py {name}",
    "ood_guard": "python benchmarks/ood_calibration.py --write --data {name}=TRAIN_FOLDER",
    "noise_calibration": (
        "python benchmarks/noise_estimation.py --fit --write --limit 24 --data TRAIN_FOLDER"
    ),
}
# How models.json names each optim.reconstruction in the loss it was trained with.
_RECONSTRUCTION_NAMES = {"l1": "L1", "l2": "L2", "psnr": "PSNR loss"}


def trained_model(
    run_dir: Path, average: float | None = None, kept: int | None = None
) -> tuple[FDN, TrainConfig, int, str | None]:
    """The run's model (its moving average when it has one, or with ``average``, the one of
    that decay it keeps beside it: ``training.ema_extra``; or with ``kept``, the model file it
    kept at that step: ``training.keep_every``), config, iterations, and the id that names the
    run across resumes (None for a checkpoint from before ids)."""
    if kept is not None and average is not None:
        raise SystemExit(f"{run_dir}: a kept model is the run's own average; --average is not one")
    try:
        model, checkpoint = checkpoint_model(run_dir / CHECKPOINT, average)
    except TrainingError as error:
        raise SystemExit(str(error)) from None
    config, steps = checkpoint["config"], checkpoint["step"]
    if average is not None:
        config.training.ema = average  # what the released model is, in its record
    if kept is not None:
        # A model kept between validations may score best, and the run has trained on past
        # it by the time it was scored: its log and config still describe it up to its step.
        path = kept_path(run_dir, kept)
        if not path.is_file():
            steps_kept = ", ".join(map(str, kept_steps(run_dir))) or "none"
            raise SystemExit(f"{path}: no model kept at step {kept} (kept: {steps_kept})")
        if kept > steps:
            raise SystemExit(
                f"{path}: the run's checkpoint is at step {steps}, before the kept model's; "
                "resume the run past it first (its log must reach the step)"
            )
        kept_model = load_model(path)
        if kept_model.config != typing.cast("FDN", model).config:
            raise SystemExit(f"{path}: not the network of {run_dir / CHECKPOINT}")
        model, steps = kept_model, kept
    return typing.cast("FDN", model), config, steps, checkpoint.get("run_id")


def _log_until(run_dir: Path, until: int | None = None) -> list[dict]:
    """The run's log rows (all when ``until`` is None) as if the run had stopped at step
    ``until``: the row whose stretch holds it ends there, its clocks (``wall_s``, ``cpu_s``)
    in proportion between their values either side (a run's clocks start at 0 at step 0),
    so that every count read from the log (time, devices, hours) is the run's up to the step."""
    rows = read_log(run_dir / "log.jsonl")
    if until is None:
        return rows
    cut: list[dict] = []
    clocks = {"wall_s": (0, 0.0), "cpu_s": (0, 0.0)}  # each clock's last (step, value)
    for row in rows:
        if row["step"] <= until:
            cut.append(row)
            clocks.update({key: (row["step"], row[key]) for key in clocks if key in row})
            continue
        if cut and cut[-1]["step"] == until:  # a row ends at the step: nothing of the next
            break
        end = {**row, "step": until}
        for key, (step, value) in clocks.items():
            if key in row:
                share = (until - step) / (row["step"] - step)
                end[key] = value + share * (row[key] - value)
        cut.append(end)
        break
    return cut


def training_seconds(
    run_dir: Path, batch_size: int, clock: str = "cpu", until: int | None = None
) -> float:
    """Time spent training, the run's own across resumes: the log's ``cpu_s`` (CPU time of the
    training process, all its threads) or ``wall_s``, or for a log from before those were
    kept, the time of its steps from their throughput. A run stopped and resumed in a later
    session does not count the time in between (file times would). With ``until``, the time
    up to that step (between two rows, in proportion)."""
    rows = _log_until(run_dir, until)
    timed = [row for row in rows if f"{clock}_s" in row]
    if timed:
        return float(timed[-1][f"{clock}_s"])
    seconds, last_step = 0.0, 0
    for row in rows:
        if "images_per_s" in row and row["images_per_s"] > 0:
            seconds += (row["step"] - last_step) * batch_size / row["images_per_s"]
        last_step = row["step"]
    return seconds


# Each device's hours on its own clock: a CPU's are the training process's CPU time (a niced
# run sharing the machine is not charged the wall clock), a GPU's the wall clock it was held.
CLOCKS = {"cpu": ("cpu_hours", "cpu"), "cuda": ("gpu_hours", "wall")}


def run_devices(
    run_dir: Path, config: TrainConfig, since: int, until: int | None = None
) -> list[str]:
    """What the run's steps after ``since`` (up to ``until``) ran on ("cpu", "cuda" or both),
    from its log (the config's device for a log from before rows named it)."""
    devices = {
        row["device"]
        for row in _log_until(run_dir, until)
        if "device" in row and row["step"] > since
    }
    if devices:
        return sorted(devices)
    return ["cuda" if config.training.device.startswith("cuda") else "cpu"]


def split_hours(
    run_dir: Path, since: int, unnamed: str | None = None, until: int | None = None
) -> dict[str, float]:
    """The hours of the run's steps after ``since`` (up to ``until``) on each device's clock,
    from the log's row-to-row increments of ``cpu_s`` and ``wall_s``: a stretch that moved
    between devices (a GPU lending carrying a CPU run on, ``scripts/gpu_stage.sh`` with
    FORK_DIR, and the CPU carrying on from it) counts each row's time on the clock of the
    device it ran on. Rows from before the log named the device count as ``unnamed`` (skipped
    when None); the row whose stretch holds ``until`` counts in proportion (_log_until)."""
    hours: dict[str, float] = {}
    before = {"wall_s": 0.0, "cpu_s": 0.0}  # a run's clocks start at 0 (a fork's: its parent's)
    for row in _log_until(run_dir, until):
        if "wall_s" not in row or "cpu_s" not in row:
            continue
        device = row.get("device", unnamed)
        if row["step"] > since and device is not None:
            clock, kind = CLOCKS[device]
            spent = row[f"{kind}_s"] - before[f"{kind}_s"]
            hours[clock] = hours.get(clock, 0.0) + spent / 3600
        before = row
    return hours


def step_batches(run_dir: Path, since: int, until: int, batch_size: int) -> list[list[int]]:
    """The run's steps ``since`` < step <= ``until`` as ``[batch, steps]`` stretches, in order,
    from its log's ``patches_per_step`` (a fork may have changed the batch: a GPU lending at
    128 between CPU stretches at 16; logs from before it was kept count ``batch_size``)."""
    stretches: list[list[int]] = []

    def add(batch: int, steps: int) -> None:
        if steps <= 0:
            return
        if stretches and stretches[-1][0] == batch:
            stretches[-1][1] += steps
        else:
            stretches.append([batch, steps])

    last = since
    for row in read_log(run_dir / "log.jsonl"):
        if "loss" in row and since < row["step"] <= until:
            add(row.get("patches_per_step", batch_size), row["step"] - last)
            last = row["step"]
    add(batch_size, until - last)
    return stretches


def batch_patches(stretches: list[list[int]]) -> int:
    """The training patches of ``[batch, steps]`` stretches (step_batches, a record's
    ``batches``)."""
    return sum(batch * steps for batch, steps in stretches)


def stage_patches(run_dir: Path, since: int, until: int, batch_size: int) -> int:
    """The training patches of the run's steps ``since`` < step <= ``until`` (step_batches)."""
    return batch_patches(step_batches(run_dir, since, until, batch_size))


def patches_since(
    previous: dict | None, again: bool, run_dir: Path, steps: int, batch_size: int
) -> int:
    """The patches a release of ``run_dir`` at ``steps`` adds to the record ``previous``: all of
    the run's, or for the same run released ``again``, its own less those of the released
    model's history (the record's ``batches``). A fork keeps its parent's run id, so the
    model released may be the other branch of a fork: the two histories agree up to the fork,
    and only that common part cancels. (The steps and the clocks, differences of the two
    totals, are right for either branch as they are.)"""
    if not again or previous is None:
        return stage_patches(run_dir, 0, steps, batch_size)
    released = previous["training"].get("batches")
    if released is None:  # a record from before the batches were kept: a continuation
        return stage_patches(run_dir, previous["training"]["run"]["iterations"], steps, batch_size)
    mine = stage_patches(run_dir, 0, steps, batch_size)
    return mine - batch_patches(released)


def patches_seen(record: dict) -> int:
    """The training patches a record (cumulative, or a release line) counts; records from
    before the count was kept are of stages that all used batch 16."""
    return record.get("patches", 16 * record.get("iterations", 0))


def held_back(config: TrainConfig) -> str:
    """Which images judged the model: the held-back ones, or the first of them that
    ``validation.max_images`` keeps."""
    data, scored = config.data, config.validation.max_images
    if scored and scored < data.holdout:
        return f"{scored} of the {data.holdout} held back of {data.train}"
    return f"{data.holdout} of {data.train}"


def stage_reconstruction(record: dict) -> str:
    """The reconstruction loss the last stage of a released model was trained with (records
    from before ``optim.reconstruction`` existed were trained with L1)."""
    return record.get("stage_config", {}).get("optim", {}).get("reconstruction", "l1")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored_half(model: FDN) -> FDN:
    """The model as its float16 file loads back."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_model(model, Path(folder) / "half.safetensors", dtype=torch.float16)
        return load_model(path)


def release(
    name: str,
    run_dir: Path,
    table: dict,
    weights: Path,
    data_root: str | None,
    continues: bool = False,
    average: float | None = None,
    kept: int | None = None,
    min_standard_errors: float = MIN_STANDARD_ERRORS,
) -> bool:
    """Releases ``run_dir`` as ``name`` into ``weights`` and ``table`` when it beats the current
    release on the run's held-back images by at least ``min_standard_errors`` standard errors
    of the paired difference (:func:`fdn.metrics.paired_difference`); returns whether it did.

    ``continues`` says the run started from the current release although its ``init`` names
    a file that is not here (a copy of the release on the GPU machine that trained it);
    ``average`` picks one of the run's moving averages beside its own, ``kept`` the model it
    kept at that step (trained_model): its steps and hours are the run's up to that step."""
    model, config, steps, run_id = trained_model(run_dir, average, kept)
    if data_root:
        config.data.root = data_root
    # The same run released again (it went on training after its release): only what it did
    # since then is this stage's, so a run can keep its schedule across releases.
    previous = table.get(name)
    last_run = previous.get("training", {}).get("run") if previous else None
    again = run_id is not None and last_run is not None and last_run["id"] == run_id
    done_steps = last_run["iterations"] if again else 0
    if steps <= done_steps:
        raise SystemExit(f"{run_dir}: released at step {done_steps} already; nothing new since")
    iterations = steps - done_steps
    devices = run_devices(run_dir, config, done_steps, steps)
    if not config.data.holdout or config.validation.folder:
        raise SystemExit(f"{run_dir}: no held-back images (data.holdout) to judge the model on")
    images = load_validation(config)
    device = torch.device("cpu")
    scores = validation_psnrs(model, images, device)
    score = float(np.mean(scores))
    if previous is not None:
        current = load_model(weights / previous["file"])
        baselines = validation_psnrs(current, images, device)
        baseline = float(np.mean(baselines))
        # Four decimals: the comparison is unrounded, and releases now differ in the fourth;
        # with the difference's standard error over the images, to tell a gain from noise.
        difference = paired_difference(scores, baselines)
        print(f"{name}: held-back PSNR {score:.4f} dB, release {baseline:.4f} dB ({difference})")
        if score <= baseline:
            print(f"{name}: not released (no better than the current release)")
            return False
        # A gain under a standard error or so is the images' noise: the colour release of
        # session 29 (+0.0004, standard error 0.0009) did not move CBSD68, the grey one
        # (+0.0032, 0.0005) moved BSD68 +0.003 at every sigma (docs/training.md, "Releases").
        # One held-back image has no standard error: there, any gain.
        if difference.mean < min_standard_errors * difference.standard_error:
            print(
                f"{name}: not released (the gain is "
                f"{difference.mean / difference.standard_error:.1f} standard errors, under "
                f"--min-standard-errors {min_standard_errors:g})"
            )
            return False
        # Strength 1 flatters a model trained with a loss other than L1: the PSNR loss's gain
        # there over L1 was 0.021 dB, and 0.002 once each had its best strength
        # (docs/training.md). Where either model was, it must win at the best strength too.
        losses = {config.optim.reconstruction, stage_reconstruction(previous)}
        if losses != {"l1"}:
            # The sigmas strength 1 was scored at (fdn.noise.validation_noises).
            sigmas = tuple(config.validation.sigmas or [config.validation.sigma])
            rows = best_strength_scores({"run": model, "release": current}, config, sigmas)
            best, best_baseline = (float(np.mean(rows[key]["best"])) for key in ("run", "release"))
            print(
                f"{name}: at the best strength per sigma (losses {', '.join(sorted(losses))}): "
                f"held-back PSNR {best:.4f} dB, release {best_baseline:.4f} dB "
                f"({best - best_baseline:+.4f})"
            )
            if best <= best_baseline:
                print(f"{name}: not released (no better than the release at the best strength)")
                return False
    # A stage that started from the release (by name, or from a copy of its file) adds to it.
    init = config.training.init
    continued = previous is not None and (
        again
        or continues
        or init == name
        or (Path(init).is_file() and sha256(Path(init)) == previous["sha256"])
    )
    half = float(np.mean(validation_psnrs(_stored_half(model), images, device)))
    target = weights / f"{name}.safetensors"
    storage = "float16" if abs(half - score) < 0.01 else "float32"
    save_model(model, target, dtype=torch.float16 if storage == "float16" else None)
    # GPU hours are kept apart from CPU hours: an hour of one is not an hour of the other.
    # The run's totals on each clock it ran on (what a later release of it subtracts), and
    # this stage's hours: since the last release on one device, or split row by row.
    batch = config.training.batch_size
    clocks = [CLOCKS[device] for device in devices]
    run_hours = {
        clock: training_seconds(run_dir, batch, kind, steps) / 3600 for clock, kind in clocks
    }
    # A run that ever moved between devices is split row by row even where this stage ran on
    # one: a GPU stretch after a CPU release has the CPU stretch in its wall clock too.
    moved = len(run_devices(run_dir, config, 0, steps)) > 1
    if len(devices) == 1 and not moved:
        clock = clocks[0][0]
        stage = {clock: run_hours[clock] - (last_run.get(clock, 0.0) if again else 0.0)}
    else:
        stage = split_hours(run_dir, done_steps, until=steps)
    # Shown: each device's own hours where the run ever moved (its raw CPU clock also counts
    # the GPU process's CPU time), else the run's clock. Rows from before the log named the
    # device were CPU steps: every GPU stretch was logged with it.
    shown = (
        {"cpu_hours": 0.0, **split_hours(run_dir, 0, unnamed="cpu", until=steps)}
        if moved
        else run_hours
    )
    before = previous.get("cumulative", {}) if continued else {}
    if continued and not before:  # a record from before cumulative accounting
        before = {
            "iterations": previous["training"]["iterations"],
            "cpu_hours": previous["training"]["wall_hours"],
        }
    cumulative = {
        "iterations": before.get("iterations", 0) + iterations,
        # Training patches seen: stages differ in batch size (16 on a CPU, 128 on a GPU).
        "patches": patches_seen(before) + patches_since(previous, again, run_dir, steps, batch),
        "cpu_hours": round(before.get("cpu_hours", 0), 2),
    }
    if "gpu_hours" in stage or "gpu_hours" in before:
        cumulative["gpu_hours"] = round(before.get("gpu_hours", 0), 2)
    for clock, hours in stage.items():
        cumulative[clock] = round(cumulative[clock] + hours, 2)
    releases = list(previous.get("releases", [])) if continued else []
    if continued and not releases:  # the first release kept no table: start it with that one
        releases.append(
            {
                "date": "before holdout",
                "stage_iterations": before["iterations"],
                "stage_cpu_hours": before["cpu_hours"],
                **before,
                "holdout_psnr_db": round(baseline, 3),
                "psnr_db": previous.get("psnr_db", {}),
            }
        )
    releases.append(
        {
            "date": datetime.date.today().isoformat(),
            "stage_iterations": iterations,
            "stage_batch_size": config.training.batch_size,
            **{f"stage_{clock}": round(hours, 2) for clock, hours in stage.items()},
            **cumulative,
            "holdout_psnr_db": round(score, 3),
        }
    )
    data, optim = config.data, config.optim
    schedules = {
        "cosine": f"cosine to {optim.min_lr}",
        "wsd": f"constant, then cosine to {optim.min_lr} over the last {optim.decay_steps} steps",
        "step": f"milestones {optim.milestones}, gamma {optim.gamma}",
    }
    schedule = schedules[optim.schedule]
    table[name] = {
        "file": target.name,
        "sha256": sha256(target),
        "config": model.config.to_dict(),
        "storage": storage,
        "float16_psnr_change_db": half - score,
        "holdout": {
            "images": held_back(config),
            "sigmas": config.validation.sigmas or [config.validation.sigma],
            "psnr_db": round(score, 3),
        },
        "training": {
            "data": data.train,
            "noise": f"AWGN, sigma uniform in {data.sigma_range}"
            if data.sigma_range
            else f"AWGN, sigma {data.sigma}",
            "patch_size": data.patch_size,
            "augment": data.augment,
            "batch_size": config.training.batch_size,
            "iterations": steps,
            # The run's steps at each batch, in order (a run carried on by a GPU changes it).
            "batches": step_batches(run_dir, 0, steps, batch),
            "init": config.training.init or "scratch",
            "optimizer": f"Adam lr {optim.lr}, warm-up {optim.warmup}, {schedule}",
            "ema": config.training.ema,
            "precision": config.training.precision,
            "loss": f"{optim.lambda_nll} * NLL + {optim.lambda_rec} * "
            + _RECONSTRUCTION_NAMES[optim.reconstruction],
            "seed": config.training.seed,
            "hardware": os.environ.get("FDN_TRAINED_ON", "CPU"),
            # The run's own hours, all of its history, on each device's clock.
            **{clock: round(hours, 2) for clock, hours in shown.items()},
            # What a later release of this same run subtracts (its steps, and its clocks'
            # totals so far: for a run that moved, the wall clock holds its CPU stretches too,
            # so only differences of these are hours of one device).
            "run": {"id": run_id, "iterations": steps, **run_hours} if run_id else None,
        },
        "cumulative": cumulative,
        "releases": releases,
        # The last stage's resolved config: `fdn train` with it and --init of the previous
        # release reproduces this one (configs/bundled_*.toml are the same, data.root aside).
        "stage_config": config.to_dict(),
        # The recipe config the stages start from (`fdn info` names it); set by hand.
        "recipe": previous.get("recipe") if previous else None,
    }
    print(f"{name}: released ({storage}, float16 change {half - score:+.4f} dB)")
    # The new record keeps none of what was calibrated for the old weights: each is measured
    # again for the new file (until then the model has no curve, no guard, a raw estimate).
    for key, command in RECALIBRATIONS.items():
        if previous and previous.get(key):
            print(f"{name}: now measure its {key} again: {command.format(name=name)}")
    return True


def add_psnr(table: dict, name: str, results: Path, key: str = "psnr_db") -> None:
    """Adds an ``fdn eval`` results file's means for ``name`` to its record under ``key``,
    and, for the keys of :data:`RELEASE_LINE_SCORES`, to its last release line (the table of
    releases). ``psnr_db``: at strength 1, the protocol every release is compared by.
    ``psnr_db_default``: the same at the model's default strength (its strength curve's,
    ``scripts/fit_strength.py``), what ``fdn denoise`` gives; the model card's results table
    shows it where there is one. ``psnr_db_ensemble``: at the default strength with the x8
    self-ensemble (``fdn eval --ensemble``), the model card's best case."""
    # fdn eval names the model's column after it, and after its ensemble with --ensemble.
    method = ensemble_name(name) if key == "psnr_db_ensemble" else name
    scores: dict = {}
    for row in json.loads(results.read_text())["means"]:
        if row["method"] == method:
            scores.setdefault(row["dataset"], {})[f"sigma{row['sigma']:g}"] = round(row["psnr"], 2)
    if not scores:
        raise SystemExit(f"{results}: no scores of {method!r} (is it the right results file?)")
    record = table[name]
    for dataset, values in scores.items():
        record.setdefault(key, {}).setdefault(dataset, {}).update(values)
        if key in RELEASE_LINE_SCORES and record.get("releases"):
            line = record["releases"][-1].setdefault(key, {})
            line.setdefault(dataset, {}).update(values)


# The test-set scores each release line keeps for the table of releases: one pass at strength
# 1 (the gaps are taken from it), and the x8 self-ensemble where measured.
RELEASE_LINE_SCORES = ("psnr_db", "psnr_db_ensemble")


# What the bundled models are measured against (PSNR dB at sigma 15, 25, 50; `fdn eval`,
# same noisy images; docs/evaluation.md): the targets of issue #20.
REFERENCES = {
    "CBSD68": {"CBM3D": (33.56, 30.80, 27.46), "FFDNet": (33.79, 31.18, 27.99)},
    "BSD68": {"BM3D": (31.13, 28.62, 25.69), "FFDNet": (31.61, 29.20, 26.31)},
}


def release_table(record: dict) -> str:
    """A Markdown table of a model's releases: iterations and CPU hours so far, held-back
    PSNR, test-set PSNR and the gap to the references (negative: still below), and the x8
    self-ensemble's PSNR where any release has it."""
    dataset = next(iter(record.get("psnr_db", {})), None)
    references = REFERENCES.get(dataset, {})
    releases = record.get("releases", [])
    ensemble = dataset is not None and any("psnr_db_ensemble" in line for line in releases)
    header = ["release", "iterations", "patches", "CPU hours (+ GPU)", "held-back PSNR"]
    if dataset:
        header += [f"{dataset} s15 / s25 / s50", *(f"vs {name}" for name in references)]
    if ensemble:
        header.append(f"{dataset} x8 ensemble")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in releases:
        row = [
            line["date"],
            f"{line['iterations']:,}",
            f"{patches_seen(line):,}",
            f"{line['cpu_hours']:.2f}"
            + (f" + {line['gpu_hours']:.2f} GPU" if "gpu_hours" in line else ""),
            f"{line['holdout_psnr_db']:.3f}",
        ]
        if dataset:
            values = sigma_values(line.get("psnr_db", {}).get(dataset, {}))
            row.append(cell(values))
            for reference in references.values():
                pairs = zip(values, reference, strict=True)
                gaps = [None if v is None else v - r for v, r in pairs]
                row.append(cell(gaps, "+.2f"))
        if ensemble:
            row.append(cell(sigma_values(line.get("psnr_db_ensemble", {}).get(dataset, {}))))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sigma_values(scores: dict) -> list[float | None]:
    """``{"sigma15": ..., ...}``'s values at sigma 15, 25 and 50 (None where missing)."""
    return [scores.get(f"sigma{sigma}") for sigma in (15, 25, 50)]


def cell(values: list[float | None], spec: str = ".2f") -> str:
    """The table's "33.35 / 30.80 / 27.62" ("-" where a value is missing)."""
    return " / ".join("-" if value is None else format(value, spec) for value in values)


def release_figure(record: dict, out: Path, name: str) -> Path:
    """Draws, as an SVG at ``out``, the gap to the first reference (CBM3D, BM3D) at sigma 15,
    25 and 50 after each release that has test-set scores, against the training patches seen
    so far: the release table's gap column, to look at."""
    dataset = next(iter(record.get("psnr_db", {})), None)
    if dataset not in REFERENCES:
        raise SystemExit(f"{name}: no test-set scores against a reference to draw")
    reference, values = next(iter(REFERENCES[dataset].items()))
    curves = []
    for index, sigma in enumerate((15, 25, 50)):
        points = [
            (patches_seen(line) / 1000, score - values[index])
            for line in record.get("releases", [])
            if (score := line.get("psnr_db", {}).get(dataset, {}).get(f"sigma{sigma}"))
        ]
        curves.append(Curve(f"sigma {sigma}", WEIGHTS / "models.json", tuple(points)))
    return plot_curves(
        curves,
        out,
        title=f"{name}: {dataset} PSNR minus {reference}'s, after each release",
        lines=[(reference, 0.0)],
        noisy=False,
        x_title="training patches seen (thousands)",
        y_title=f"PSNR - {reference} (dB)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="NAME=RUN_DIR")
    parser.add_argument("--data-root", help="where the runs' data is now (default: as trained)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--psnr",
        action="append",
        default=[],
        metavar="NAME=RESULTS.json",
        help="add an fdn eval results.json summary to NAME's record",
    )
    parser.add_argument(
        "--psnr-default",
        action="append",
        default=[],
        metavar="NAME=RESULTS.json",
        help="the same, measured at the model's default strength (its strength curve)",
    )
    parser.add_argument(
        "--psnr-ensemble",
        action="append",
        default=[],
        metavar="NAME=RESULTS.json",
        help="the same, with the x8 self-ensemble (fdn eval --ensemble) at the default strength",
    )
    parser.add_argument("--table", metavar="NAME", help="print NAME's table of releases")
    parser.add_argument(
        "--figure",
        nargs=2,
        metavar=("NAME", "OUT.svg"),
        help="draw NAME's gap to BM3D after each release as an SVG",
    )
    parser.add_argument(
        "--continues",
        action="store_true",
        help="the runs started from the current release through a file that is not here "
        "(a copy on the machine that trained them): add to its record",
    )
    parser.add_argument(
        "--average",
        type=float,
        metavar="DECAY",
        help="release the runs' moving average of this decay, one they keep beside their own "
        "(training.ema_extra), instead of their own",
    )
    parser.add_argument(
        "--kept",
        type=int,
        metavar="STEP",
        help="release the model the run kept at STEP (training.keep_every) instead of its "
        "checkpoint's: one that scored best between validations (one run only)",
    )
    parser.add_argument(
        "--min-standard-errors",
        type=float,
        default=MIN_STANDARD_ERRORS,
        metavar="K",
        help="release only a held-back gain of at least K standard errors of the paired "
        f"difference over the images (default {MIN_STANDARD_ERRORS:g}; 0: any gain)",
    )
    args = parser.parse_args(argv)
    if args.min_standard_errors < 0:
        parser.error("--min-standard-errors must be at least 0")
    if args.kept is not None and len(args.runs) != 1:
        parser.error("--kept STEP names one run's step: give exactly one NAME=RUN_DIR")
    table_path = args.weights / "models.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    changed = []
    for entry in args.runs:
        name, run_dir = entry.split("=", 1)
        run = Path(run_dir)
        released = release(
            name,
            run,
            table,
            args.weights,
            args.data_root,
            args.continues,
            args.average,
            args.kept,
            args.min_standard_errors,
        )
        if released:
            changed.append(name)
    scored = {
        "psnr_db": args.psnr,
        "psnr_db_default": args.psnr_default,
        "psnr_db_ensemble": args.psnr_ensemble,
    }
    for key, entries in scored.items():
        for entry in entries:
            name, results = entry.split("=", 1)
            add_psnr(table, name, Path(results), key)
            changed.append(name)
    if changed:
        # Into models.json as it is now, so that another model's release, or a strength
        # curve, written while this one scored its run is kept.
        update_json(table_path, lambda current: current.update({n: table[n] for n in changed}))
    if args.table:
        print(release_table(table[args.table]))
    if args.figure:
        name, out = args.figure
        print(release_figure(table[name], Path(out), name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
