r"""How noisy is an image? Estimates of the standard deviation of its AWGN, on the 0-255 scale.

Three estimators, by name (:data:`fdn.choices.NOISE_ESTIMATORS`):

- ``"mad"``: Donoho's: the median absolute value of the finest diagonal Haar wavelet
  subband over 0.6745. Fast, but texture and edges leak into the subband, so it
  overestimates on detailed photographs, most at low noise.
- ``"pca"``: Chen, Zhu and Heng's: the covariance of all 7x7 patches (x C channels) has
  eigenvalues of which the smallest come from the noise alone; the estimate is the mean
  of the largest tail of eigenvalues whose mean is also their median. Texture lives in a
  few large eigenvalues, so it is ignored.
- ``"flow"``: the bundled blind FDN for the image's channels: the residual ``y - denoise(y)``,
  its robust standard deviation (1.4826 x its median absolute value), mapped through a
  calibration curve fitted on training images for the model's weights and kept in its
  record in ``models.json`` (``noise_calibration``, written by
  ``benchmarks/noise_estimation.py --fit --write``).

``docs/noise-estimation.md`` measures them on CBSD68 and BSD68. The classical ones need only
numpy; ``"flow"`` imports torch when it runs. Every estimator sees the colour channels only
(alpha is dropped) and pools the channels, as AWGN is the same in each.

References:
    D. L. Donoho, I. M. Johnstone. Ideal spatial adaptation by wavelet shrinkage.
    Biometrika 81(3), 1994.

    G. Chen, F. Zhu, P. A. Heng. An efficient statistical method for image noise level
    estimation. ICCV 2015.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fdn.choices import DEFAULT_NOISE_ESTIMATOR, NOISE_ESTIMATORS
from fdn.images import to_unit_float

if TYPE_CHECKING:
    import torch

    from fdn.model import FDN

__all__ = [
    "METHODS",
    "estimate_files",
    "estimate_noise",
    "estimate_noise_tensor",
    "flow_model_name",
]

METHODS = NOISE_ESTIMATORS

# A Gaussian's standard deviation over its median absolute value (1.4826...), for the MAD
# estimator here and the flow's residual (fdn.model.residual_sigma).
MAD_TO_SIGMA = 1 / 0.6744897501960817
_PATCH = 7
_MAX_PATCHES = 60_000  # a strided subset of the patches above this: the estimate hardly moves
_FLOW_SIDE = 512  # the flow sees at most a central crop of this size


def _colour_channels(image: np.ndarray) -> np.ndarray:
    """``image`` as float64 ``(H, W, C)`` in [0, 1], alpha dropped."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, C) image with C <= 4, got {array.shape}")
    if array.shape[2] in (2, 4):
        array = array[:, :, :-1]
    if array.dtype in (np.uint8, np.uint16):
        return to_unit_float(array).astype(np.float64)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"unsupported dtype {array.dtype}: use uint8, uint16 or float")
    if not np.isfinite(array).all():
        raise ValueError("the image has NaN or infinite values")
    return array.astype(np.float64)


def _mad(image: np.ndarray) -> float:
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    x = image[:height, :width]
    # The orthonormal Haar HH subband: unit gain for white noise.
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    return float(np.median(np.abs(diagonal))) * MAD_TO_SIGMA


def _pca(image: np.ndarray) -> float:
    windows = np.lib.stride_tricks.sliding_window_view(image, (_PATCH, _PATCH), axis=(0, 1))
    rows, columns = windows.shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(rows * columns / _MAX_PATCHES))))
    patches = windows[::stride, ::stride].reshape(-1, image.shape[2] * _PATCH * _PATCH)
    centred = patches - patches.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1]  # descending
    for start in range(len(eigenvalues)):
        tail = eigenvalues[start:]
        mean = tail.mean()
        if np.sum(tail > mean) == np.sum(tail < mean):
            return float(np.sqrt(max(mean, 0.0)))
    return float(np.sqrt(max(eigenvalues[-1], 0.0)))


@functools.lru_cache(maxsize=4)
def _bundled_model(channels: int, device: str) -> FDN:
    # Loaded (and its checksum checked) once per channel count and device, not per image.
    from fdn.pretrained import resolve_model

    return resolve_model(None, channels, device)


