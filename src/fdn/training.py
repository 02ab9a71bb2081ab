r"""``train(config, run_dir)``: the paper's protocol in one readable loop, exactly resumable.

Run folder layout::

    config.toml          the resolved config (also inside every checkpoint)
    log.jsonl            one JSON object per logging or validation step
    checkpoint.pt        the last checkpoint: model, optimiser, scheduler, step, RNG states
    best.safetensors     the model with the best validation PSNR so far
    model.safetensors    the final model, for fdn.load_model / fdn denoise

Checkpoints hold only tensors and plain Python values and are read back with
``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fdn.baselines.dncnn import DnCNN, save_dncnn
from fdn.config import TrainConfig, config_from_dict
from fdn.data import StepSampler, TrainingPatches, load_validation
from fdn.losses import bits_per_dim, fdn_loss
from fdn.metrics import psnr
from fdn.model import FDN
from fdn.serialization import save_model

__all__ = ["CHECKPOINT", "TrainingStopped", "build_model", "train"]

CHECKPOINT = "checkpoint.pt"


class TrainingStopped(Exception):
    """Raised by :func:`train` after SIGINT/SIGTERM, once the checkpoint is safely written."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.step, self.signum = step, signum


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


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _atomic_torch_save(payload: dict, path: Path) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(
            np.frombuffer(json.dumps(_numpy_state()).encode(), dtype=np.uint8).copy()
        ),
        "python": torch.tensor(
            np.frombuffer(json.dumps(random.getstate()[1]).encode(), dtype=np.uint8).copy()
        ),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = json.loads(bytes(state["numpy"].tolist()))
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate((3, tuple(json.loads(bytes(state["python"].tolist()))), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _signals_caught() -> Iterator[list[int]]:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""
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


def _step_loss(
    model: nn.Module, config: TrainConfig, noisy: Tensor, clean: Tensor, step: int
) -> dict[str, Tensor]:
    if isinstance(model, DnCNN):
        denoised = noisy - model(noisy)
        loss = (denoised - clean).pow(2).mean()
        return {"loss": loss, "mse": loss}
    generator = torch.Generator(device=noisy.device).manual_seed(
        config.training.seed * 7919 + step
    )
    terms = fdn_loss(
        model,
        noisy,
        clean,
        config.optim.lambda_nll,
        config.optim.lambda_rec,
        dequantize_input=_dequantize(config),
        generator=generator,
    )
    return {"loss": terms.total, "nll": terms.nll, "l1": terms.reconstruction}


def _dequantize(config: TrainConfig) -> bool:
    flag = config.data.dequantize
    return config.data.kind == "paired" if flag is None else flag


@torch.no_grad()
def validate(
    model: nn.Module, images: list[tuple[str, Tensor, Tensor]], device: torch.device
) -> float:
    """Mean PSNR (spec 7.3 convention) of the model's denoised validation images."""
    was_training = model.training
    model.eval()
    scores = []
    for _, noisy, clean in images:
        denoised = model.denoise(noisy.to(device)).cpu()
        scores.append(psnr(denoised, clean).item())
    model.train(was_training)
    return float(np.mean(scores))


def _save_model_file(model: nn.Module, path: Path) -> None:
    if isinstance(model, DnCNN):
        save_dncnn(model, path)
    else:
        save_model(model, path)


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Trains as ``config`` says into ``run_dir``; returns the final model file.

    With ``resume``, continues the run in ``run_dir`` from its checkpoint, with the config
    stored there: the result equals an uninterrupted run. SIGINT or SIGTERM saves a
    checkpoint and raises :class:`TrainingStopped`.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    if resume:
        path = run_dir / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        config = config_from_dict(checkpoint["config"])
    settings = config.training
    say = log or (lambda line: tqdm.write(line))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    _seed_everything(settings.seed)

    # Data first: a bad dataset fails here, before any step.
    patches = TrainingPatches(config, settings.seed)
    validation = load_validation(config)
    (run_dir / "config.toml").write_text(_to_toml(config.to_dict()))

    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=config.optim.lr,
        betas=tuple(config.optim.betas),
        weight_decay=config.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, config.optim.milestones, config.optim.gamma
    )
    start, skipped, best = 0, 0, -math.inf
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start, skipped, best = checkpoint["step"], checkpoint["skipped"], checkpoint["best_psnr"]
        _set_rng_state(checkpoint["rng"])

    loader = DataLoader(
        patches,
        batch_size=settings.batch_size,
        sampler=StepSampler(start, settings.iterations, settings.batch_size),
        num_workers=config.data.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    batches = iter(loader)

    def save_checkpoint(step: int) -> None:
        _atomic_torch_save(
            {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "skipped": skipped,
                "best_psnr": best,
                "rng": _rng_state(),
            },
            run_dir / CHECKPOINT,
        )

    model.train()
    if checkpoint is None and isinstance(model, FDN):
        # ActNorm's data-dependent init, on a real training batch, before the first step.
        noisy, _ = patches_batch(patches, settings.batch_size)
        with torch.no_grad():
            model.encode(noisy.to(device))
    if validation and checkpoint is None:
        noisy_psnr = float(np.mean([psnr(n, c).item() for _, n, c in validation]))
        _write_log(run_dir, {"step": 0, "val_psnr_noisy": noisy_psnr})
        say(f"validation: {len(validation)} images, noisy input PSNR {noisy_psnr:.2f} dB")

    board = _tensorboard(run_dir)
    bar = tqdm(
        total=settings.iterations,
        initial=start,
        desc="training",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    window_start, window_images = time.perf_counter(), 0
    step = start
    with _signals_caught() as caught:
        for step in range(start, settings.iterations):
            noisy, clean = next(batches)
            noisy, clean = noisy.to(device), clean.to(device)
            terms = _step_loss(model, config, noisy, clean, step)
            optimizer.zero_grad(set_to_none=True)
            if torch.isfinite(terms["loss"]):
                terms["loss"].backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                if torch.isfinite(grad_norm):
                    optimizer.step()
                else:
                    skipped += 1
            else:
                skipped += 1
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step()
            window_images += noisy.shape[0]
            done = step + 1
            bar.update(1)

            record: dict = {}
            if done % settings.log_every == 0 or done == settings.iterations:
                elapsed = time.perf_counter() - window_start
                record.update({name: value.item() for name, value in terms.items()})
                if "nll" in record:
                    record["nll_bits_per_dim"] = bits_per_dim(record["nll"], _dequantize(config))
                record.update(
                    lr=lr,
                    images_per_s=window_images / elapsed,
                    skipped=skipped,
                )
                window_start, window_images = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if validation and (done % config.validation.every == 0 or done == settings.iterations):
                record["val_psnr"] = validate(model, validation, device)
                if record["val_psnr"] > best:
                    best = record["val_psnr"]
                    _save_model_file(model, run_dir / "best.safetensors")
                say(f"step {done}: validation PSNR {record['val_psnr']:.2f} dB (best {best:.2f})")
            if record:
                _write_log(run_dir, {"step": done, **record}, board)
            if done % settings.checkpoint_every == 0 or done == settings.iterations:
                save_checkpoint(done)
            if caught:
                save_checkpoint(done)
                bar.close()
                raise TrainingStopped(done, caught[0])
    bar.close()
    final = run_dir / "model.safetensors"
    _save_model_file(model, final)
    return final


def patches_batch(patches: TrainingPatches, size: int) -> tuple[Tensor, Tensor]:
    """The first ``size`` training samples, stacked (the batch ActNorm initialises on)."""
    samples = [patches[i] for i in range(size)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _write_log(run_dir: Path, record: dict, board: object | None = None) -> None:
    with (run_dir / "log.jsonl").open("a") as stream:
        stream.write(json.dumps(record) + "\n")
    if board is not None:
        for name, value in record.items():
            if name != "step":
                board.add_scalar(name, value, record["step"])


def _tensorboard(run_dir: Path) -> object | None:
    """A TensorBoard writer when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _to_toml(values: dict) -> str:
    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
