r"""Training configs: TOML files read into dataclasses that refuse unknown keys and wrong types.

A config has five sections, each a dataclass below; every key has a default, so a file only
states what differs. ``--set section.key=value`` overrides a key from the command line (the
value is read as TOML, so ``--set optim.milestones=[1000,2000]`` works).
"""

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdn.choices import RECONSTRUCTIONS
from fdn.model import FDNConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "FORK_GROWS",
    "FORK_KEEPS",
    "RESUMABLE",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainingConfig",
    "ValidationConfig",
    "apply_overrides",
    "config_for_fork",
    "config_for_resume",
    "config_from_dict",
    "load_config",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ModelConfig(FDNConfig):
    """What to train: ``kind = "fdn"``, the architecture being the fields this class inherits
    from :class:`fdn.model.FDNConfig` (their one definition, defaults included), or
    ``"dncnn"`` (``in_channels`` and the ``dncnn_`` fields).

    FDNConfig's own checks run when a config is loaded, for ``kind = "fdn"`` only (see
    ``_validate``); :meth:`fdn_config` gives the FDN's config object.
    """

    kind: str = "fdn"
    dncnn_depth: int = 17
    dncnn_features: int = 64

    def __post_init__(self) -> None:
        pass  # FDN's rules apply to FDN configs alone: checked in _validate, naming the key

    def fdn_config(self) -> FDNConfig:
        """The FDN architecture this section describes (raises ValueError if it is invalid)."""
        names = [f.name for f in dataclasses.fields(FDNConfig)]
        return FDNConfig(**{name: getattr(self, name) for name in names})


@dataclass
class DataConfig:
    """Training data: clean images with synthetic AWGN, or noisy/clean pairs.

    ``train`` (and the validation folder) are relative to ``root`` unless absolute. With
    ``kind = "awgn"``, ``sigma`` is a fixed noise level, or ``sigma_range = [lo, hi]`` draws
    one per image (blind training; the paper's is [0, 55]). ``kind = "paired"`` reads the SIDD
    layout or ``noisy/`` + ``clean/`` folders. ``kind = "synthetic"`` is AWGN on images fdn
    draws itself into ``train`` (:func:`fdn.data.make_synthetic_images`), for a first run.
    ``dequantize`` adds one 8-bit bin of uniform noise to the noisy input for the NLL; on by
    default for paired (8-bit) data.

    ``holdout = N`` keeps N images of ``train`` out of training (the same N for every seed:
    :func:`fdn.data.holdout_split`); validation then uses them unless ``validation.folder``
    names another folder. This is how a model or setting is chosen without a test set.
    """

    root: str = "."
    train: str = ""
    kind: str = "awgn"
    sigma: float = 50.0
    sigma_range: list[float] | None = None
    patch_size: int = 64
    augment: str = "none"
    dequantize: bool | None = None
    workers: int = 2
    holdout: int = 0


@dataclass
class OptimConfig:
    """Adam, its learning-rate schedule, and the loss weights (spec 6-7).

    ``schedule = "step"`` (the paper's) multiplies the rate by ``gamma`` at each milestone;
    ``"cosine"`` decays it from ``lr`` to ``min_lr`` over the run; ``"wsd"`` (warm-up,
    stable, decay) holds ``lr`` and decays it along a cosine to ``min_lr`` over the run's last
    ``decay_steps`` steps, so that a run can go on at ``lr`` and branch off a decay to release
    from (``fdn train --fork RUN --set optim.schedule=wsd --set training.iterations=N --set
    optim.decay_steps=D``). Each starts with a linear ``warmup`` of that many steps (0: none).
    ``reconstruction`` is the measure of the loss's second term: ``"l1"`` (the paper's),
    ``"l2"`` or ``"psnr"`` (minus the batch's mean PSNR; fdn.losses.reconstruction_loss).
    """

    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    milestones: list[int] = field(
        default_factory=lambda: [50_000, 100_000, 150_000, 200_000, 250_000]
    )
    gamma: float = 0.5
    grad_clip: float = 10.0
    lambda_nll: float = 0.1
    lambda_rec: float = 1.0
    reconstruction: str = "l1"
    schedule: str = "step"
    warmup: int = 0
    min_lr: float = 0.0
    decay_steps: int = 0


