r"""Where a training run stands, from its folder: its step, pace, validations and what comes next.

A run trained in the background (``nohup fdn train ... --no-progress``) shows nothing until its
next validation, hours away on a CPU. :func:`run_status` reads what the run folder already
holds (``config.toml``, ``log.jsonl``, the files' times) and says how far it is, how fast it
goes, what its validations scored (the moving averages kept beside its own too:
``training.ema_extra``), the models it keeps between validations (``training.keep_every``)
and when its next validation and checkpoint come; for a run from a bundled model (``--init
NAME``) scored on the same held-back images as its release, that release's score, which
``scripts/release_models.py`` asks the run to beat. It reads no checkpoint and imports no
torch, so it is cheap to run while the run trains.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fdn.curves import (
    AVERAGE_PREFIX,
    average_key,
    kept_path,
    kept_steps,
    ramp_end,
    ramped_decay,
    read_log,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["RunStatus", "StatusError", "format_status", "run_status"]

# The training time a pace is measured over: the last hour of it, so that a run resumed on
# other hardware (a GPU stage, another CPU) is timed as it runs now.
PACE_WINDOW_S = 3600.0


class StatusError(ValueError):
    """A folder that is not a run of ``fdn train`` (the message names it)."""


@dataclass(frozen=True)
class RunStatus:
    """What a run folder says of its run (see :func:`run_status`).

    ``steps_per_hour`` is over the last hour of training time (the log's ``wall_s``, which
    leaves out the time a run was stopped), None when the log cannot tell. ``validations``
    are ``(step, PSNR)`` of the run's own average (or weights), ``averages`` the last scores
    of the averages kept beside it now (decay -> PSNR; None where none was scored yet). ``ema``
    is the decay of the run's own average (0: none), which ramps up over its first updates.
    ``cpu_per_step`` and ``cores`` are over the same window (the log's ``cpu_s``: the training
    process's CPU time, all its threads): CPU seconds per step, and CPU time over training
    time, the cores it kept busy; None where the log has no CPU time. ``threads`` is
    ``training.threads`` (0: PyTorch's default). ``kept`` are the steps whose models the run
    keeps in ``kept/`` (``training.keep_every``, every ``keep_every`` steps; 0: none).
    ``ramps`` is whether the run's own average ramps its decay up: not from ``--init``.
    ``release`` is ``(name, held-back PSNR)`` of the bundled model the run started from where
    its record was scored on the run's held-back images and sigmas (None elsewhere).
    """

    run_dir: Path
    step: int
    iterations: int
    steps_per_hour: float | None
    validations: tuple[tuple[int, float], ...]
    averages: dict[str, float | None]
    validate_every: int
    checkpoint_every: int
    last_row: dict
    logged_s_ago: float
    checkpoint_s_ago: float | None
    finished: bool
    ema: float = 0.0
    cpu_per_step: float | None = None
    cores: float | None = None
    threads: int = 0
    kept: tuple[int, ...] = ()
    keep_every: int = 0
    checkpoint_minutes: float = 0.0
    ramps: bool = True
    release: tuple[str, float] | None = None

    @property
    def best(self) -> tuple[int, float] | None:
        """The best validation ``(step, PSNR)``, None before the first."""
        return max(self.validations, key=lambda v: v[1]) if self.validations else None

    def hours_to(self, step: int) -> float | None:
        """Training hours until ``step`` at the current pace (None when unknown)."""
        if not self.steps_per_hour:
            return None
        return max(0, step - self.step) / self.steps_per_hour


def run_status(run_dir: str | os.PathLike, now: float | None = None) -> RunStatus:
    """The status of the run in ``run_dir`` (a folder ``fdn train`` writes); ``now`` (a
    ``time.time()``) is for tests. Raises :class:`StatusError` naming the folder when it has
    no readable ``config.toml`` or ``log.jsonl`` rows with a step."""
    folder = Path(run_dir).expanduser()
    config_path, log_path = folder / "config.toml", folder / "log.jsonl"
    for path in (config_path, log_path):
        if not path.is_file():
            raise StatusError(f"{path}: missing (is {folder} a run folder of fdn train?)")
    try:
        config = tomllib.loads(config_path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StatusError(f"{config_path}: not a TOML config ({error})") from None
    rows = [row for row in read_log(log_path) if isinstance(row.get("step"), int)]
    trained = [row for row in rows if "loss" in row or "val_psnr" in row]
    if not trained:
        raise StatusError(f"{log_path}: no training steps logged yet")
    training = config.get("training", {})
    now = time.time() if now is None else now
    last = trained[-1]
    scored = [row for row in rows if "val_psnr" in row]
    validations = tuple((row["step"], float(row["val_psnr"])) for row in scored)
    averages: dict[str, float | None] = {
        average_key(decay): None for decay in training.get("ema_extra", [])
    }
    # Only the averages the run keeps now: one dropped on a resume (--set
    # training.ema_extra=[...]) is no longer updated, and its last score is history.
    for key in averages:
        if scored and AVERAGE_PREFIX + key in scored[-1]:
            averages[key] = float(scored[-1][AVERAGE_PREFIX + key])
    checkpoint = folder / "checkpoint.pt"
    iterations = int(training.get("iterations", 0))
    cpu_per_step, cores = _cpu_use(trained)
    return RunStatus(
        run_dir=folder,
        step=last["step"],
        iterations=iterations,
        steps_per_hour=_pace(trained),
        validations=validations,
        averages=averages,
        validate_every=int(config.get("validation", {}).get("every", 0)),
        checkpoint_every=int(training.get("checkpoint_every", 0)),
        # Absent from the configs of runs older than the key, which had no such checkpoints.
        checkpoint_minutes=float(training.get("checkpoint_minutes", 0.0)),
        last_row=last,
        logged_s_ago=now - log_path.stat().st_mtime,
        checkpoint_s_ago=now - checkpoint.stat().st_mtime if checkpoint.is_file() else None,
        finished=(folder / "model.safetensors").is_file() or last["step"] >= iterations > 0,
        ema=float(training.get("ema", 0.0)),
        cpu_per_step=cpu_per_step,
        cores=cores,
        threads=int(training.get("threads", 0)),
        kept=kept_steps(folder),
        keep_every=int(training.get("keep_every", 0)),
        # An average from trained weights does not ramp (fdn.optim.WeightAverage); runs from
        # --init checkpointed before 2026-11-28 did, which only their checkpoint says.
        ramps=not training.get("init"),
        release=_release_score(config),
    )


# What picks a run's held-back images and their noise (fdn.data.load_validation): a run and a
# release whose stage agreed on all of these were scored on the same noisy images.
_HELD_BACK_KEYS = (
    ("data", "train"),
    ("data", "holdout"),
    ("validation", "folder"),
    ("validation", "max_images"),
    ("validation", "crop"),
    ("validation", "seed"),
)


def _release_score(config: dict) -> tuple[str, float] | None:
    """``(name, held-back PSNR)`` of the bundled model the run started from, as its record
    in ``models.json`` says now (a later release of it included), where that release's stage
    (its ``stage_config``) drew the same held-back images and sigmas as the run; else None."""
    name = config.get("training", {}).get("init")
    table = resources.files("fdn") / "weights" / "models.json"
    if not isinstance(name, str) or not table.is_file():
        return None
    record = json.loads(table.read_text()).get(name, {})
    stage = record.get("stage_config", {})
    same = all(
        config.get(section, {}).get(key) == stage.get(section, {}).get(key)
        for section, key in _HELD_BACK_KEYS
    ) and _validation_sigmas(config) == _validation_sigmas(stage)
    score = record.get("holdout", {}).get("psnr_db")
    if not (same and config.get("data", {}).get("holdout") and score):
        return None
    return name, float(score)


def _validation_sigmas(config: dict) -> list[float]:
    """The sigmas validation scores at: ``validation.sigmas``, else ``[validation.sigma]``."""
    validation = config.get("validation", {})
    sigmas = validation.get("sigmas") or [validation.get("sigma")]
    return [float(sigma) for sigma in sigmas if sigma is not None]


def _window(rows: list[dict], *keys: str) -> tuple[dict, dict] | None:
    """The first and last rows with ``keys`` in the last :data:`PACE_WINDOW_S` of training
    time (the row before the last where only the last is in it); None under two rows."""
    timed = [r for r in rows if all(isinstance(r.get(key), int | float) for key in keys)]
    if len(timed) < 2:
        return None
    last = timed[-1]
    first = next(r for r in timed if r["wall_s"] >= last["wall_s"] - PACE_WINDOW_S)
    return (timed[-2] if first is last else first), last


def _pace(rows: list[dict]) -> float | None:
    """Steps per hour of training time over the last :data:`PACE_WINDOW_S` of it."""
    if (window := _window(rows, "wall_s")) is None:
        return None
    first, last = window
    seconds, steps = last["wall_s"] - first["wall_s"], last["step"] - first["step"]
    return steps / seconds * 3600 if seconds > 0 and steps > 0 else None


def _cpu_use(rows: list[dict]) -> tuple[float | None, float | None]:
    """CPU seconds per step and cores kept busy, over the window :func:`_pace` reads."""
    if (window := _window(rows, "wall_s", "cpu_s")) is None:
        return None, None
    first, last = window
    seconds, steps = last["wall_s"] - first["wall_s"], last["step"] - first["step"]
    cpu = last["cpu_s"] - first["cpu_s"]
    if seconds <= 0 or steps <= 0 or cpu < 0:
        return None, None
    return cpu / steps, cpu / seconds


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _next(status: RunStatus, every: int) -> str:
    """``step N, in about H h`` for the next multiple of ``every`` within the run."""
    step = (status.step // every + 1) * every
    if status.iterations and step > status.iterations:
        step = status.iterations
    hours = status.hours_to(step)
    return f"step {step:,}" + (
        f", in about {hours:.1f} h of training" if hours is not None else ""
    )


# The last log row's values shown, and their names.
_SHOWN = (("loss", "loss"), ("lr", "lr"), ("grad_norm", "grad norm"), ("grad_norm_max", "largest"))


def format_status(status: RunStatus) -> str:
    """A few lines for a person: progress and pace, validations, the last log row, files."""
    s = status
    share = f" ({100 * s.step / s.iterations:.1f}%)" if s.iterations else ""
    pace = f", {s.steps_per_hour:,.0f} steps/hour" if s.steps_per_hour else ""
    state = "finished" if s.finished else f"last logged {_ago(s.logged_s_ago)}"
    lines = [f"{s.run_dir}: step {s.step:,} of {s.iterations:,}{share}{pace}; {state}"]
    if s.cpu_per_step is not None and s.cores is not None:
        line = f"  CPU: {s.cpu_per_step:.2f} s per step, {s.cores:.2f} cores busy"
        # Under 80% of the threads it was given: the rest of the time went to other work.
        if s.threads and s.cores < 0.8 * s.threads:
            line += f" of its {s.threads} thread{'s' * (s.threads > 1)}: it shares the machine"
        lines.append(line)
    if s.validations:
        step, score = s.validations[-1]
        best_step, best = s.best or (step, score)
        lines.append(
            f"  validation: {score:.3f} dB at step {step:,} (best {best:.3f} at {best_step:,})"
        )
    else:
        lines.append("  validation: none yet")
    if s.release:
        name, score = s.release
        # The record keeps three decimals: a lead that rounds to nothing is +0.000, not -0.000.
        ahead = f"; best validation {round(s.best[1] - score, 3) + 0.0:+.3f}" if s.best else ""
        lines.append(f"  to beat: {name} {score:.3f} dB on the same held-back images{ahead}")
    # Its count of updates is the run's steps, near enough.
    if s.ema and s.ramps and (decay := ramped_decay(s.ema, s.step)) < s.ema:
        lines.append(
            f"  the run's own average: decay {s.ema:g} from step {ramp_end(s.ema):,}; "
            f"at step {s.step:,} its ramp holds it at {decay:.4f}, "
            f"about the last {1 / (1 - decay):,.0f} steps"
        )
    if s.averages:
        scores = ", ".join(
            f"{key} {'-' if value is None else f'{value:.3f}'}"
            for key, value in s.averages.items()
        )
        lines.append(f"  averages beside the run's own (last validation): {scores}")
    if not s.finished and s.validate_every:
        lines.append(f"  next validation: {_next(s, s.validate_every)}")
    if not s.finished and s.checkpoint_every:
        written = (
            "none yet" if s.checkpoint_s_ago is None else f"written {_ago(s.checkpoint_s_ago)}"
        )
        timed = f", or {s.checkpoint_minutes:g} min after the last" if s.checkpoint_minutes else ""
        lines.append(f"  checkpoint: {written}; next at {_next(s, s.checkpoint_every)}{timed}")
    if s.kept or s.keep_every:
        kept = f"{len(s.kept)}, the last {kept_path(Path(), s.kept[-1])}" if s.kept else "none"
        every = f" (every {s.keep_every:,} steps)" if s.keep_every else ""
        coming = f"; next at {_next(s, s.keep_every)}" if s.keep_every and not s.finished else ""
        lines.append(f"  models kept{every}: {kept}{coming}")
    row = s.last_row
    numbers = [f"{name} {row[key]:.3g}" for key, name in _SHOWN if key in row]
    if row.get("skipped"):
        numbers.append(f"{row['skipped']} steps skipped")
    if numbers:
        lines.append(f"  at step {row['step']:,}: " + ", ".join(numbers))
    return "\n".join(lines)
