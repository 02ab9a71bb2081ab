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

import contextlib
import copy
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fdn.baselines.dncnn import DnCNN, save_dncnn
from fdn.config import ConfigError, TrainConfig, config_from_dict
from fdn.data import StepSampler, TrainingPatches, load_validation
from fdn.losses import bits_per_dim, fdn_loss
from fdn.metrics import psnr
from fdn.model import FDN
from fdn.runstate import (
    atomic_torch_save,
    rng_state,
    seed_everything,
    set_rng_state,
    signals_caught,
    tensorboard,
    to_toml,
    trim_log,
    write_log,
)
from fdn.serialization import save_model

__all__ = [
    "CHECKPOINT",
    "TrainResult",
    "TrainingError",
    "TrainingStopped",
    "build_model",
    "init_from",
    "lr_factor",
    "train",
    "validate",
]

CHECKPOINT = "checkpoint.pt"
_MAX_SKIPPED_IN_A_ROW = 100


class TrainingError(RuntimeError):
    """A run that cannot go on or produced garbage (non-finite weights, every step skipped)."""


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
    return FDN(
        m.in_channels,
        m.num_blocks,
        m.steps_per_block,
        m.hidden_channels,
        m.clean_fraction,
        m.clamp,
    )


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
    if source.config != model.config:
        ours, theirs = model.config.to_dict(), source.config.to_dict()
        differ = ", ".join(
            f"{k} {theirs[k]} (config: {ours[k]})" for k in ours if ours[k] != theirs[k]
        )
        raise ConfigError(f"training.init {spec} has another architecture than [model]: {differ}")
    model.load_state_dict(source.state_dict())


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (0-based) as a fraction of ``optim.lr``."""
    o = config.optim
    warmup = min(1.0, (step + 1) / o.warmup) if o.warmup else 1.0
    if o.schedule == "step":
        return warmup * o.gamma ** sum(step >= m for m in o.milestones)
    span = max(1, config.training.iterations - 1 - o.warmup)  # the last step is at min_lr
    progress = min(1.0, max(0, step - o.warmup) / span)
    floor = o.min_lr / o.lr
    return warmup * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class _Average:
    """An exponential moving average of a model's weights, as a second model to evaluate.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so an
    average started from random weights forgets them quickly. Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ours = list(self.model.parameters())
        torch._foreach_lerp_(ours, [p.detach() for p in model.parameters()], 1 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if config.training.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _dequantize(config: TrainConfig) -> bool:
    flag = config.data.dequantize
    return config.data.kind == "paired" if flag is None else flag


def _step_loss(
    model: nn.Module, config: TrainConfig, noisy: Tensor, clean: Tensor, step: int
) -> dict[str, Tensor]:
    if isinstance(model, DnCNN):
        loss = (noisy - model(noisy) - clean).pow(2).mean()
        return {"loss": loss, "mse": loss}
    generator = torch.Generator(device=noisy.device).manual_seed(
        config.training.seed * 7919 + step
    )
    o = config.optim
    terms = fdn_loss(
        model, noisy, clean, o.lambda_nll, o.lambda_rec, _dequantize(config), generator
    )
    return {"loss": terms.total, "nll": terms.nll, "l1": terms.reconstruction}


class _Objective(nn.Module):
    """The training loss as one module call, so that DDP sees a forward pass per step."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, noisy: Tensor, clean: Tensor, step: int) -> dict[str, Tensor]:
        return _step_loss(self.model, self.config, noisy, clean, step)


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


def _load_weights(model: nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)``, with a one-line error naming the first mismatch."""
    ours = model.state_dict()
    if set(ours) != set(state):
        odd = sorted(set(ours) ^ set(state))
        raise TrainingError(
            f"{path}: does not match its config ({len(odd)} tensor names differ, e.g. {odd[0]})"
        )
    for name, tensor in ours.items():
        if tensor.shape != state[name].shape:
            raise TrainingError(
                f"{path}: does not match its config ({name} is {tuple(state[name].shape)}, "
                f"the config makes it {tuple(tensor.shape)})"
            )
    model.load_state_dict(state)


def _finite(model: nn.Module) -> bool:
    norms = torch._foreach_norm([p.detach() for p in model.parameters()])
    return bool(torch.isfinite(torch.stack(norms)).all())


@torch.no_grad()
def validate(
    model: nn.Module, images: list[tuple[str, Tensor, Tensor]], device: torch.device
) -> float:
    """Mean PSNR (spec 7.3 convention) of the model's denoised validation images.

    It denoises with a copy, so the model is left exactly as it was: eval mode would put its
    weights in channels-last (the fast path), and a run that went on training them so would
    round differently from one resumed from its checkpoint.
    """
    model = copy.deepcopy(model).eval()
    scores = [
        psnr(model.denoise(noisy.to(device)).cpu(), clean).item() for _, noisy, clean in images
    ]
    return float(np.mean(scores))


def _save_model_file(model: nn.Module, path: Path) -> None:
    (save_dncnn if isinstance(model, DnCNN) else save_model)(model, path)


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if world == 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
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


def train(
    config: TrainConfig | None,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains as ``config`` says into ``run_dir``.

    With ``resume``, continues the run in ``run_dir`` from its checkpoint, with the config
    stored there (``config`` is ignored): the result equals an uninterrupted run. SIGINT or
    SIGTERM saves a checkpoint and raises :class:`TrainingStopped`.
    """
    run_dir = Path(run_dir)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT)
        config = checkpoint["config"]
    settings = config.training
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rank, world, device = _distributed(settings.device)
    main = rank == 0
    say = (log or tqdm.write) if main else (lambda _: None)
    seed_everything(settings.seed)

    # Data first: a bad dataset fails here, before any step.
    patches = TrainingPatches(config, settings.seed)
    validation = load_validation(config) if main else []
    model = build_model(config).to(device)
    if checkpoint is None and settings.init:
        init_from(model, config)  # a bad file fails here too, before the run folder exists
    fast = settings.precision == "bf16"
    if fast:
        model.to(memory_format=torch.channels_last)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # from a write killed by kill -9
            stale.unlink(missing_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config.to_dict()))
        # One line per step: a new run starts a new log, and a resumed one drops what was
        # logged after its checkpoint (a kill -9 between a log line and the next checkpoint).
        trim_log(run_dir, checkpoint["step"] if checkpoint is not None else 0)

    optimizer = torch.optim.Adam(
        model.parameters(),
        config.optim.lr,
        tuple(config.optim.betas),
        weight_decay=config.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    start, skipped, best = 0, 0, -math.inf
    if checkpoint is not None:
        _load_weights(model, checkpoint["model"], run_dir / CHECKPOINT)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start, skipped, best = checkpoint["step"], checkpoint["skipped"], checkpoint["best_psnr"]
        set_rng_state(checkpoint["rng"])
    elif isinstance(model, FDN) and not settings.init:
        # ActNorm's data-dependent init, on a real training batch, before the first step. Every
        # rank uses the same combined batch, so all ranks agree (DDP also broadcasts rank 0's).
        model.train()
        with torch.no_grad():
            model.encode(first_samples(patches, settings.batch_size * world).to(device))

    average = _Average(model, settings.ema) if settings.ema else None
    if average is not None and checkpoint is not None:
        average.load_state_dict(checkpoint["ema"])
    # What validation scores and the model files hold: the average when there is one.
    shipped = average.model if average is not None else model
    objective: nn.Module = _Objective(model, config)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective)
    batch = settings.batch_size
    loader = DataLoader(
        patches,
        batch_size=batch,
        sampler=StepSampler(start, settings.iterations, batch, rank, world),
        num_workers=config.data.workers,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)

    def save_checkpoint(step: int) -> None:
        if main:
            state = {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "skipped": skipped,
                "best_psnr": best,
                "rng": rng_state(),
            }
            if average is not None:
                state["ema"] = average.state_dict()
            atomic_torch_save(state, run_dir / CHECKPOINT)

    model.train()
    if validation and checkpoint is None:
        noisy_psnr = float(np.mean([psnr(n, c).item() for _, n, c in validation]))
        write_log(run_dir, {"step": 0, "val_psnr_noisy": noisy_psnr})
        say(f"validation: {len(validation)} images, noisy input PSNR {noisy_psnr:.2f} dB")
    board = tensorboard(run_dir) if main else None
    bar = tqdm(
        total=settings.iterations,
        initial=start,
        desc="training",
        unit="it",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    window_start, window_images = time.perf_counter(), 0
    deadline = time.monotonic() + 60 * settings.time_limit
    done, streak = start, 0
    with signals_caught() as caught:
        for step in range(start, settings.iterations):
            noisy, clean = (t.to(device) for t in next(batches))
            if fast:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
                clean = clean.contiguous(memory_format=torch.channels_last)
            with _autocast(config, device):
                terms = objective(noisy, clean, step)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            # A non-finite loss or gradient on any rank skips the step on every rank.
            if _any_rank(
                not (torch.isfinite(terms["loss"]) and torch.isfinite(grad_norm)), world, device
            ):
                skipped += 1
                streak += 1
                if streak >= _MAX_SKIPPED_IN_A_ROW:
                    raise TrainingError(
                        f"step {step + 1}: {streak} steps in a row were skipped (non-finite "
                        f"loss or gradient); the data or the config is broken"
                    )
            else:
                optimizer.step()
                streak = 0
                if not _finite(model):
                    # Raised before anything is written: the last checkpoint stays good.
                    raise TrainingError(
                        f"step {step + 1}: the weights are not finite any more (learning rate "
                        f"{optimizer.param_groups[0]['lr']:g}); nothing was saved from this step"
                    )
                if average is not None:
                    average.update(model)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step()
            window_images += noisy.shape[0] * world
            done = step + 1
            bar.update(1)

            # The time limit ends the run here as if this were its last step.
            last = done == settings.iterations or _any_rank(
                bool(settings.time_limit) and time.monotonic() > deadline, world, device
            )
            record: dict = {}
            if done % settings.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                record.update({name: value.item() for name, value in terms.items()})
                if "nll" in record:
                    record["nll_bits_per_dim"] = bits_per_dim(record["nll"], _dequantize(config))
                record.update(lr=lr, images_per_s=window_images / elapsed, skipped=skipped)
                window_start, window_images = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if validation and (done % config.validation.every == 0 or last):
                record["val_psnr"] = validate(shipped, validation, device)
                if record["val_psnr"] > best:
                    best = record["val_psnr"]
                    _save_model_file(shipped, run_dir / "best.safetensors")
                say(f"step {done}: validation PSNR {record['val_psnr']:.2f} dB (best {best:.2f})")
            if record and main:
                write_log(run_dir, {"step": done, **record}, board)
            if done % settings.checkpoint_every == 0 or last:
                save_checkpoint(done)
            if last and done < settings.iterations:
                say(f"step {done}: time limit of {settings.time_limit:g} minutes reached")
                break
            if _any_rank(bool(caught), world, device):
                save_checkpoint(done)
                bar.close()
                raise TrainingStopped(done, caught[0] if caught else signal.SIGTERM)
    bar.close()
    if done > 0 and skipped >= done:
        raise TrainingError(
            f"every step of the run was skipped ({skipped} of {done}: non-finite loss or "
            f"gradient); no model was written"
        )
    final = None
    if main:
        final = run_dir / "model.safetensors"
        _save_model_file(shipped, final)
    if world > 1:
        dist.barrier()
    return TrainResult(shipped, final, done)