@dataclass
class TrainingConfig:
    """The loop: length, batch, seed, and how often to log and checkpoint.

    A checkpoint is written every ``checkpoint_every`` steps and, besides, once
    ``checkpoint_minutes`` of wall time (0: never) have passed since the last one, so that a
    run killed outright (a machine reclaimed, the OOM killer: signals that cannot be caught,
    unlike SIGINT and SIGTERM, which save one at once) loses at most that much of its
    training, however slow its steps.

    ``init`` starts from a trained model's weights (a bundled name or a ``.safetensors``
    file) with a fresh optimiser; its architecture must equal ``[model]``'s. ``precision =
    "bf16"`` runs the convolutions in bfloat16 (autocast; the flow's own arithmetic and its
    log-dets stay float32) and keeps model and batches channels-last; ``"auto"`` is bf16 where
    the device computes it natively (a CUDA GPU that supports it, a CPU with AVX-512 BF16 or
    AMX) and fp32 elsewhere, where bf16 is emulated and many times slower, resolved when the
    run starts and saved so in its config. ``ema`` is the decay of
    an exponential moving average of the weights (0: off); when on, validation and the model
    files use the average. ``ema_extra`` keeps more averages beside it, one per decay listed:
    each is validated with the run (the log's ``val_psnr_ema<decay>``) and saved as
    ``ema<decay>.safetensors`` at each validation, but the run's model stays ``ema``'s. The
    averages do not change the steps, so one run compares averaging horizons for a validation
    each, where forks would train the same weights again; they may be added to a resumed run,
    starting from its average. They take their decay from their first update, where ``ema``
    ramps up to its own over thousands (:class:`fdn.optim.WeightAverage`) unless the run
    starts from trained weights (``init``): so one may have ``ema``'s decay, to measure what
    the ramp costs. ``threads = 0`` leaves PyTorch's default.
    ``time_limit`` (minutes, 0: none) ends the run early, validated and saved as at its last
    step: equal-time comparisons, and runs that fit a working session. It counts wall time, or with
    ``time_limit_clock = "cpu"`` the CPU time of the training process (its threads, not
    loader workers): equal compute for runs that share a busy machine. The time is the run's,
    across resumes: the checkpoint keeps it, and the log's ``wall_s`` and ``cpu_s`` give it at
    each line (PSNR against training time). ``keep_every = N`` (0: off) keeps the model file
    of every Nth step (the moving average where ``ema`` is on, as validation scores it and a
    release ships it) as ``kept/step-N.safetensors``: a run scored between its validations,
    and a fork compared with its parent at equal patches (``scripts/score_heldback.py``); it
    may be set on a resumed run. ``compile`` runs the training loss (forward and backward)
    through ``torch.compile``: ``"inductor"`` generates fused kernels, ``"cudagraphs"`` adds
    CUDA graphs on a GPU (mode ``reduce-overhead``: the step is replayed with one launch, where
    a small network's step is bound by the host launching its thousands of kernels), and
    ``"check"`` only captures the step (backend ``aot_eager``, no code generated): whether it
    compiles as one graph, in seconds. It compiles once per run, on the first step after a
    start or resume, and may be changed on a resumed run; on a CPU it has been slower.
    """

    iterations: int = 300_000
    batch_size: int = 16
    seed: int = 10
    log_every: int = 100
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 30.0
    device: str = "auto"
    threads: int = 0
    init: str = ""
    precision: str = "fp32"
    ema: float = 0.0
    ema_extra: list[float] = field(default_factory=list)
    time_limit: float = 0.0
    time_limit_clock: str = "wall"
    keep_every: int = 0
    compile: str = "off"


@dataclass
class ValidationConfig:
    """PSNR on a folder of clean images with fixed-seed noise at ``sigma`` (or real pairs).

    ``every = 0`` turns validation off. ``max_images`` and ``crop`` (a centre crop) keep it
    cheap on large sets; 0 means all images and whole images. ``sigmas`` (a list) scores the
    mean PSNR over several noise levels instead of ``sigma`` alone, for blind models. With
    ``folder`` empty and ``data.holdout`` set, the held-back training images are used.
    """

    folder: str = ""
    every: int = 5000
    sigma: float = 50.0
    max_images: int = 0
    crop: int = 0
    seed: int = 0
    sigmas: list[float] | None = None


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolve(self, path: str) -> Path:
        """A data path: relative to ``data.root`` unless absolute."""
        return Path(path) if Path(path).is_absolute() else Path(self.data.root) / path


_SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_CHOICES = {
    ("model", "kind"): ("fdn", "dncnn"),
    ("data", "kind"): ("awgn", "paired", "synthetic"),
    ("data", "augment"): ("none", "flip", "flip_rot"),
    ("training", "device"): ("auto", "cpu", "cuda"),
    ("training", "precision"): ("fp32", "bf16", "auto"),
    ("training", "compile"): ("off", "inductor", "cudagraphs", "check"),
    ("optim", "schedule"): ("step", "cosine", "wsd"),
    ("optim", "reconstruction"): RECONSTRUCTIONS,
    ("training", "time_limit_clock"): ("wall", "cpu"),
}


