r"""The names the command line offers and the library accepts, importable without torch.

``fdn --help`` and ``fdn --version`` build the whole parser, so everything the parser checks
a value against lives here rather than in the modules that use it (which import torch):
device names, precisions, baseline names and the reference-weights folder.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path

__all__ = [
    "BASELINES",
    "DEFAULT_NOISE_ESTIMATOR",
    "DEFAULT_SIGMAS",
    "DEVICE_NAMES",
    "ENSEMBLE_SIZES",
    "EXPORTERS",
    "NOISE_ESTIMATORS",
    "PRECISIONS",
    "RECONSTRUCTIONS",
    "STRENGTHS",
    "WEIGHTS_ENV",
    "check_device_name",
    "check_strength",
    "default_weights",
    "ensemble_size",
]

# Every command's --device, and fdn.runtime.resolve_device: "auto" is CUDA when available.
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")

# "bf16" runs every convolution in bfloat16 (torch.autocast), while the couplings' and
# ActNorm's elementwise arithmetic stays in float32: 0.64x the time of "fp32" on a CPU with
# AVX-512 BF16, within 0.05 dB on the bundled models (docs/performance.md). Not the default:
# it does not equal the plain path within 1e-5, and a CPU without bfloat16 instructions runs
# it slower, not faster.
PRECISIONS = ("fp32", "bf16")

# optim.reconstruction, the loss between the decode of the masked latent and the clean image
# (fdn.losses.reconstruction_loss): the paper's L1, the mean squared error, or minus the PSNR.
RECONSTRUCTIONS = ("l1", "l2", "psnr")

# FDN.denoise's strength: 0 leaves the input, 1 zeroes the noise latent z_N (the model's
# estimate), and above 1 a sigma hint: the mean of four strength-1 denoises of the input plus
# seeded white noise of 30 * (strength - 1) grey levels (fdn.model.hint_sigma).
STRENGTHS = (0.0, 2.0)

# How many flips and rotations a self-ensemble averages (fdn.ensemble.self_ensemble; 1: off):
# the first 2, 4 or all 8 of fdn.ensemble.dihedral's order.
ENSEMBLE_SIZES = (1, 2, 4, 8)

# fdn export's (and fdn.export.export_onnx's) PyTorch ONNX exporters, the default first:
# TorchScript's trace (seconds) and dynamo's torch.export capture (a minute or two; fdn.export).
EXPORTERS = ("torchscript", "dynamo")

# fdn eval's and fdn compare's baselines: the keys of fdn.denoisers.BASELINE_FACTORIES
# (tests/test_denoisers.py keeps them equal).
BASELINES = ("bm3d", "nlm", "dncnn", "dncnn-b", "ffdnet")
DEFAULT_SIGMAS = (15.0, 25.0, 50.0)

# fdn.estimate_noise's methods (fdn.noise_level), and the one fdn estimate-noise and
# --sigma auto use: the smallest mean error over CBSD68 and BSD68 (docs/noise-estimation.md).
NOISE_ESTIMATORS = ("mad", "pca", "flow")
DEFAULT_NOISE_ESTIMATOR = "flow"

# The reference weights of dncnn, dncnn-b and ffdnet (docs/evaluation.md says where each file
# is published): --weights DIR, else this variable, else ../shared/peer-weights beside the
# repository this package runs from.
WEIGHTS_ENV = "FDN_WEIGHTS"


def default_weights() -> Path:
    """The reference weights folder when no ``--weights`` is given, read at each call.

    ``$FDN_WEIGHTS`` when set, else ``../shared/peer-weights`` beside the repository of this
    source tree (``src/fdn`` -> the repository -> its parent), as an absolute path, so the
    answer never depends on the working directory. A missing file in it is reported with
    its full path (:class:`fdn.baselines.MissingWeightsError`).
    """
    chosen = os.environ.get(WEIGHTS_ENV, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "peer-weights"


def check_device_name(name: str) -> str:
    """Returns ``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else ValueError.

    >>> check_device_name("cuda:1")
    'cuda:1'
    >>> check_device_name("gpu")
    Traceback (most recent call last):
    ValueError: 'gpu' is not auto, cpu, cuda or cuda:N
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ValueError(f"{name!r} is not {DEVICE_NAMES}")
    return name


@typing.overload
def check_strength(strength: None) -> None: ...
@typing.overload
def check_strength(strength: float) -> float: ...
def check_strength(strength: float | None) -> float | None:
    """Returns ``strength`` as a float if it lies in :data:`STRENGTHS`, and None (the model's
    default strength, :meth:`fdn.FDN.denoise`) as it is; else ValueError.

    >>> check_strength(1.5)
    1.5
    >>> check_strength(float("nan"))
    Traceback (most recent call last):
    ValueError: strength must be in [0, 2], got nan
    """
    if strength is None:
        return None
    low, high = STRENGTHS
    value = float(strength)
    if not low <= value <= high:  # NaN fails both comparisons
        raise ValueError(f"strength must be in [{low:g}, {high:g}], got {strength!r}")
    return value


def ensemble_size(ensemble: bool | int | None) -> int:
    """The number of transforms an ``ensemble`` argument asks for: False or None 1 (off), True
    8 (the x8 ensemble, as the flag has always meant), or one of :data:`ENSEMBLE_SIZES`;
    else ValueError.

    >>> ensemble_size(True), ensemble_size(False), ensemble_size(4)
    (8, 1, 4)
    >>> ensemble_size(3)
    Traceback (most recent call last):
    ValueError: ensemble: expected 1, 2, 4 or 8 transforms, got 3
    """
    if ensemble is None or isinstance(ensemble, bool):
        return 8 if ensemble else 1
    if ensemble not in ENSEMBLE_SIZES:
        *most, last = map(str, ENSEMBLE_SIZES)
        raise ValueError(
            f"ensemble: expected {', '.join(most)} or {last} transforms, got {ensemble!r}"
        )
    return int(ensemble)
