r"""``train(config, run_dir)``: the paper's protocol in one readable loop, exactly resumable.

Run folder layout::

    config.toml          the resolved config (also inside every checkpoint)
    log.jsonl            one JSON object per logging or validation step
    checkpoint.pt        the last checkpoint: model, optimiser, scheduler, step, RNG states
    best.safetensors     the model with the best validation PSNR so far
    model.safetensors    the final model, for fdn.load_model / fdn denoise

Started by ``torchrun --nproc_per_node=K -m fdn train ...``, the same loop runs distributed
data-parallel (gloo on CPU, nccl on GPU): ``training.batch_size`` is per process, each rank
takes its share of the combined batch (see :mod:`fdn.data`), and only rank 0 logs, validates
and writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
import time
import typing
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fdn.baselines.dncnn import DnCNN, save_dncnn
from fdn.config import (
    FORK_GROWS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    config_for_fork,
    config_for_resume,
)
from fdn.curves import AVERAGE_PREFIX, KEPT, average_key, kept_path
from fdn.data import StepSampler, TrainingPatches, load_validation
from fdn.denoising import precision_context
from fdn.losses import bits_per_dim, fdn_loss
from fdn.metrics import psnr
from fdn.model import FDN
from fdn.optim import (
    WeightAverage,
    build_optimizer,
    build_scheduler,
    has_batch_norm,
    lr_factor,
)
from fdn.runstate import (
    TrainingError,
    atomic_torch_save,
    copy_log,
    finite_weights,
    load_checkpoint,
    load_weights,
    rng_state,
    seed_everything,
    set_rng_state,
    signals_caught,
    tensorboard,
    to_toml,
    trim_log,
    write_log,
)
from fdn.runtime import bf16_is_native, resolve_device, resolve_precision
from fdn.serialization import save_model

__all__ = [
    "CHECKPOINT",
    "KEPT",
    "TrainResult",
    "TrainingError",
    "TrainingStopped",
    "build_model",
    "checkpoint_model",
    "init_from",
    "step_loss",
    "train",
    "validate",
    "validation_psnrs",
]

CHECKPOINT = "checkpoint.pt"
# Training inputs over which a moving average's batch norm statistics are recomputed (the
# probe on held-back faces: 128 and 512 gave PSNRs 0.02 dB apart).
BN_CALIBRATION_SAMPLES = 256
_MAX_SKIPPED_IN_A_ROW = 100


class TrainingStopped(Exception):
    """Raised by :func:`train` after SIGINT/SIGTERM, once the checkpoint is safely written."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.step, self.signum = step, signum


@dataclass
class TrainResult:
    """The trained model, its final file (rank 0 only; None elsewhere) and the last step."""

    model: nn.Module
    model_file: Path | None
    step: int


def build_model(config: TrainConfig) -> nn.Module:
    m = config.model
    if m.kind == "dncnn":
        return DnCNN(m.in_channels, m.dncnn_depth, m.dncnn_features, batch_norm=True)
    return FDN.from_config(m.fdn_config())


