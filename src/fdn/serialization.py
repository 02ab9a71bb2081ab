r"""Model files: one safetensors file holding the weights, with the config in its metadata."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fdn._version import __version__
from fdn.atomic import atomic_write
from fdn.model import FDN, FDNConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "check_shapes",
    "check_tensors",
    "check_values",
    "load_model",
    "save_model",
]

FORMAT = "fdn.model"
FORMAT_VERSION = "1"

# Leading bytes of the checkpoint formats that people will hand us by mistake: a pickle
# (torch.save before 1.6), a zip archive (torch.save since 1.6).
_PICKLE_MAGIC = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"


class ModelFileError(ValueError):
    """A model file that cannot be read; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


def save_model(model: FDN, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Writes ``model`` to ``path`` as safetensors, with its config, atomically.

    The file is written next to its destination and renamed over it, so an interrupted save
    never leaves a partial file. With ``dtype`` (e.g. ``torch.float16``), floating-point
    tensors are stored in that type, halving the file; :func:`load_model` casts them back to
    the model's float32. Returns the path.
    """
    path = Path(path)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "fdn_version": __version__,
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read_config(path: Path, metadata: dict[str, str] | None) -> FDNConfig:
    if not metadata or metadata.get("format") != FORMAT:
        raise ModelFileError(path, "not an fdn model file (no fdn metadata in the header)")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            path,
            f"model file format {version!r} is not supported (this fdn reads {FORMAT_VERSION})",
        )
    try:
        fields = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ModelFileError(path, f"missing or malformed config in metadata ({error})") from None
    if not isinstance(fields, dict):
        raise ModelFileError(path, "config in metadata is not a JSON object")
    known = {field.name for field in dataclasses.fields(FDNConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ModelFileError(path, f"config has unknown keys: {', '.join(unknown)}")
    for key, value in fields.items():
        # An untrusted file must not make us build a network of any size: bound what can be.
        low, high = _BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelFileError(path, f"invalid config: {key} is {value!r}, not a number")
        if not (math.isfinite(value) and low <= value <= high):
            raise ModelFileError(
                path, f"invalid config: {key} = {value!r} is outside [{low:g}, {high:g}]"
            )
    try:
        return FDNConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ModelFileError(path, f"invalid config: {error}") from None


# The range of each config value a model file may hold; far beyond any trained FDN, yet small
# enough that building the network it describes stays cheap.
_BOUNDS = {
    "in_channels": (1, 4),
    "num_blocks": (1, 5),
    "steps_per_block": (1, 64),
    "hidden_channels": (1, 1024),
    "clean_fraction": (0, 1),
    "clamp": (0, 10),
}
# How many more weights than the file holds a config may describe before it is refused
# unbuilt (twice the file, plus this); within it, mismatches are named tensor by tensor.
_SLACK = 1_000_000
# ActNorm scales beyond e^20 (5e8) make float32 overflow within a few layers.
_MAX_LOG_SCALE = 20.0
# A 1x1 weight this ill-conditioned has no usable float32 inverse.
_MAX_CONDITION = 1e6


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> FDN:
    """Rebuilds an FDN from a file written by :func:`save_model`, in eval mode.

    ``path`` may also name a bundled model (``"fdn-color-blind"``, ``"fdn-grey-blind"``),
    whose checksum is checked first.

    Never unpickles anything. Raises :class:`ModelFileError` on a missing or unreadable
    file, a pickle or zip checkpoint, a truncated or corrupt file, an unknown config, or
    tensors that do not match the architecture (missing, extra or mis-shaped).
    """
    path = Path(path)
    if not path.exists() and path.suffix == "":
        from fdn.pretrained import available_models, load_pretrained

        if str(path) in available_models():  # a bundled model's name
            return load_pretrained(str(path), device)
    if not path.is_file():
        raise ModelFileError(path, "no such file" if not path.exists() else "not a file")
    try:
        with path.open("rb") as stream:
            head = stream.read(9)
    except OSError as error:
        raise ModelFileError(path, f"cannot read ({error.strerror})") from None
    if not head:
        raise ModelFileError(path, "empty file")
    # A safetensors file is an 8-byte header length, then a JSON header that opens with "{";
    # its first byte can be anything (0x80 included), so sniff for checkpoints only without it.
    looks_like_checkpoint = head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)
    if looks_like_checkpoint and head[8:9] != b"{":
        raise ModelFileError(
            path,
            "looks like a torch.save checkpoint (pickle/zip); fdn only loads safetensors "
            "model files and never unpickles",
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as archive:
            config = _read_config(path, archive.metadata())
            # Before a network is built from the config, its size is checked against the
            # weights the header declares: a config cannot make us allocate much more than
            # the file holds. Near misses are built and named tensor by tensor below.
            weights = sum(
                math.prod(archive.get_slice(name).get_shape())
                for name in archive.keys()  # noqa: SIM118
                if archive.get_slice(name).get_dtype().startswith(("F", "BF"))
            )
            if config.num_parameters > 2 * weights + _SLACK:
                raise ModelFileError(
                    path,
                    f"holds {weights:,} weights where its config makes {config.num_parameters:,}",
                )
            tensors = {name: archive.get_tensor(name) for name in archive.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ModelFileError(path, f"truncated or corrupt safetensors file ({error})") from None

    model = FDN.from_config(config)
    check_tensors(model, tensors, path, what=" for its config")
    check_values(tensors, path)
    model.load_state_dict(tensors)
    return model.to(device).eval()


def check_values(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raises :class:`ModelFileError` on weights no trained FDN has: non-finite values,
    ActNorm log-scales that overflow, or a 1x1 convolution without a usable inverse."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(path, f"tensor {name} holds NaN or infinite values")
        if name.endswith("log_scale") and tensor.abs().max() > _MAX_LOG_SCALE:
            raise ModelFileError(
                path, f"tensor {name} has a log-scale beyond +-{_MAX_LOG_SCALE:g} (overflows)"
            )
        if tensor.dim() == 2 and tensor.shape[0] == tensor.shape[1]:  # an invertible 1x1 conv
            condition = torch.linalg.cond(tensor.double()).item()
            if not condition < _MAX_CONDITION:
                raise ModelFileError(
                    path, f"tensor {name} is a singular 1x1 weight (condition {condition:.3g})"
                )


def check_shapes(
    model: torch.nn.Module,
    shapes: dict[str, list[int] | tuple[int, ...]],
    path: str | os.PathLike,
    optional: frozenset[str] = frozenset(),
    what: str = "",
) -> None:
    """Raises :class:`ModelFileError` unless ``shapes`` has exactly ``model``'s state-dict
    names (``optional`` ones may be absent), each with its shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes) - optional)
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {_preview(missing)}")
        if extra:
            parts.append(f"unexpected tensors {_preview(extra)}")
        raise ModelFileError(path, "; ".join(parts) + what)
    for name, shape in shapes.items():
        if tuple(shape) != tuple(expected[name].shape):
            raise ModelFileError(
                path,
                f"tensor {name} has shape {tuple(shape)}, expected {tuple(expected[name].shape)}",
            )


def check_tensors(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    optional: frozenset[str] = frozenset(),
    what: str = "",
) -> None:
    """Raises :class:`ModelFileError` unless ``tensors`` has exactly ``model``'s state-dict
    names (``optional`` ones may be absent), with the same shapes and kinds of dtype."""
    check_shapes(model, {n: t.shape for n, t in tensors.items()}, path, optional, what)
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.dtype.is_floating_point != expected[name].dtype.is_floating_point:
            raise ModelFileError(path, f"tensor {name} has dtype {tensor.dtype}")


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
