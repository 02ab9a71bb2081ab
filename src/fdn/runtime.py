r"""Where and how fast to run: the device a ``--device`` name means, channels-last
convolutions, and glibc's malloc kept from unmapping big blocks.

:func:`resolve_device` turns ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the names every ``fdn``
command's ``--device`` takes, :mod:`fdn.choices`) into a :class:`torch.device`, with a one-line
error when CUDA is asked for and absent.

:func:`channels_last` puts a network's weights and its input in NHWC, where oneDNN's
convolutions run faster on CPU than in NCHW, with equal results: FDN in about 0.65x the time,
DnCNN in 0.85x (one thread, 256x256). ``FDN.denoise``, ``DnCNN.denoise`` and
``FFDNet.denoise`` use it in eval mode, so the benchmarks compare like with like.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves a large request with a
fresh ``mmap`` and gives it back on ``free`` (or trims the top of the heap), so the next
tensor of that size is new memory again: the kernel faults in and zeroes every page. A
convolutional denoiser allocates and frees a full-size feature map per layer, so it spends a
large share of its time there. Measured on this project's CPU (one thread, 256x256 colour):
DnCNN 0.70 s with about 190,000 page faults per image, 0.37 s with none; FDN 0.94-1.05 s ->
0.86-0.96 s, 4.3 -> 3.7-3.9 s at 512x512; peak memory unchanged. Raising glibc's mmap and trim
thresholds (what ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` do) keeps freed
blocks in the heap for reuse; the cost is that the process keeps its peak heap until it exits.

``fdn``'s command line applies this at start; set ``FDN_TUNE_MALLOC=0`` to leave malloc as it
is. A program using the library calls :func:`tune_allocator` itself, or sets the two
environment variables before starting Python.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch
from torch import Tensor, nn

from fdn.choices import check_device_name

__all__ = [
    "allocator_tuned",
    "bf16_is_native",
    "channels_last",
    "resolve_device",
    "resolve_precision",
    "tune_allocator",
]

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: any block below it is served from, and returned to, the heap

_tuned = False


def resolve_device(name: str | torch.device, what: str = "--device") -> torch.device:
    """The device ``name`` means: ``auto`` is CUDA when available, else the CPU.

    ``cuda`` or ``cuda:N`` without CUDA, or with no device N, and a name that is none of
    ``auto``, ``cpu``, ``cuda``, ``cuda:N``, raise a one-line ValueError that starts with
    ``what`` (the option or setting the name came from). A :class:`torch.device` is returned
    as it is.
    """
    if isinstance(name, torch.device):
        return name
    try:
        check_device_name(name)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {name}: no CUDA device is available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            there = (
                "is 1 CUDA device (0)"
                if count == 1
                else f"are {count} CUDA devices (0-{count - 1})"
            )
            raise ValueError(f"{what} {name}: there {there}")
    return device


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware: a CUDA GPU that supports
    it, or a CPU with AVX-512 BF16 or AMX (oneDNN's test). Elsewhere PyTorch emulates them,
    far slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` is ``"bf16"`` where :func:`bf16_is_native` holds for ``device``, else
    ``"fp32"``; ``"fp32"`` and ``"bf16"`` are themselves."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_native(device) else "fp32"


def tune_allocator() -> bool:
    """Raises glibc's mmap and trim thresholds to 1 GiB for this process.

    Returns whether it took effect: ``False`` off Linux/glibc, when ``FDN_TUNE_MALLOC=0``,
    or when glibc refuses the values. Calling it again is harmless.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("FDN_TUNE_MALLOC", "1").strip() == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    _tuned = bool(mmap_ok and trim_ok)
    return _tuned


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has taken effect in this process."""
    return _tuned


def channels_last(module: nn.Module, x: Tensor) -> Tensor:
    """In eval mode, ``x`` in channels-last, ``module``'s weights converted the first time.

    In training mode ``x`` comes back as it is and the weights stay as they are. A converted
    module stays trainable (autograd does not mind the layout).
    """
    if module.training:
        return x
    if not getattr(module, "_channels_last", False):
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        module._channels_last = True  # type: ignore[assignment]
    return x.contiguous(memory_format=torch.channels_last)