def checkpoint_model(
    path: str | os.PathLike, average: float | None = None, raw: bool = False
) -> tuple[nn.Module, dict]:
    """The model a run's checkpoint holds, in eval mode, and the checkpoint (its config a
    :class:`TrainConfig`): the run's moving average when it keeps one (what its model files
    hold), or with ``average``, the one of that decay kept beside it (``training.ema_extra``),
    or with ``raw``, the weights the optimiser steps (no average: the shortest horizon).
    A checkpoint without that average is a :class:`TrainingError` naming the ones it has."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint["config"])
    if raw:
        state = checkpoint["model"]
    elif average is None:
        state = checkpoint["ema"]["model"] if "ema" in checkpoint else checkpoint["model"]
    else:
        kept = checkpoint.get("ema_extra", {})
        if average_key(average) not in kept:
            raise TrainingError(
                f"{path}: no moving average of decay {average:g} beside the run's own "
                f"(training.ema_extra: {', '.join(kept) or 'none'})"
            )
        state = kept[average_key(average)]["model"]
    load_weights(model, state, path)
    return model.eval(), checkpoint


def init_from(model: nn.Module, config: TrainConfig) -> None:
    """Loads ``config.training.init`` (a bundled name or a model file) into ``model``.

    The file's architecture must be the config's: a mismatch is a :class:`ConfigError` that
    names both, since silently training another network than the config says helps no one.
    """
    from fdn.pretrained import resolve_model

    spec = config.training.init
    if not isinstance(model, FDN):
        raise ConfigError(f"training.init {spec}: only FDN runs start from a model file")
    try:
        source = resolve_model(spec, config.model.in_channels)
    except ValueError as error:  # ModelFileError included: it names the file
        raise ConfigError(f"training.init: {error}") from None
    ours, theirs = model.config.to_dict(), source.config.to_dict()
    differ = [k for k in ours if ours[k] != theirs[k]]
    grown = [key.removeprefix("model.") for key in FORK_GROWS]
    if differ and set(differ) <= set(grown) and all(theirs[k] <= ours[k] for k in grown):
        # A deeper or wider network than the file's: the added Steps of Flow start as the
        # identity, the added channels feed nothing yet.
        model.grow_from(source.state_dict(), theirs["steps_per_block"], theirs["hidden_channels"])
        return
    if differ:
        listed = ", ".join(f"{k} {theirs[k]} (config: {ours[k]})" for k in differ)
        raise ConfigError(
            f"training.init {spec} has another architecture than [model]: {listed} "
            f"(only more steps_per_block or hidden_channels can start from it)"
        )
    model.load_state_dict(source.state_dict())


def _dequantize(config: TrainConfig) -> bool:
    flag = config.data.dequantize
    return config.data.kind == "paired" if flag is None else flag


def _dncnn_loss(
    model: nn.Module, config: TrainConfig, noisy: Tensor, clean: Tensor, step: int
) -> dict[str, Tensor]:
    """DnCNN's residual objective: the network predicts the noise, MSE."""
    loss = (noisy - model(noisy) - clean).pow(2).mean()
    return {"loss": loss, "mse": loss}


def _fdn_loss(
    model: nn.Module, config: TrainConfig, noisy: Tensor, clean: Tensor, step: int
) -> dict[str, Tensor]:
    """FDN's objective (spec 6.4): lambda1 * NLL(noisy) + lambda2 * L1(decode(z_hat), clean)
    (or the config's other reconstruction measure);
    the dequantisation noise is drawn from the run's seed and the step, for exact resumes."""
    # Only a dequantised run reads the step: a compiled step (training.compile) that never
    # reads it is not compiled again as it changes.
    generator = None
    if _dequantize(config):
        generator = torch.Generator(device=noisy.device).manual_seed(
            config.training.seed * 7919 + step
        )
    o = config.optim
    terms = fdn_loss(
        typing.cast("FDN", model),
        noisy,
        clean,
        o.lambda_nll,
        o.lambda_rec,
        _dequantize(config),
        generator,
        o.reconstruction,
    )
    # The "psnr" term is logged as what it measures, the batch's PSNR (its negative).
    if o.reconstruction == "psnr":
        return {"loss": terms.total, "nll": terms.nll, "psnr": -terms.reconstruction}
    return {"loss": terms.total, "nll": terms.nll, o.reconstruction: terms.reconstruction}


# One objective per model kind (config.model.kind).
_LOSSES = {"fdn": _fdn_loss, "dncnn": _dncnn_loss}


def step_loss(
    model: nn.Module, config: TrainConfig, noisy: Tensor, clean: Tensor, step: int
) -> dict[str, Tensor]:
    """The loss terms of one training step for the config's model kind (``loss`` is the one
    optimised); the loop calls it through this module, so a test or an extension can wrap it."""
    return _LOSSES[config.model.kind](model, config, noisy, clean, step)


