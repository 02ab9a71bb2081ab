r"""Noise synthesis (`fdn.renoise`): z_C of the image under a fresh noise code z_N, decoded.

FDN's encode splits an image into z_C (the scene) and z_N (its noise), and decode is the exact
inverse. Keeping z_C and drawing z_N ~ N(0, T^2 I) gives a new noisy version of the same scene
with the noise the model learned: data augmentation, or a look at what a model thinks noise is.
Temperature 0 is the model's denoised estimate (unclamped); 1 is the model's own noise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fdn.batch import Job, check_outputs
from fdn.images import ImageFileError, read_image, to_unit_float, write_image
from fdn.model import FDN

__all__ = ["renoise", "renoise_files", "renoise_targets", "renoise_tensor"]


@torch.no_grad()
def renoise_tensor(
    y: torch.Tensor, model: FDN, samples: int = 1, temperature: float = 1.0, seed: int = 0
) -> list[torch.Tensor]:
    """``samples`` renoised versions of a ``(B, C, H, W)`` batch y, not clamped.

    Sample k's z_N is ``temperature`` times the k-th standard normal draw of a CPU
    ``torch.Generator`` seeded with ``seed``: the same on every device and dtype, and the first
    samples of a seed do not depend on how many are drawn.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    height, width = y.shape[-2:]
    z, _ = model.encode(model.pad(y))
    clean = model.config.clean_channels
    noise_shape = (z.shape[0], z.shape[1] - clean, *z.shape[2:])  # z_N: (B, C_N, h, w)
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for _ in range(samples):
        z_n = torch.randn(noise_shape, generator=generator, dtype=torch.float64)
        z_new = torch.cat([z[:, :clean], temperature * z_n.to(z.device, z.dtype)], dim=1)
        outputs.append(model.decode(z_new)[..., :height, :width])
    return outputs


def renoise(
    image: np.ndarray,
    model: FDN | str | None = None,
    samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    r"""New noisy versions of a numpy image, drawn from the model's learned noise.

    Arguments:
        image: ``(H, W)`` or ``(H, W, C)``, uint8, uint16 or float (about [0, 1]); C is the
            model's channels, or that plus alpha (returned unchanged).
        model: the FDN, on the device to use; a bundled name or model file; or None, the
            bundled blind model for the image's channels.
        samples: how many versions to draw.
        temperature: the standard deviation of the new z_N; 0 gives the denoised estimate.
        seed: seeds the draws (:func:`renoise_tensor`).

    Returns ``samples`` arrays of the image's shape and dtype. Floats are not clipped to
    [0, 1], like noisy pixels before quantisation; integers are rounded and clipped.

    Example:
        >>> model = FDN(hidden_channels=4, steps_per_block=1).eval()
        >>> outs = renoise(np.full((5, 7, 3), 128, np.uint8), model, samples=2)
        >>> len(outs), outs[0].shape, outs[0].dtype
        (2, (5, 7, 3), dtype('uint8'))
    """
    array = np.asarray(image)
    colour = array if array.ndim == 3 else array[:, :, None]
    if array.ndim not in (2, 3) or colour.shape[2] > 4 or min(array.shape[:2]) < 1:
        raise ValueError(f"expected a non-empty (H, W) or (H, W, C) image, got {array.shape}")
    alpha = None
    if colour.shape[2] in (2, 4):
        colour, alpha = colour[:, :, :-1], colour[:, :, -1:]
    if not isinstance(model, FDN):
        from fdn.pretrained import resolve_model

        model = resolve_model(model, colour.shape[2])
    if colour.shape[2] != model.config.in_channels:
        raise ValueError(
            f"cannot renoise a {colour.shape[2]}-channel image with a "
            f"{model.config.in_channels}-channel model"
        )
    if array.dtype in (np.uint8, np.uint16):
        unit = to_unit_float(colour)
    elif np.issubdtype(array.dtype, np.floating) and np.isfinite(colour).all():
        unit = colour
    else:
        raise ValueError(f"expected uint8, uint16 or finite float pixels, got {array.dtype}")
    parameter = next(model.parameters())
    y = torch.from_numpy(np.ascontiguousarray(unit)).permute(2, 0, 1)[None]  # (1, C, H, W)
    y = y.to(parameter.device, parameter.dtype)
    results = []
    for x in renoise_tensor(y, model, samples, temperature, seed):
        pixels = x[0].permute(1, 2, 0).double().cpu().numpy()
        if array.dtype in (np.uint8, np.uint16):
            top = np.iinfo(array.dtype).max
            pixels = np.rint(np.clip(pixels, 0, 1) * top)
        pixels = pixels.astype(array.dtype)
        if alpha is not None:
            pixels = np.concatenate([pixels, alpha], axis=2)
        results.append(pixels.reshape(array.shape))
    return results


def renoise_targets(job: Job, samples: int) -> list[Path]:
    """Where a job's samples go: ``NAME_renoise_K.EXT`` beside its target, K from 1."""
    target = job.target
    return [
        target.with_name(f"{target.stem}_renoise_{k}{target.suffix}")
        for k in range(1, samples + 1)
    ]


def renoise_files(
    jobs: Sequence[Job],
    model: FDN | Callable[[int], FDN],
    samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    report: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> tuple[int, int]:
    """Writes each job's samples (:func:`renoise_targets`) in its input's format, atomically;
    a bad file is reported on one line and skipped. Returns (files written, inputs failed).

    ``model`` is an FDN, or a function from an image's channel count to the FDN to use.
    Raises :class:`fdn.batch.InputError` before writing anything if an output would overwrite
    an input.
    """
    # fdn denoise's output checks, on every sample's file: none overwrites an input, no two
    # inputs write the same file.
    check_outputs([Job(job.source, t) for job in jobs for t in renoise_targets(job, samples)])
    written = failed = 0
    for job in jobs:
        try:
            image = read_image(job.source)
            chosen = model if isinstance(model, FDN) else model(image.pixels.shape[2])
            draws = renoise(image.pixels, chosen, samples, temperature, seed)
            for target, pixels in zip(renoise_targets(job, samples), draws, strict=True):
                write_image(target, image, pixels)
                written += 1
        except (ImageFileError, ValueError, OSError, RuntimeError) as error:
            failed += 1
            message = str(error) if isinstance(error, ImageFileError) else f"{job.source}: {error}"
            report(f"fdn: error: {' '.join(message.split())}")
    return written, failed
