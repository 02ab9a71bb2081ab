r"""FDN's objective: NLL of the noisy image plus L1 of the denoised one (paper eq. 10-12)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fdn.choices import RECONSTRUCTIONS
from fdn.model import FDN

__all__ = [
    "PSNR_LOSS_FLOOR",
    "FDNLoss",
    "bits_per_dim",
    "dequantize",
    "fdn_loss",
    "nll_loss",
    "reconstruction_loss",
]

_LOG_2PI = math.log(2 * math.pi)


def nll_loss(z: Tensor, logdet: Tensor) -> Tensor:
    r"""The negative log-likelihood of the encoded images, in nats per dimension.

    ``-log p(y) = 0.5 |z|^2 + (D / 2) log(2 pi) - logdet`` per sample, under a standard-normal
    prior on all of z (z_C and z_N alike), divided by D = C H W and averaged over the batch.

    Arguments:
        z: the latents, ``(B, ...)``.
        logdet: the flow's log-determinant per sample, ``(B,)``.
    """
    dims = z[0].numel()
    per_sample = 0.5 * z.pow(2).flatten(1).sum(dim=1) + 0.5 * dims * _LOG_2PI - logdet
    return (per_sample / dims).mean()


def bits_per_dim(nll: Tensor | float, dequantized: bool = False) -> float:
    """Converts an NLL in nats per dimension to bits per dimension, for logging.

    With ``dequantized``, the density is of images in [0, 1] whose 8-bit bins are 1/255
    wide, so log2(255) is added to report bits per 8-bit sub-pixel, as Glow does.
    """
    bits = float(nll) / math.log(2)
    return bits + math.log2(255) if dequantized else bits


def dequantize(y: Tensor, levels: int = 255, generator: torch.Generator | None = None) -> Tensor:
    """Adds centred uniform noise of one quantisation bin, U(-1/2, 1/2) / levels, to y.

    Needed for the NLL of images stored in 8 bits: the density of discrete data is unbounded.
    Noise synthesised on the fly in float is already continuous and needs none.
    """
    noise = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return y + (noise - 0.5) / levels


# The "psnr" reconstruction's floor on each image's mean squared error: 1e-4 is 40 dB, so an
# image denoised better than that (a nearly noise-free patch) weighs no more than one at 40 dB
# instead of without bound.
PSNR_LOSS_FLOOR = 1e-4


def reconstruction_loss(denoised: Tensor, clean: Tensor, kind: str = "l1") -> Tensor:
    """How far the denoised batch is from the clean one (not clamped: training sees the raw
    decode).

    ``"l1"`` (the paper's) is the mean absolute error over all elements and ``"l2"`` the mean
    squared error. ``"psnr"`` is minus the batch's mean PSNR in dB, ``mean_i 10 log10(MSE_i +
    1e-4)`` over its images i (peak 1): the measure denoisers are scored by, as a loss. Each
    image's gradient is that of its squared error divided by its MSE, so an image at sigma 15
    weighs about 3x one at sigma 50 (about 1.8x under L1, which divides by the error's size,
    and 1x under L2); blind training at uniform sigma then spends more of the network on the
    low noise levels where it trails BM3D the most. In dB, its gradient is some 100-300x
    L1's (measured on the bundled grey model, batches of 16 96x96 patches at sigma uniform in
    [0, 55]): ``lambda_rec = 0.005`` gives it L1's scale, which keeps the balance with the NLL
    term and the clip, and lets a fork of an L1 run keep its Adam moments.
    """
    error = denoised - clean
    if kind == "l1":
        return error.abs().mean()
    if kind == "l2":
        return error.pow(2).mean()
    if kind == "psnr":
        mse = error.pow(2).flatten(1).mean(dim=1)
        return 10 * torch.log10(mse + PSNR_LOSS_FLOOR).mean()
    raise ValueError(f"reconstruction: expected one of {', '.join(RECONSTRUCTIONS)}, got {kind!r}")


class FDNLoss(NamedTuple):
    """The total loss and its two terms, each a scalar tensor."""

    total: Tensor
    nll: Tensor
    reconstruction: Tensor


def fdn_loss(
    model: FDN,
    noisy: Tensor,
    clean: Tensor,
    lambda_nll: float = 0.1,
    lambda_rec: float = 1.0,
    dequantize_input: bool = False,
    generator: torch.Generator | None = None,
    reconstruction: str = "l1",
) -> FDNLoss:
    r"""``lambda_nll * NLL(noisy) + lambda_rec * L1(decode(disentangle(encode(noisy))), clean)``.

    One encode serves both terms, and gradients flow through the encoder from both (as in
    InvDN). The defaults, 0.1 and 1 on per-dimension terms, are the spec's (section 6.4).

    Arguments:
        model: the flow.
        noisy: noisy batch y, ``(B, C, H, W)`` in [0, 1] (H, W multiples of 2^num_blocks).
        clean: clean batch x of the same shape.
        lambda_nll: weight of the NLL, in nats per dimension.
        lambda_rec: weight of the L1.
        dequantize_input: add one bin of uniform noise to y first (for 8-bit stored inputs).
        generator: random generator of the dequantisation noise.
        reconstruction: the second term's measure, ``"l1"`` (the paper's), ``"l2"`` or
            ``"psnr"`` (:func:`reconstruction_loss`).
    """
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} differ")
    if dequantize_input:
        noisy = dequantize(noisy, generator=generator)
    z, logdet = model.encode(noisy)
    nll = nll_loss(z, logdet)
    rec = reconstruction_loss(model.decode(model.disentangle(z)), clean, reconstruction)
    return FDNLoss(lambda_nll * nll + lambda_rec * rec, nll, rec)