class _Objective(nn.Module):
    """The training loss as one module call, so that DDP sees a forward pass per step."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, noisy: Tensor, clean: Tensor, step: int) -> dict[str, Tensor]:
        return step_loss(self.model, self.config, noisy, clean, step)


# training.compile: torch.compile's backend and mode for each choice.
_COMPILE: dict[str, tuple[str, str | None]] = {
    "inductor": ("inductor", None),
    "cudagraphs": ("inductor", "reduce-overhead"),
    "check": ("aot_eager", None),
}


def compile_objective(objective: nn.Module, choice: str) -> nn.Module:
    """``objective`` through ``torch.compile`` as ``training.compile = choice`` says (``"off"``:
    itself); it compiles on its first call."""
    if choice == "off":
        return objective
    backend, mode = _COMPILE[choice]
    return typing.cast("nn.Module", torch.compile(objective, backend=backend, mode=mode))


@torch.no_grad()
def validation_psnrs(
    model: nn.Module, images: list[tuple[str, Tensor, Tensor]], device: torch.device
) -> list[float]:
    """PSNR (spec 7.3 convention) of each of the model's denoised validation images, in order.

    It denoises with a copy, so the model is left exactly as it was: eval mode would put its
    weights in channels-last (the fast path), and a run that went on training them so would
    round differently from one resumed from its checkpoint.
    """
    denoiser = typing.cast("FDN | DnCNN", copy.deepcopy(model).eval())
    return [
        psnr(denoiser.denoise(noisy.to(device)).cpu(), clean).item() for _, noisy, clean in images
    ]


def validate(
    model: nn.Module, images: list[tuple[str, Tensor, Tensor]], device: torch.device
) -> float:
    """Mean PSNR of the model's denoised validation images (:func:`validation_psnrs`)."""
    return float(np.mean(validation_psnrs(model, images, device)))


def _save_model_file(model: nn.Module, path: Path) -> None:
    if isinstance(model, DnCNN):
        save_dncnn(model, path)
    else:
        save_model(typing.cast("FDN", model), path)


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name, "training.device")
    if world == 1:
        return 0, 1, device
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (so all ranks take the same branch)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def first_samples(patches: TrainingPatches, size: int) -> Tensor:
    """The noisy images of the first ``size`` training samples (ActNorm's init batch)."""
    return torch.stack([patches[i][0] for i in range(size)])


@dataclass
class _Run:
    """Everything a run's loop works with, set up by :func:`_start`."""

    config: TrainConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    average: WeightAverage | None
    batches: Iterator
    validation: list
    say: Callable[[str], None]
    start: int = 0
    skipped: int = 0
    best: float = -math.inf
    # Training time spent before this process, by clock ("wall", "cpu"), from the checkpoint.
    seconds: dict[str, float] = field(default_factory=dict)
    # Names the run across its resumes, so that a release of it a second time adds only the
    # steps since the first (scripts/release_models.py); a checkpoint from before it gets one.
    run_id: str = ""
    # The averages beside the shipped one (training.ema_extra), by average_key.
    extra: dict[str, WeightAverage] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shipped(self) -> nn.Module:
        """What validation scores and the model files hold: the average when there is one."""
        return self.average.calibrated() if self.average is not None else self.model

    def save_checkpoint(self, step: int, seconds: dict[str, float]) -> None:
        if not self.main:
            return
        state = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "skipped": self.skipped,
            "best_psnr": self.best,
            "train_seconds": seconds,
            "run_id": self.run_id,
            "rng": rng_state(),
        }
        if self.average is not None:
            state["ema"] = self.average.state_dict()
        if self.extra:
            state["ema_extra"] = {key: average.state_dict() for key, average in self.extra.items()}
        atomic_torch_save(state, self.run_dir / CHECKPOINT)


def _size(model: ModelConfig) -> tuple[int, int]:
    """Steps of Flow per block and Dense Block growth: what a fork may grow."""
    return model.steps_per_block, model.hidden_channels


def _grow_run(model: FDN, parent: nn.Module, checkpoint: dict, optimizer: Optimizer) -> None:
    """Loads a checkpoint of ``parent``, an FDN with fewer Steps of Flow per block or narrower
    Dense Blocks, into ``model`` and ``optimizer``: the added steps start as the identity and
    the added channels feed nothing yet (FDN.grow_from), and Adam keeps its moments of every
    weight the parent had, under the same names, laid into the wider tensors with the added
    entries at 0; the added weights start with none, as in a new run."""
    steps, growth = _size(checkpoint["config"].model)
    model.grow_from(checkpoint["model"], steps, growth)
    index = {name: i for i, (name, _) in enumerate(parent.named_parameters())}
    params = dict(model.named_parameters())
    names = list(params)
    state, (group,) = checkpoint["optimizer"]["state"], checkpoint["optimizer"]["param_groups"]
    carried = {n: state[index[n]] for n in names if index.get(n) in state}
    zeros = {n: torch.zeros_like(params[n]) for n in carried}
    for key in ("exp_avg", "exp_avg_sq"):
        moments = model.grown_state({n: s[key] for n, s in carried.items()}, growth, zeros)
        carried = {n: {**s, key: moments[n]} for n, s in carried.items()}
    optimizer.load_state_dict(
        {
            "state": {i: carried[n] for i, n in enumerate(names) if n in carried},
            "param_groups": [{**group, "params": list(range(len(names)))}],
        }
    )


