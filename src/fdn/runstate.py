r"""What a training run keeps on disk besides the model: checkpoints, RNG states, logs, signals.

Also the checks that keep a run from going on with, or resuming from, garbage.

Checkpoints hold only tensors and plain Python values, so they are read back with
``torch.load(weights_only=True)``: nothing is unpickled. They are written to a temporary
file and renamed, so a write killed midway never replaces the last good one.
"""

from __future__ import annotations

import json
import math
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fdn.atomic import atomic_write
from fdn.config import ConfigError, config_from_dict
from fdn.serialization import ModelFileError, check_shapes

__all__ = [
    "TrainingError",
    "atomic_torch_save",
    "copy_log",
    "finite_weights",
    "load_checkpoint",
    "load_weights",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "signals_caught",
    "to_toml",
    "trim_log",
    "write_log",
]


class TrainingError(RuntimeError):
    """A run that cannot go on or produced garbage (non-finite weights, every step skipped)."""


_CHECKPOINT_KEYS = ("config", "model", "step", "optimizer", "scheduler", "skipped", "best_psnr")


def load_checkpoint(path: Path) -> dict:
    """A run's checkpoint, its ``config`` entry as a :class:`TrainConfig`.

    Read with ``weights_only=True`` (nothing is unpickled); a missing, empty, foreign or
    damaged file is a :class:`TrainingError` of one line that names it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    if path.stat().st_size == 0:
        raise TrainingError(f"{path}: empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch's texts run to many lines
        raise TrainingError(
            f"{path}: not a checkpoint fdn can read ({type(error).__name__}); "
            "fdn never unpickles other objects"
        ) from None
    if not isinstance(checkpoint, dict):
        raise TrainingError(f"{path}: not a checkpoint (a {type(checkpoint).__name__})")
    for key in (*_CHECKPOINT_KEYS, "rng"):
        if key not in checkpoint:
            raise TrainingError(f"{path}: no '{key}' entry; the checkpoint is damaged")
    try:
        checkpoint["config"] = config_from_dict(checkpoint["config"])
    except ConfigError as error:
        raise TrainingError(f"{path}: its config is invalid ({error})") from None
    return checkpoint


def load_weights(model: nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)``, with a one-line error naming the first mismatch (the
    check model files get: :func:`fdn.serialization.check_shapes`)."""
    try:
        check_shapes(model, {name: tensor.shape for name, tensor in state.items()}, path)
    except ModelFileError as error:
        raise TrainingError(f"{path}: does not match its config ({error.problem})") from None
    model.load_state_dict(state)


def finite_weights(model: nn.Module) -> bool:
    """Whether every weight of ``model`` is finite (one reduction per tensor)."""
    norms = torch._foreach_norm([p.detach() for p in model.parameters()])
    return bool(torch.isfinite(torch.stack(norms)).all())


def atomic_torch_save(payload: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _as_tensor(value: object) -> torch.Tensor:
    """Plain JSON-able state as a uint8 tensor, so that weights_only loading accepts it."""
    return torch.from_numpy(np.frombuffer(json.dumps(value).encode(), dtype=np.uint8).copy())


def _from_tensor(tensor: torch.Tensor) -> Any:
    return json.loads(bytes(tensor.tolist()))


def rng_state() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "numpy": _as_tensor(
            [name, np.asarray(keys).tolist(), int(position), int(has_gauss), float(cached)]
        ),
        "python": _as_tensor(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = _from_tensor(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate((3, tuple(_from_tensor(state["python"])), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def signals_caught() -> Iterator[list[int]]:
    """Turns SIGINT/SIGTERM into a list the loop checks between steps."""
    caught: list[int] = []
    handlers = {}

    def handler(signum: int, _frame: object) -> None:
        caught.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread: leave signals alone
            handlers[signum] = signal.signal(signum, handler)
    try:
        yield caught
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)


def _strict(value: object) -> object:
    """NaN and infinities as null: strict JSON parsers reject the bare tokens."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


class _Board(Protocol):
    """What write_log needs of a TensorBoard SummaryWriter."""

    def add_scalar(self, tag: str, value: Any, step: int) -> object: ...


def write_log(run_dir: Path, record: dict, board: _Board | None = None) -> None:
    """Appends one JSON line to ``log.jsonl`` (and scalars to TensorBoard when given)."""
    line = json.dumps({key: _strict(value) for key, value in record.items()}, allow_nan=False)
    with (run_dir / "log.jsonl").open("a") as stream:
        stream.write(line + "\n")
    if board is not None:
        for name, value in record.items():
            # Scalars only: a log row also says what the steps ran on ("device": "cuda"),
            # which TensorBoard's add_scalar cannot take (it fails on a string).
            if name != "step" and isinstance(value, (int, float)):
                board.add_scalar(name, value, record["step"])


def copy_log(source: Path, target: Path, patches_per_step: int) -> None:
    """Copies a parent run's ``log.jsonl`` for its fork, atomically, giving its step lines
    from before ``patches_per_step`` was logged the parent's batch, so that a fork with
    another batch still counts the patches its history saw."""
    from fdn.curves import read_log  # skips a line cut short by a kill

    lines = []
    for row in read_log(source):
        if "loss" in row:
            row.setdefault("patches_per_step", patches_per_step)
        lines.append(json.dumps(row) + "\n")
    atomic_write(target, lambda tmp: Path(tmp).write_text("".join(lines)))


def trim_log(run_dir: Path, step: int) -> None:
    """Keeps the lines of ``log.jsonl`` up to ``step`` (none for 0), atomically."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return
    kept = []
    if step > 0:
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def tensorboard(run_dir: Path) -> _Board | None:
    """A TensorBoard writer when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def to_toml(values: dict) -> str:
    """A config dict (sections of scalars and lists) as TOML."""
    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        lines += [
            f"{key} = {json.dumps(value)}" for key, value in table.items() if value is not None
        ]
        lines.append("")
    return "\n".join(lines)
