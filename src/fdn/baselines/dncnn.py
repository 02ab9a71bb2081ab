r"""DnCNN: a plain residual CNN that predicts the noise; loaders for its reference weights.

References:
    | Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image Denoising
    | (Zhang et al., IEEE TIP 2017), https://arxiv.org/abs/1608.03981

Three kinds of file load into :class:`DnCNN`, each with ``weights_only`` loading or
safetensors, never plain unpickling:

* SaoYan's DnCNN-PyTorch (``DnCNN-S-{15,25,50}.net.pth``, ``DnCNN-B.net.pth``): a DataParallel
  state_dict with keys ``module.dncnn.N.*``, convolutions without bias, BatchNorm;
* KAIR's ``dncnn_25.pth``: keys ``model.N.weight/bias``, BatchNorm merged into the biases;
* our own model files (:func:`save_dncnn`): safetensors with the config in the metadata.

Our layer list mirrors theirs (``conv, relu, [conv, (bn,) relu] * (depth - 2), conv``), so
mapping their keys is a prefix rename and a file with any other layout is rejected.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fdn.atomic import atomic_write
from fdn.runtime import channels_last
from fdn.serialization import ModelFileError, check_tensors

if TYPE_CHECKING:
    from fdn.model import FDN

__all__ = [
    "DnCNN",
    "DnCNNConfig",
    "DnCNNDenoiser",
    "ModuleDenoiser",
    "conv_weights",
    "load_dncnn",
    "load_exact",
    "load_peer_dncnn",
    "read_state_dict",
    "save_dncnn",
]

FORMAT = "fdn.dncnn"
FORMAT_VERSION = "1"

# Key prefixes of the reference files, and whether that layout has BatchNorm layers.
_PEER_LAYOUTS = {"module.dncnn.": True, "model.": False}


@dataclass(frozen=True)
class DnCNNConfig:
    r"""Everything that fixes a DnCNN's architecture.

    Arguments:
        in_channels: image channels (1 grey, 3 colour).
        depth: convolution layers, 17 for DnCNN-S and 20 for DnCNN-B.
        features: channels of the hidden layers.
        batch_norm: BatchNorm after every hidden convolution (then no convolution has a bias,
            as in the reference weights); without it every convolution has a bias.
        out_channels: output channels; ``None`` (the default) is stored as ``in_channels``.
    """

    in_channels: int = 1
    depth: int = 17
    features: int = 64
    batch_norm: bool = True
    out_channels: int | None = None

    def __post_init__(self) -> None:
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        for name in ("in_channels", "depth", "features", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2, got {self.depth}")
        if not isinstance(self.batch_norm, bool):
            raise ValueError(f"batch_norm must be a bool, got {self.batch_norm!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class DnCNN(nn.Module):
    r"""DnCNN: ``depth`` 3x3 convolutions with ReLUs; ``forward`` returns the noise estimate.

    The denoised image is ``noisy - model(noisy)`` (residual learning); :meth:`denoise`
    computes it and clamps it to [0, 1].

    Arguments:
        in_channels: image channels.
        depth: convolution layers (17 for DnCNN-S, 20 for DnCNN-B).
        features: channels of the hidden layers.
        batch_norm: BatchNorm after each hidden convolution (and no convolution biases).
        out_channels: output channels, ``in_channels`` by default (FFDNet uses other values).

    Example:
        >>> model = DnCNN(in_channels=1, depth=3, features=8).eval()
        >>> model(torch.rand(2, 1, 9, 7)).shape
        torch.Size([2, 1, 9, 7])
    """

    def __init__(
        self,
        in_channels: int = 1,
        depth: int = 17,
        features: int = 64,
        batch_norm: bool = True,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.config = DnCNNConfig(in_channels, depth, features, batch_norm, out_channels)
        out_channels = self.config.out_channels
        assert out_channels is not None  # DnCNNConfig fills it in
        bias = not batch_norm
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, features, 3, padding=1, bias=bias),
            nn.ReLU(),
        ]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(features, features, 3, padding=1, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm2d(features))
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(features, out_channels, 3, padding=1, bias=bias))
        self.layers = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: DnCNNConfig) -> DnCNN:
        return cls(**config.to_dict())

    def forward(self, noisy: Tensor) -> Tensor:
        return self.layers(noisy)

    def denoise(self, noisy: Tensor) -> Tensor:
        """``noisy`` minus the predicted noise, clamped to [0, 1] (channels-last in eval mode)."""
        noisy = channels_last(self, noisy)
        return (noisy - self(noisy)).clamp(0, 1)


class ModuleDenoiser:
    r"""A blind network with a ``denoise(noisy)`` method and a ``config.in_channels``, as a
    :class:`fdn.denoisers.Denoiser` (shared by DnCNN and FDN).

    Arguments:
        model: the network; it is put in eval mode.
        name: the method's name in tables.
    """

    blind = True

    def __init__(self, model: DnCNN | FDN, name: str) -> None:
        self.model = model.eval()
        self.name = name
        self.channels = model.config.in_channels

    def supports(self, channels: int, sigma: float | None) -> str | None:
        if channels != self.channels:
            return f"takes {self.channels}-channel images, not {channels}-channel ones"
        return None

    def denoise(self, noisy: Tensor, sigma: float | None = None) -> Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self._run(noisy.to(device)).cpu()

    def _run(self, noisy: Tensor) -> Tensor:
        """The network's own denoise of a batch on its device (FDN adds its strength)."""
        return self.model.denoise(noisy)