def _start(
    config: TrainConfig | None,
    run_dir: Path,
    resume: bool,
    log: Callable[[str], None] | None,
    changes: typing.Sequence[str] = (),
    fork: Path | None = None,
) -> _Run:
    """Sets a run up, new, resumed or forked: data, model, optimiser, run folder. Everything
    that can be wrong with the data, the config or a model file fails here, before any step."""
    checkpoint = None
    if resume or fork is not None:
        source = fork if fork is not None else run_dir
        checkpoint = load_checkpoint(source / CHECKPOINT)
        adapt = config_for_fork if fork is not None else config_for_resume
        try:
            config = adapt(checkpoint["config"], changes)
        except ConfigError as error:
            raise TrainingError(f"{source}: {error}") from None
    elif changes:
        raise ValueError("changes apply to a resumed run; a new run takes them in its config")
    assert config is not None, "a new run needs a config"
    settings = config.training
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rank, world, device = _distributed(settings.device)
    main = rank == 0
    say = (log or tqdm.write) if main else (lambda _: None)
    precision = resolve_precision(settings.precision, device)
    if settings.precision == "auto":
        # Resolved once, into the run's config: a resume runs as the run began, bit for bit.
        say(f"training.precision = 'auto': {precision} on this {device.type}")
        settings = dataclasses.replace(settings, precision=precision)
        config = dataclasses.replace(config, training=settings)
    elif precision == "bf16" and not bf16_is_native(device):
        say(
            f"warning: training.precision = 'bf16' on a {device.type} without bfloat16 "
            f"arithmetic (AVX-512 BF16 or AMX on a CPU) is emulated, many times slower than "
            f"'fp32' (7.5x measured on an AVX2 CPU); 'auto' picks the faster"
        )
    seed_everything(settings.seed)

    patches = TrainingPatches(config, settings.seed)
    validation = load_validation(config) if main else []
    model = build_model(config).to(device)
    if checkpoint is None and settings.init:
        init_from(model, config)
    if settings.precision == "bf16":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # from a write killed by kill -9
            stale.unlink(missing_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config.to_dict()))
        if fork is not None and (fork / "log.jsonl").is_file():
            # The fork's history is its parent's up to the checkpoint it branched from, so
            # that its curves, its training time and its patches read on from there.
            parent = checkpoint["config"].training.batch_size  # type: ignore[index]
            copy_log(fork / "log.jsonl", run_dir / "log.jsonl", patches_per_step=parent)
        # One line per step: a new run starts a new log, and a resumed one drops what was
        # logged after its checkpoint (a kill -9 between a log line and the next checkpoint).
        trim_log(run_dir, checkpoint["step"] if checkpoint is not None else 0)

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    start, skipped, best, seconds = 0, 0, -math.inf, {"wall": 0.0, "cpu": 0.0}
    run_id = uuid.uuid4().hex
    grows = False  # a fork that adds Steps of Flow or width (config.FORK_GROWS) to its parent's
    if checkpoint is not None:
        grows = fork is not None and _size(config.model) != _size(checkpoint["config"].model)
        if grows:
            parent = build_model(checkpoint["config"])
            try:
                _grow_run(typing.cast("FDN", model), parent, checkpoint, optimizer)
            except ValueError as error:
                raise TrainingError(f"{fork}/{CHECKPOINT}: {error}") from None
        else:
            load_weights(model, checkpoint["model"], run_dir / CHECKPOINT)
            optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start, skipped, best = checkpoint["step"], checkpoint["skipped"], checkpoint["best_psnr"]
        if fork is not None:
            best = -math.inf  # its own best.safetensors, on what may be other validation
            # The saved rate is the parent's schedule's; the fork's own, from its own base rate
            # (optim.lr may change), takes over at once.
            scheduler.base_lrs = [config.optim.lr for _ in scheduler.base_lrs]
            for group in optimizer.param_groups:
                group["initial_lr"] = config.optim.lr
                group["lr"] = config.optim.lr * lr_factor(config, start)
        seconds = dict(checkpoint.get("train_seconds", seconds))  # older checkpoints: from 0
        run_id = checkpoint.get("run_id", run_id)  # older checkpoints: a new one
        set_rng_state(checkpoint["rng"])
    elif isinstance(model, FDN) and not settings.init:
        # ActNorm's data-dependent init, on a real training batch, before the first step. Every
        # rank uses the same combined batch, so all ranks agree (DDP also broadcasts rank 0's).
        model.train()
        with torch.no_grad():
            model.encode(first_samples(patches, settings.batch_size * world).to(device))
    average, extra = None, {}
    if settings.ema:
        # A fixed set of training inputs (no RNG drawn), to recompute the average's batch norm
        # statistics before it is scored or saved (WeightAverage.calibrated).
        calibration: list[Tensor] = []
        if has_batch_norm(model):
            inputs = first_samples(patches, BN_CALIBRATION_SAMPLES).to(device)
            calibration = list(inputs.split(settings.batch_size))
        # The ramp makes an average forget the random weights it starts from; from trained
        # ones (--init) it would forget those as fast, and a restarted run's average would
        # be little more than its newest weights for its first thousand steps.
        average = WeightAverage(model, settings.ema, calibration, ramp=not settings.init)
        # The averages beside it compare horizons, so they take their decay from their first
        # update: the ramp would hold each at the run's own horizon for thousands of updates
        # (a 0.9995 and a 0.9998 beside a 0.999 scored the same to the bit at step 1,750).
        extra = {
            average_key(decay): WeightAverage(model, decay, calibration, ramp=False)
            for decay in settings.ema_extra
        }

    def saved_average(state: dict, checkpoint: dict) -> dict:
        """A checkpoint's average, grown as the model was for a fork that adds capacity."""
        if not grows:
            return state
        shadow = typing.cast("FDN", copy.deepcopy(model))
        shadow.grow_from(state["model"], *_size(checkpoint["config"].model))
        return {"model": shadow.state_dict(), "updates": state["updates"]}

    # A fork that turns the average on starts it from the weights it branches from.
    if average is not None and checkpoint is not None and (fork is None or "ema" in checkpoint):
        average.load_state_dict(saved_average(checkpoint["ema"], checkpoint))
        # As it began: checkpoints from before the ramp was saved ramped, --init or not.
        average.ramp = bool(checkpoint["ema"].get("ramp", True))
    if average is not None and checkpoint is not None:
        saved_extra = checkpoint.get("ema_extra", {})
        for key, beside in extra.items():
            # An average added to a resumed run, or a fork, starts from the run's own.
            beside.load_state_dict(
                saved_average(saved_extra[key], checkpoint)
                if key in saved_extra
                else average.state_dict()
            )

    objective: nn.Module = _Objective(model, config)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective)
    objective = compile_objective(objective, settings.compile)
    loader = DataLoader(
        patches,
        batch_size=settings.batch_size,
        sampler=StepSampler(start, settings.iterations, settings.batch_size, rank, world),
        num_workers=config.data.workers,
        pin_memory=device.type == "cuda",
    )
    model.train()
    if validation and checkpoint is None:
        noisy_psnr = float(np.mean([psnr(n, c).item() for _, n, c in validation]))
        write_log(run_dir, {"step": 0, "val_psnr_noisy": noisy_psnr})
        say(f"validation: {len(validation)} images, noisy input PSNR {noisy_psnr:.2f} dB")
    return _Run(
        config, run_dir, rank, world, device, model, objective, optimizer, scheduler, average,
        iter(loader), validation, say, start, skipped, best, seconds, run_id, extra,
    )  # fmt: skip