def _suggest(name: str, options: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``kind``; ints are accepted for floats."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            suggestion = _suggest(key, known, prefix=f"{name}.")
            raise ConfigError(f"unknown key '{name}.{key}'{suggestion}")
    coerced = {key: _coerce(v, hints[key], f"{name}.{key}") for key, v in values.items()}
    for (section, key), choices in _CHOICES.items():
        if section == name and key in coerced and coerced[key] not in choices:
            raise ConfigError(
                f"{name}.{key}: expected one of {', '.join(choices)}, got {coerced[key]!r}"
            )
    return cls(**coerced)


def config_from_dict(values: dict) -> TrainConfig:
    """Builds a config from nested dicts (a parsed TOML file), checking every key and type."""
    for name in values:
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section '[{name}]'{_suggest(name, _SECTIONS)}")
    hints = typing.get_type_hints(TrainConfig)
    config = TrainConfig(
        **{name: _build_section(name, hints[name], v) for name, v in values.items()}
    )
    _validate(config)
    return config


def _validate(config: TrainConfig) -> None:
    d, o, t, v = config.data, config.optim, config.training, config.validation
    positive = [
        ("data.patch_size", d.patch_size),
        ("training.iterations", t.iterations),
        ("training.batch_size", t.batch_size),
        ("training.log_every", t.log_every),
        ("training.checkpoint_every", t.checkpoint_every),
        ("optim.lr", o.lr),
        ("optim.gamma", o.gamma),
        # A negative clip scales every gradient by a negative factor: gradient ascent.
        ("optim.grad_clip", o.grad_clip),
    ]
    for key, value in positive:
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value!r}")
    at_least_zero = [
        ("data.sigma", d.sigma),
        ("data.workers", d.workers),
        ("data.holdout", d.holdout),
        ("optim.warmup", o.warmup),
        ("optim.min_lr", o.min_lr),
        ("optim.decay_steps", o.decay_steps),
        ("optim.weight_decay", o.weight_decay),
        ("optim.lambda_nll", o.lambda_nll),
        ("optim.lambda_rec", o.lambda_rec),
        ("training.seed", t.seed),
        ("training.threads", t.threads),
        ("training.time_limit", t.time_limit),
        ("training.keep_every", t.keep_every),
        ("training.checkpoint_minutes", t.checkpoint_minutes),
        ("validation.every", v.every),
        ("validation.sigma", v.sigma),
        ("validation.max_images", v.max_images),
        ("validation.crop", v.crop),
        ("validation.seed", v.seed),
        *((f"validation.sigmas[{i}]", sigma) for i, sigma in enumerate(v.sigmas or [])),
    ]
    for key, value in at_least_zero:
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    if d.sigma_range is not None and (
        len(d.sigma_range) != 2 or not 0 <= d.sigma_range[0] <= d.sigma_range[1]
    ):
        raise ConfigError(
            f"data.sigma_range: expected [low, high] with 0 <= low <= high, got {d.sigma_range!r}"
        )
    if len(o.betas) != 2 or not all(0 <= beta < 1 for beta in o.betas):
        raise ConfigError(f"optim.betas: expected [beta1, beta2] in [0, 1), got {o.betas!r}")
    if o.schedule == "wsd" and not 0 < o.decay_steps <= t.iterations:
        raise ConfigError(
            f"optim.decay_steps: schedule 'wsd' decays over the run's last decay_steps steps; "
            f"expected 1 to training.iterations ({t.iterations}), got {o.decay_steps}"
        )
    if o.lambda_nll == 0 and o.lambda_rec == 0:
        raise ConfigError("optim.lambda_nll and optim.lambda_rec: at least one must be positive")
    if config.model.kind == "fdn":
        # The architecture is checked where it is defined, FDNConfig, and so is only FDN's
        # size lattice: a DnCNN takes any patch size.
        try:
            architecture = config.model.fdn_config()
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None
        if d.patch_size % architecture.size_multiple:
            raise ConfigError(
                f"data.patch_size: must be a multiple of "
                f"{architecture.size_multiple} for {architecture.num_blocks} blocks"
            )
    if not 0 <= t.ema < 1:
        raise ConfigError(f"training.ema: must be in [0, 1), got {t.ema!r}")
    if t.ema_extra and not t.ema:
        raise ConfigError("training.ema_extra: averages beside the run's own need training.ema")
    for decay in t.ema_extra:
        if not 0 < decay < 1 or t.ema_extra.count(decay) > 1:
            raise ConfigError(
                f"training.ema_extra: each decay must be in (0, 1), and once; got {t.ema_extra!r}"
            )


