r"""``fdn export``: the denoise graph of an FDN as an ONNX file, for onnxruntime and others.

The graph is :meth:`FDN.denoise` at strength 1 in float32: reflect-pad the bottom and right
edges to a multiple of ``config.size_multiple``, encode, zero z_N, decode, crop, clamp to
[0, 1]. Its input ``noisy`` is a ``(B, C, H, W)`` float32 batch in [0, 1] with the batch,
height and width dynamic, so one file takes any size of at least 3 x 3 (``FDN.denoise``
replicate-pads images too small to reflect; the graph always reflects). The padding is in
the graph, so callers pass images as they are.

Each invertible 1x1 convolution's inverse is computed at export, in float64 as
:class:`~fdn.layers.InvConv1x1` computes it, and stored as a constant convolution weight, so
the graph holds no matrix inverse and no log-determinant. The exporter is PyTorch's
``torch.onnx.export(dynamo=True)``, which needs the ``onnx`` and ``onnxscript`` packages;
running the file needs ``onnxruntime``: all three are the ``onnx`` extra.
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
from fdn.layers import InvConv1x1
from fdn.layers.base import InvertibleLayer
from fdn.model import FDN

__all__ = ["DenoiseGraph", "export_onnx", "load_for_export", "onnx_session", "require_onnx"]

_EXTRA = f"pip install '{DISTRIBUTION}[onnx]'"


def require_onnx(*packages: str) -> None:
    """Raises a one-line ImportError that names the ``onnx`` extra if a package is missing."""
    for package in packages:
        try:
            __import__(package)
        except ImportError:
            raise ImportError(f"ONNX export and runtime need {package}: {_EXTRA}") from None


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


def export_onnx(model: FDN | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Writes ``model``'s denoise graph (:class:`DenoiseGraph`) to ``path`` as one ONNX file,
    atomically. ``model`` may be an FDN, a bundled model's name or a model file. The input is
    named ``noisy`` and the output ``denoised``. Returns ``path``."""
    from fdn.atomic import atomic_write

    require_onnx("onnx", "onnxscript")
    if not isinstance(model, FDN):
        model = load_for_export(model)
    graph = DenoiseGraph(model).eval()
    # A batch of 2 and an odd size, so that neither the batch nor a zero pad is specialised.
    example = torch.rand(2, model.config.in_channels, 4 * model.config.size_multiple + 1, 21)
    dims: dict[int, Any] = {
        0: torch.export.Dim("batch"),
        2: torch.export.Dim("height", min=3),
        3: torch.export.Dim("width", min=3),
    }
    # The exporter warns about its own deprecations and absent torchvision operators (and
    # logs guards it cannot prove for symbolic sizes, then captures the graph without them:
    # the tests check its output at several sizes); none of it concerns the user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=["noisy"],
                output_names=["denoised"],
                dynamic_shapes={"noisy": dims},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        logger.setLevel(level)
    assert program is not None
    return atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


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