def _step(
    run: _Run, step: int, noisy: Tensor, clean: Tensor
) -> tuple[dict[str, Tensor], bool, float]:
    """One optimisation step, whether it was skipped (a non-finite loss or gradient on any
    rank skips it on every rank) and the gradient's norm before clipping."""
    if run.config.training.precision == "bf16":
        noisy = noisy.contiguous(memory_format=torch.channels_last)
        clean = clean.contiguous(memory_format=torch.channels_last)
    if run.config.training.compile == "cudagraphs":
        # A new step: the graphs' outputs of the last one (read by now) may be overwritten.
        torch.compiler.cudagraph_mark_step_begin()
    with precision_context(run.config.training.precision, run.device):
        terms = run.objective(noisy, clean, step)
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    # The norm is read once, for the finiteness check and the log alike (one device sync).
    norm = nn.utils.clip_grad_norm_(run.model.parameters(), run.config.optim.grad_clip).item()
    finite = bool(torch.isfinite(terms["loss"])) and math.isfinite(norm)
    if _any_rank(not finite, run.world, run.device):
        run.skipped += 1
        return terms, True, norm
    run.optimizer.step()
    if not finite_weights(run.model):
        # Raised before anything is written: the last checkpoint stays good.
        raise TrainingError(
            f"step {step + 1}: the weights are not finite any more (learning rate "
            f"{run.optimizer.param_groups[0]['lr']:g}); nothing was saved from this step"
        )
    if run.average is not None:
        run.average.update(run.model)
    for beside in run.extra.values():
        beside.update(run.model)
    return terms, False, norm