def _set_nested(values: dict, dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    if not key or "." in key:
        raise ConfigError(f"--set {dotted}: expected section.key=value")
    values.setdefault(section, {})[key] = value


def apply_overrides(values: dict, overrides: typing.Sequence[str]) -> dict:
    """Applies ``section.key=value`` strings to parsed TOML; values are read as TOML,
    falling back to a plain string (so ``data.root=/data`` needs no quotes)."""
    for override in overrides:
        dotted, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"--set {override}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        _set_nested(values, dotted.strip(), value)
    return values


# What a resumed run may change: where its data is and what it runs on, how fast and for how
# long, and what it watches (more moving averages), none of which changes the steps it takes.
# It is how a run moves between machines (a CPU run continued on a GPU, or back; data found
# under another root). Everything else would make the resumed run a different run than the
# one its checkpoint began.
RESUMABLE = (
    "data.root",
    "data.workers",
    "training.device",
    "training.threads",
    "training.time_limit",
    "training.time_limit_clock",
    "training.log_every",
    "training.checkpoint_every",
    "training.checkpoint_minutes",
    # More moving averages only watch the steps (a longer horizon tried on a run as it goes).
    "training.ema_extra",
    # So does keeping model files of the steps between validations.
    "training.keep_every",
    # And compiling the step, which changes its speed (and its rounding), not its arithmetic.
    "training.compile",
)


def config_for_resume(config: TrainConfig, overrides: typing.Sequence[str]) -> TrainConfig:
    """``config`` (a checkpoint's) with ``section.key=value`` overrides of :data:`RESUMABLE`
    keys applied; any other key is a :class:`ConfigError` naming it."""
    for override in overrides:
        dotted = override.partition("=")[0].strip()
        if dotted not in RESUMABLE:
            raise ConfigError(
                f"--set {dotted}: a resumed run keeps its config; only where and how fast it "
                f"runs, and what it watches, may change ({', '.join(RESUMABLE)})"
            )
    return config_from_dict(apply_overrides(config.to_dict(), overrides))


# What a fork keeps from the run it branches from: the network, whose weights it continues,
# and the optimiser's settings, which its saved state holds (the betas its moments were
# averaged with, the warm-up the run is past). Everything else (the data, the patch and batch
# size, the loss weights, validation, the schedule's shape, length and peak rate: a decay
# branched off a run, `schedule = "wsd"`, or a higher `optim.lr`, which the fork's scheduler
# takes as its base rate) is the fork's choice: a fork is how
# two variants are compared from one trained state, optimiser and average included, rather
# than from a release with a fresh optimiser.
FORK_KEEPS = (
    "model",
    "optim.betas",
    "optim.weight_decay",
    "optim.warmup",
    "training.init",
)
# What a fork may change of the network all the same: its depth and its width, upwards. The
# added Steps of Flow start as the identity and the Dense Blocks' added channels feed nothing
# (fdn.model.FDN.grow_from), so the fork computes what its parent did and goes on training
# with more capacity, its parent's hours kept.
FORK_GROWS = {"model.steps_per_block": "Steps of Flow", "model.hidden_channels": "width"}


def config_for_fork(config: TrainConfig, overrides: typing.Sequence[str]) -> TrainConfig:
    """``config`` (the parent's checkpoint's) with ``section.key=value`` overrides applied;
    a key of :data:`FORK_KEEPS` is a :class:`ConfigError` naming it."""
    for override in overrides:
        dotted = override.partition("=")[0].strip()
        if dotted in FORK_GROWS:
            continue
        if any(dotted == key or dotted.startswith(key + ".") for key in FORK_KEEPS):
            raise ConfigError(
                f"--set {dotted}: a fork keeps its parent's network and optimiser "
                f"({', '.join(FORK_KEEPS)}) but may add depth or width "
                f"({', '.join(FORK_GROWS)}); start a new run with --init for the rest"
            )
    forked = config_from_dict(apply_overrides(config.to_dict(), overrides))
    for dotted, what in FORK_GROWS.items():
        key = dotted.removeprefix("model.")
        parent, value = getattr(config.model, key), getattr(forked.model, key)
        if value != parent and not (value > parent and config.model.kind == "fdn"):
            raise ConfigError(
                f"--set model.{key}={value}: a fork may add {what} to an FDN "
                f"(its parent has {parent}), not take it away"
            )
    return forked


def load_config(
    path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()
) -> TrainConfig:
    """Reads a TOML config (or the defaults, with ``path=None``) and applies overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read ({error})") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ConfigError as error:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{error}") from None