class DnCNNDenoiser(ModuleDenoiser):
    r"""One DnCNN as a :class:`fdn.denoisers.Denoiser`: it ignores sigma.

    Arguments:
        model: the network; it is put in eval mode.
        name: the method's name in tables.
    """

    def __init__(self, model: DnCNN, name: str = "DnCNN") -> None:
        if model.config.out_channels != model.config.in_channels:
            raise ValueError("a DnCNN denoiser needs as many output channels as input ones")
        super().__init__(model, name)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Loads a PyTorch state_dict with ``weights_only=True``; a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such file" if not path.exists() else "not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ModelFileError(
            path, f"cannot be loaded as weights (torch.load weights_only=True: {first_line})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    ):
        raise ModelFileError(path, "is not a state_dict (a flat mapping of names to tensors)")
    return state


def load_exact(model: nn.Module, tensors: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Loads ``tensors`` into ``model``, requiring every name and shape to match.

    BatchNorm's ``num_batches_tracked`` counters may be absent (old files lack them).
    """
    optional = frozenset(n for n in model.state_dict() if n.endswith("num_batches_tracked"))
    check_tensors(model, tensors, path, optional)
    model.load_state_dict(tensors, strict=False)


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def conv_weights(tensors: dict[str, Tensor], prefix: str) -> list[Tensor]:
    """The 4-D ``{prefix}N.weight`` tensors, in the order of their layer index N."""
    indexed = []
    for name, tensor in tensors.items():
        parts = name[len(prefix) :].split(".")
        if tensor.dim() == 4 and len(parts) == 2 and parts[0].isdigit() and parts[1] == "weight":
            indexed.append((int(parts[0]), tensor))
    return [tensor for _, tensor in sorted(indexed, key=lambda item: item[0])]


def load_peer_dncnn(path: str | os.PathLike) -> DnCNN:
    """Builds a DnCNN from a reference weight file (SaoYan's or KAIR's layout), in eval mode.

    Depth, channels and features are read off the tensors; a file with any other key
    layout or inconsistent shapes raises :class:`fdn.ModelFileError` naming the file.
    """
    state = read_state_dict(path)
    prefix = next(
        (p for p in _PEER_LAYOUTS if state and all(name.startswith(p) for name in state)), None
    )
    if prefix is None:
        raise ModelFileError(
            path,
            "not a DnCNN weight file: expected keys module.dncnn.N.* (DnCNN-PyTorch) or "
            f"model.N.* (KAIR), got {_preview(sorted(state)) or 'no tensors'}",
        )
    convs = conv_weights(state, prefix)
    if len(convs) < 2:
        raise ModelFileError(path, f"found {len(convs)} convolution weights, expected >= 2")
    model = DnCNN(
        in_channels=convs[0].shape[1],
        depth=len(convs),
        features=convs[0].shape[0],
        batch_norm=_PEER_LAYOUTS[prefix],
        out_channels=convs[-1].shape[0],
    )
    load_exact(model, {"layers." + name[len(prefix) :]: t for name, t in state.items()}, path)
    return model.eval()


def save_dncnn(model: DnCNN, path: str | os.PathLike) -> Path:
    """Writes ``model`` as safetensors with its config in the metadata, atomically; returns
    the path."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_dncnn(path: str | os.PathLike) -> DnCNN:
    """Rebuilds a DnCNN written by :func:`save_dncnn`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such file" if not path.exists() else "not a file")
    try:
        with safe_open(path, framework="pt", device="cpu") as archive:
            metadata = archive.metadata() or {}
            tensors = {name: archive.get_tensor(name) for name in archive.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ModelFileError(path, f"not a readable safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(path, "not a DnCNN model file (no fdn.dncnn metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            path, f"DnCNN file format {metadata.get('format_version')!r} is not supported"
        )
    try:
        config = DnCNNConfig(**json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(path, f"missing or invalid config in metadata ({error})") from None
    model = DnCNN.from_config(config)
    load_exact(model, tensors, path)
    return model.eval()
