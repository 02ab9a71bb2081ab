r"""``fdn export``: the denoise graph of an FDN as an ONNX file, for onnxruntime and others.

The graph is :meth:`FDN.denoise` at strength 1 in float32: reflect-pad the bottom and right
edges to a multiple of ``config.size_multiple``, encode, zero z_N, decode, crop, clamp to
[0, 1]. Its input ``noisy`` is a ``(B, C, H, W)`` float32 batch in [0, 1] with the batch,
height and width dynamic, so one file takes any size of at least :func:`smallest_size` (3 x 3
for a size multiple of 4, as the bundled models', 5 x 5 for 8: a reflection needs pads
shorter than the side, and ``FDN.denoise`` replicate-pads images too small to reflect where
the graph always reflects). The padding is in the graph, so callers pass images as they are.

Each invertible 1x1 convolution's inverse is computed at export, in float64 as
:class:`~fdn.layers.InvConv1x1` computes it, and stored as a constant convolution weight, so
the graph holds no matrix inverse and no log-determinant.

Two of PyTorch's exporters write the same graph (outputs within 3e-7 of each other on
random images, and as fast in onnxruntime): ``"torchscript"`` (the default), which traces the
graph once on an example and records the size arithmetic of the padding and cropping as ONNX
operators, in 2.9 s for a bundled model on one CPU thread; and ``"dynamo"``
(``torch.onnx.export(dynamo=True)``, PyTorch's default since 2.9), which captures it with
``torch.export`` on symbolic sizes and takes 64 s for the same model (22x; up to 95 s on a
busy machine), almost all of it in that symbolic reasoning (``benchmarks/export_speed.py``).
PyTorch has deprecated the TorchScript exporter; ``"dynamo"`` is here for the version that
drops it. Exporting needs the ``onnx`` package (``"dynamo"`` also ``onnxscript``), running the
file ``onnxruntime``: all three are the ``onnx`` extra.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdn._version import DISTRIBUTION
from fdn.choices import EXPORTERS
from fdn.layers import InvConv1x1
from fdn.layers.base import InvertibleLayer
from fdn.model import FDN

__all__ = [
    "EXPORTERS",
    "DenoiseGraph",
    "export_onnx",
    "load_for_export",
    "onnx_session",
    "require_onnx",
    "smallest_size",
]

_EXTRA = f"pip install '{DISTRIBUTION}[onnx]'"


def require_onnx(*packages: str) -> None:
    """Raises a one-line ImportError that names the ``onnx`` extra if a package is missing."""
    for package in packages:
        try:
            __import__(package)
        except ImportError:
            raise ImportError(f"ONNX export and runtime need {package}: {_EXTRA}") from None


def smallest_size(multiple: int) -> int:
    """The smallest height and width an exported graph takes, for a model's size multiple: a
    side s < multiple is reflect-padded by multiple - s, and a reflection needs pads of at most
    s - 1."""
    return multiple // 2 + 1


class _FixedInvConv1x1(InvertibleLayer):
    """An :class:`InvConv1x1` frozen for export: W and its precomputed inverse as buffers.

    Its log-dets are zeros: the denoise graph never uses them.
    """

    weight: Tensor
    weight_inverse: Tensor

    def __init__(self, layer: InvConv1x1) -> None:
        super().__init__()
        weight = layer.weight.detach().double()
        channels = weight.shape[0]
        inverse = torch.linalg.inv(weight)
        self.register_buffer("weight", weight.float().view(channels, channels, 1, 1))
        self.register_buffer("weight_inverse", inverse.float().view(channels, channels, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.conv2d(x, self.weight), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return F.conv2d(y, self.weight_inverse), y.new_zeros(y.shape[0])


class DenoiseGraph(nn.Module):
    r"""What ``fdn export`` exports: ``FDN.denoise`` at strength 1, with fixed 1x1 inverses.

    Works on a float32 copy of the model, so ``model`` itself is left as it was.

    Arguments:
        model: the FDN to export.

    Example:
        >>> import torch
        >>> model = FDN(hidden_channels=4, steps_per_block=1).eval()
        >>> noisy = torch.rand(1, 3, 7, 5)
        >>> torch.allclose(DenoiseGraph(model)(noisy), model.denoise(noisy), atol=1e-6)
        True
    """

    def __init__(self, model: FDN) -> None:
        super().__init__()
        flow = copy.deepcopy(model).float().eval()
        for module in list(flow.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, InvConv1x1):
                    setattr(module, name, _FixedInvConv1x1(child))
        self.flow = flow
        self.multiple = model.config.size_multiple
        self.clean_channels = model.config.clean_channels

    def forward(self, noisy: Tensor) -> Tensor:
        height, width = noisy.shape[-2:]
        # Always reflect, with pads of 0 .. multiple-1 computed from the input's shape.
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        padded = F.pad(noisy, (0, pad_w, 0, pad_h), mode="reflect")
        z, _ = self.flow(padded)
        z_n = z[:, self.clean_channels :]
        z_hat = torch.cat([z[:, : self.clean_channels], torch.zeros_like(z_n)], dim=1)
        x, _ = self.flow.inverse(z_hat)
        return x[..., :height, :width].clamp(0, 1)


def load_for_export(spec: str | os.PathLike) -> FDN:
    """The model a ``fdn export MODEL`` names: a bundled name or a model file."""
    from fdn.pretrained import available_models
    from fdn.serialization import load_model

    path = Path(spec)
    if str(spec) not in available_models() and not path.exists() and path.suffix == "":
        raise ValueError(
            f"{spec}: neither a model file nor a bundled model ({', '.join(available_models())})"
        )
    return load_model(spec)


def export_onnx(
    model: FDN | str | os.PathLike, path: str | os.PathLike, exporter: str = "torchscript"
) -> Path:
    """Writes ``model``'s denoise graph (:class:`DenoiseGraph`) to ``path`` as one ONNX file,
    atomically. ``model`` may be an FDN, a bundled model's name or a model file; ``exporter``
    is one of :data:`EXPORTERS` (the module's docstring compares them). The input is named
    ``noisy`` and the output ``denoised``. Returns ``path``."""
    from fdn.atomic import atomic_write

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}: one of {', '.join(EXPORTERS)}")
    require_onnx("onnx", *(["onnxscript"] if exporter == "dynamo" else []))
    if not isinstance(model, FDN):
        model = load_for_export(model)
    graph = DenoiseGraph(model).eval()
    # A batch of 2 and an odd size, so that neither the batch nor a zero pad is specialised.
    example = torch.rand(2, model.config.in_channels, 4 * model.config.size_multiple + 1, 21)
    # Both exporters warn about their own deprecations; the tracer warns that the squeeze's
    # size check becomes a constant (true of every padded input); and the dynamo exporter
    # logs guards it cannot prove for symbolic sizes, then captures the graph without them
    # (the tests check both exporters' output at several sizes). None of it concerns the user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            if exporter == "torchscript":
                return atomic_write(path, lambda tmp: _export_torchscript(graph, example, tmp))
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=["noisy"],
                output_names=["denoised"],
                dynamic_shapes={"noisy": _symbolic_sizes(model.config.size_multiple)},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        logger.setLevel(level)
    assert program is not None
    return atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def _export_torchscript(graph: DenoiseGraph, example: Tensor, path: Path) -> None:
    """The TorchScript exporter's trace of ``graph`` on ``example``, written to ``path``."""
    sizes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        graph,
        (example,),
        str(path),
        input_names=["noisy"],
        output_names=["denoised"],
        dynamic_axes={"noisy": sizes, "denoised": sizes},
        dynamo=False,
    )


def _symbolic_sizes(multiple: int) -> dict[int, Any]:
    """The dynamo exporter's dynamic batch, height and width (at least smallest_size)."""
    smallest = smallest_size(multiple)
    return {
        0: torch.export.Dim("batch"),
        2: torch.export.Dim("height", min=smallest),
        3: torch.export.Dim("width", min=smallest),
    }


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an exported file; ``threads`` sets its intra-op threads
    (None: onnxruntime's default, every core)."""
    require_onnx("onnxruntime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