def _flow_raw(image: np.ndarray, device: str | torch.device) -> float:
    """The raw flow estimate, 0-255: the strength-1 residual's robust standard deviation
    (:func:`fdn.model.residual_sigma`, the statistic the default strength reads too)."""
    import torch

    from fdn.model import residual_sigma

    height, width = image.shape[:2]
    top, left = max(0, (height - _FLOW_SIDE) // 2), max(0, (width - _FLOW_SIDE) // 2)
    crop = image[top : top + _FLOW_SIDE, left : left + _FLOW_SIDE]
    model = _bundled_model(crop.shape[2], str(device))
    noisy = torch.from_numpy(crop.transpose(2, 0, 1).astype(np.float32))[None].to(device)
    with torch.no_grad():
        return residual_sigma(noisy, model.denoise(noisy, 1.0)).item()  # as calibrated


def flow_model_name(channels: int) -> str:
    """The bundled model the flow estimator uses for ``channels``-channel images."""
    from fdn.pretrained import DEFAULT_MODELS

    return DEFAULT_MODELS[3 if channels >= 3 else 1]


def _calibrated(raw: float, model: str) -> float:
    """``raw`` read off bundled ``model``'s calibration curve: the mean raw estimate at each
    true sigma on training images. A model not calibrated since its release keeps ``raw``."""
    from fdn.pretrained import model_record

    calibration = model_record(model).get("noise_calibration")
    if not calibration:
        return raw
    sigmas, raws = calibration["sigmas"], calibration["raw"]
    if raw <= raws[-1]:
        return float(np.interp(raw, raws, sigmas))
    # Beyond the fitted range (sigma > 55), extrapolate along the last segment.
    slope = (sigmas[-1] - sigmas[-2]) / (raws[-1] - raws[-2])
    return sigmas[-1] + slope * (raw - raws[-1])


def estimate_noise(
    image: np.ndarray,
    method: str = DEFAULT_NOISE_ESTIMATOR,
    device: str | torch.device = "cpu",
    calibrate: bool = True,
) -> float:
    r"""The standard deviation of an image's additive white Gaussian noise, 0-255 scale.

    Arguments:
        image: ``(H, W)`` or ``(H, W, C)``, uint8, uint16 or float in [0, 1] (noisy values
            may stray outside); C is 1 or 3 colour channels, or 2 or 4 with alpha last.
        method: ``"mad"``, ``"pca"`` or ``"flow"`` (see the module's docstring).
        device: where ``"flow"`` runs its model.
        calibrate: ``"flow"`` only: False gives its raw residual estimate.

    Example:
        >>> import numpy as np
        >>> noisy = 0.5 + 20 / 255 * np.random.default_rng(0).standard_normal((64, 64))
        >>> round(estimate_noise(noisy, "pca"))
        20
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    pixels = _colour_channels(image)
    if min(pixels.shape[:2]) < 2 * _PATCH:
        raise ValueError(f"image of {pixels.shape[0]}x{pixels.shape[1]} is too small to tell")
    if method == "mad":
        return 255 * _mad(pixels)
    if method == "pca":
        return 255 * _pca(pixels)
    raw = _flow_raw(pixels, device)
    return _calibrated(raw, flow_model_name(pixels.shape[2])) if calibrate else raw


def estimate_noise_tensor(
    noisy: torch.Tensor, method: str = DEFAULT_NOISE_ESTIMATOR, device: str | torch.device = "cpu"
) -> float:
    """:func:`estimate_noise` of a ``(1, C, H, W)`` or ``(C, H, W)`` float tensor in [0, 1],
    as ``fdn eval`` and ``fdn compare`` hold their noisy images."""
    array = noisy.detach().cpu().reshape(noisy.shape[-3:]).permute(1, 2, 0).numpy()
    return estimate_noise(array, method, device)


# fdn estimate-noise: files, folders and globs


def estimate_files(
    inputs: Sequence[str | os.PathLike],
    methods: Sequence[str] = (DEFAULT_NOISE_ESTIMATOR,),
    device: str | torch.device = "cpu",
    report: Callable[[str], None] | None = None,
) -> tuple[list[dict], int]:
    """Estimates every image's sigma by every method: ``fdn estimate-noise``.

    Returns ``{"file": path, "sigma": {method: value}}`` per image that was read, and the
    number of files that failed; each failure is reported as one line naming the file.
    """
    from fdn.batch import find_images  # the walk fdn denoise does, and its errors
    from fdn.images import read_array

    rows, failed = [], 0
    for path, _ in find_images(inputs):
        try:
            pixels = read_array(path)
            sigma = {method: estimate_noise(pixels, method, device) for method in methods}
        except ValueError as error:  # ImageFileError names the file; the others do not
            text = " ".join(str(error).split())
            failed += 1
            if report is not None:
                report(text if str(path) in text else f"{path}: {text}")
            continue
        rows.append({"file": str(path), "sigma": sigma})
    return rows, failed