def train(
    config: TrainConfig | None,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    changes: typing.Sequence[str] = (),
    fork: str | os.PathLike | None = None,
) -> TrainResult:
    """Trains as ``config`` says into ``run_dir``.

    With ``resume``, continues the run in ``run_dir`` from its checkpoint, with the config
    stored there (``config`` is ignored): the result equals an uninterrupted run. ``changes``
    (``section.key=value``, of :data:`fdn.config.RESUMABLE` keys only) move a resumed run to
    another device or data root, or give it more time; they are saved with the run. SIGINT or
    SIGTERM saves a checkpoint and raises :class:`TrainingStopped`. A run that produces
    garbage (non-finite weights, 100 skipped steps in a row, every step skipped) raises
    :class:`TrainingError` and writes no model file.

    With ``fork`` (another run's folder), starts ``run_dir`` from that run's checkpoint,
    weights, optimiser, average, step and random state, with ``changes`` to any key but the
    network and the optimiser's own settings (:data:`fdn.config.FORK_KEEPS`): unchanged, it
    takes the very steps its parent takes. It keeps the parent's ``run_id``, so that releasing
    it counts its steps since the parent's last release (a GPU lending carrying a run on); a
    pilot's branches may each be released, each counted from their common history
    (``scripts/release_models.py``).
    """
    run = _start(
        config, Path(run_dir), resume, log, changes, Path(fork) if fork is not None else None
    )
    config, settings, world = run.config, run.config.training, run.world
    board = tensorboard(run.run_dir) if run.main else None
    bar = tqdm(
        total=settings.iterations,
        initial=run.start,
        desc="training",
        unit="it",
        disable=not (progress and run.main),
        dynamic_ncols=True,
    )
    window_start, window_images = time.perf_counter(), 0
    # Wall time of the last checkpoint (or of the start), for training.checkpoint_minutes.
    # perf_counter, not the run's clocks: only rank 0 writes, and nothing else reads it.
    saved_at = time.perf_counter()
    # Training time counts across resumes (the checkpoint keeps it), so a time limit is the
    # run's budget however many times it was stopped, and the log can plot PSNR against time.
    clocks = {"wall": time.monotonic, "cpu": time.process_time}
    began = {name: clock() for name, clock in clocks.items()}

    def spent() -> dict[str, float]:
        return {
            name: run.seconds.get(name, 0.0) + clock() - began[name]
            for name, clock in clocks.items()
        }

    def out_of_time() -> bool:
        limit = 60 * settings.time_limit
        return _any_rank(
            bool(limit) and spent()[settings.time_limit_clock] > limit, world, run.device
        )

    done, streak = run.start, 0
    # The gradient norms of the log window (before clipping): its largest says whether a loss
    # spike came from one step's outsized update, and how near it came to optim.grad_clip.
    norms: list[float] = []
    end = settings.iterations
    if run.start < end and out_of_time():  # a resumed run that had used its time
        run.say(
            f"step {done}: the time limit of {settings.time_limit:g} minutes "
            f"({settings.time_limit_clock} time) was already reached"
        )
        end = run.start
    with signals_caught() as caught:
        for step in range(run.start, end):
            noisy, clean = (t.to(run.device) for t in next(run.batches))
            terms, skipped, grad_norm = _step(run, step, noisy, clean)
            if math.isfinite(grad_norm):
                norms.append(grad_norm)
            streak = streak + 1 if skipped else 0
            if streak >= _MAX_SKIPPED_IN_A_ROW:
                raise TrainingError(
                    f"step {step + 1}: {streak} steps in a row were skipped (non-finite "
                    f"loss or gradient); the data or the config is broken"
                )
            lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used
            with warnings.catch_warnings():
                # A skipped step advances the schedule too (the schedule counts steps, not
                # updates); PyTorch warns about that when no update has been made yet.
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                run.scheduler.step()
            window_images += noisy.shape[0] * world
            done = step + 1
            bar.update(1)

            # The time limit ends the run here as if this were its last step.
            last = done == settings.iterations or out_of_time()
            record: dict = {}
            if done % settings.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                record.update({name: value.item() for name, value in terms.items()})
                if "nll" in record:
                    record["nll_bits_per_dim"] = bits_per_dim(record["nll"], _dequantize(config))
                record.update(lr=lr, images_per_s=window_images / elapsed, skipped=run.skipped)
                if norms:
                    record.update(grad_norm=float(np.median(norms)), grad_norm_max=max(norms))
                    norms.clear()
                # A fork may change the batch: the release counts patches from these.
                record["patches_per_step"] = settings.batch_size * world
                # What the steps ran on: a resumed run may move (--set training.device), and
                # its hours are then counted on two clocks (scripts/release_models.py).
                record["device"] = run.device.type
                window_start, window_images = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if run.validation and (done % config.validation.every == 0 or last):
                record["val_psnr"] = validate(run.shipped, run.validation, run.device)
                if record["val_psnr"] > run.best:
                    run.best = record["val_psnr"]
                    _save_model_file(run.shipped, run.run_dir / "best.safetensors")
                beside = ""
                for key, average in run.extra.items():
                    shadow = average.calibrated()
                    score = record[f"{AVERAGE_PREFIX}{key}"] = validate(
                        shadow, run.validation, run.device
                    )
                    _save_model_file(shadow, run.run_dir / f"ema{key}.safetensors")
                    beside += f"; average {key}: {score:.3f}"
                run.say(
                    f"step {done}: validation PSNR {record['val_psnr']:.2f} dB "
                    f"(best {run.best:.2f}{beside})"
                )
            if record and run.main:
                record.update({f"{name}_s": value for name, value in spent().items()})
                write_log(run.run_dir, {"step": done, **record}, board)
            if run.main and settings.keep_every and done % settings.keep_every == 0:
                path = kept_path(run.run_dir, done)
                path.parent.mkdir(exist_ok=True)
                _save_model_file(run.shipped, path)
            minutes = settings.checkpoint_minutes
            due = bool(minutes) and time.perf_counter() - saved_at >= 60 * minutes
            if done % settings.checkpoint_every == 0 or last or due:
                run.save_checkpoint(done, spent())
                saved_at = time.perf_counter()
            if last and done < settings.iterations:
                run.say(
                    f"step {done}: time limit of {settings.time_limit:g} minutes "
                    f"({settings.time_limit_clock} time) reached"
                )
                break
            if _any_rank(bool(caught), world, run.device):
                run.save_checkpoint(done, spent())
                bar.close()
                raise TrainingStopped(done, caught[0] if caught else signal.SIGTERM)
    bar.close()
    if done > 0 and run.skipped >= done:
        raise TrainingError(
            f"every step of the run was skipped ({run.skipped} of {done}: non-finite loss or "
            f"gradient); no model was written"
        )
    final = None
    if run.main:
        final = run.run_dir / "model.safetensors"
        _save_model_file(run.shipped, final)
    if world > 1:
        dist.barrier()
    return TrainResult(run.shipped, final, done)
