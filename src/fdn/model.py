r"""FDN: the flow that encodes a noisy image, drops its noise channels and decodes the rest."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fdn.choices import check_strength
from fdn.layers import ActNorm, AffineCoupling, InvConv1x1, SequentialFlow, Squeeze
from fdn.layers.dense import DenseBlock, widened
from fdn.noise_level import MAD_TO_SIGMA
from fdn.runtime import channels_last

__all__ = [
    "FDN",
    "HINT_DRAWS",
    "HINT_SIGMA",
    "DownscaleFlowBlock",
    "FDNConfig",
    "StepOfFlow",
    "StrengthCurve",
    "hint_noise",
    "hint_sigma",
    "residual_sigma",
    "with_sigma_hint",
]

# Strength above 1 is a sigma hint: HINT_DRAWS seeded draws of white Gaussian noise, of
# standard deviation hint_sigma(strength) (HINT_SIGMA, 30 grey levels of 255, at strength 2),
# are added to the image, each is denoised at strength 1, and the outputs are averaged.
HINT_SIGMA = 30 / 255
HINT_DRAWS = 4


def hint_sigma(strength: float) -> float:
    """The standard deviation (in [0, 1] units) of the noise a ``strength`` above 1 adds:
    ``HINT_SIGMA * (strength - 1)``, 0 at strength 1 or below."""
    return HINT_SIGMA * max(0.0, strength - 1)


def hint_noise(shape: tuple[int, ...] | torch.Size, k: int) -> Tensor:
    """The k-th draw of the strength hint's noise: standard normal, float32, of ``shape``,
    from a CPU ``torch.Generator`` seeded with k, so that it depends on neither the device
    nor the model's dtype. Drawn for the whole image, so that tiles see the same noise.

    >>> torch.equal(hint_noise((1, 3, 4, 4), 2), hint_noise((1, 3, 4, 4), 2))
    True
    """
    generator = torch.Generator().manual_seed(k)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def with_sigma_hint(y: Tensor, strength: float, denoise: Callable[[Tensor], Tensor]) -> Tensor:
    """The mean of ``denoise`` (a strength-1 denoise, whole or tiled) over the
    :data:`HINT_DRAWS` draws of :func:`hint_noise` added to ``y`` at :func:`hint_sigma`."""
    sigma = hint_sigma(strength)
    draws = [
        denoise(y + sigma * hint_noise(y.shape, k).to(y.device, y.dtype))
        for k in range(HINT_DRAWS)
    ]
    return torch.stack(draws).mean(0)


def residual_sigma(noisy: Tensor, denoised: Tensor) -> Tensor:
    """Per image of a batch, the standard deviation (0-255) of the noise a denoise removed,
    estimated robustly: 1.4826 x the median absolute residual (the flow noise estimator's
    raw statistic, :mod:`fdn.noise_level`)."""
    residual = (noisy - denoised).flatten(1).abs()
    return 255 * MAD_TO_SIGMA * residual.median(dim=1).values


@dataclass(frozen=True)
class StrengthCurve:
    r"""The strength at which a model's default denoise works, by the noise it finds.

    Arguments:
        sigmas: increasing :func:`residual_sigma` values (0-255) at which it was fitted.
        strengths: the strength, in [0, 1], at each; linear in between, constant beyond.
    """

    sigmas: tuple[float, ...]
    strengths: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.strengths) or not self.sigmas:
            raise ValueError("a strength curve needs as many strengths as sigmas, at least one")
        if any(b <= a for a, b in itertools.pairwise(self.sigmas)):
            raise ValueError(f"a strength curve's sigmas must increase, got {self.sigmas}")
        if not all(0 <= s <= 1 for s in self.strengths):
            raise ValueError(f"a strength curve's strengths must be in [0, 1]: {self.strengths}")

    def at(self, sigma: Tensor) -> Tensor:
        """The strengths at ``sigma`` (a tensor of residual sigmas)."""
        values = sigma.detach().double().cpu().numpy()
        strengths = np.interp(values, self.sigmas, self.strengths)
        return torch.from_numpy(strengths).to(sigma.device, sigma.dtype)


@dataclass(frozen=True)
class FDNConfig:
    r"""Everything that fixes the architecture of an FDN; model files store it.

    Arguments:
        in_channels: image channels, 3 for colour and 1 for grey.
        num_blocks: DownScale Flow Blocks, each a Squeeze then ``steps_per_block`` steps.
        steps_per_block: Steps of Flow per block.
        hidden_channels: growth ``gc`` of the coupling's Dense Blocks.
        clean_fraction: the fraction of latent channels that hold the clean code z_C.
        clamp: bound alpha of the couplings' log-scale.
    """

    in_channels: int = 3
    num_blocks: int = 2
    steps_per_block: int = 8
    hidden_channels: int = 32
    clean_fraction: float = 0.75
    clamp: float = 1.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_blocks", "steps_per_block", "hidden_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.clamp, (int, float)) or not self.clamp > 0:
            raise ValueError(f"clamp must be a positive number, got {self.clamp!r}")
        if not isinstance(self.clean_fraction, (int, float)) or not 0 < self.clean_fraction < 1:
            raise ValueError(f"clean_fraction must be in (0, 1), got {self.clean_fraction!r}")
        clean = self.clean_fraction * self.latent_channels
        if abs(clean - round(clean)) > 1e-9:
            raise ValueError(
                f"clean_fraction {self.clean_fraction} of {self.latent_channels} latent "
                f"channels is not a whole number of channels"
            )

    @property
    def latent_channels(self) -> int:
        """Channels of z: each Squeeze multiplies them by 4."""
        return self.in_channels * 4**self.num_blocks

    @property
    def clean_channels(self) -> int:
        """Channels of z_C, the first ones of z; the remaining ones are z_N."""
        return round(self.clean_fraction * self.latent_channels)

    @property
    def num_parameters(self) -> int:
        """Trainable parameters, by the spec's formula (sections 3 and 5): per Step of Flow an
        ActNorm (2C), a 1x1 convolution (C^2) and three Dense Blocks. Model files are checked
        against it before a network is built from their config."""

        def dense_block(c_in: int, c_out: int) -> int:
            gc = self.hidden_channels
            return 9 * gc * (4 * c_in + 6 * gc) + 4 * gc + 9 * (c_in + 4 * gc) * c_out + c_out

        total, split = 0, self.in_channels
        for k in range(1, self.num_blocks + 1):
            channels = self.in_channels * 4**k
            coupling = dense_block(channels - split, split) + 2 * dense_block(
                split, channels - split
            )
            total += self.steps_per_block * (2 * channels + channels**2 + coupling)
        return total

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this for the Squeezes."""
        return 2**self.num_blocks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class StepOfFlow(SequentialFlow):
    r"""ActNorm, then an invertible 1x1 convolution, then an affine coupling.

    Arguments:
        channels: channels C of the input.
        split: channels of the coupling's first part (the image's channel count in FDN).
        hidden_channels: growth of the coupling's Dense Blocks.
        clamp: bound of the coupling's log-scale.
    """

    def __init__(
        self, channels: int, split: int, hidden_channels: int = 32, clamp: float = 1.0
    ) -> None:
        super().__init__(
            ActNorm(channels),
            InvConv1x1(channels),
            AffineCoupling(channels, split, hidden_channels, clamp),
        )

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Makes the step the identity map (log-det 0): ActNorm with scale 1 and bias 0,
        marked initialised so that no batch re-initialises it, W = I, and the coupling's
        subnets at 0 (their last convolution zeroed, as a new coupling starts)."""
        actnorm, conv, coupling = self.layers
        assert isinstance(actnorm, ActNorm) and isinstance(conv, InvConv1x1)
        assert isinstance(coupling, AffineCoupling)
        actnorm.log_scale.zero_()
        actnorm.bias.zero_()
        actnorm.mark_initialized()
        conv.weight.copy_(torch.eye(conv.weight.shape[0], dtype=conv.weight.dtype))
        for subnet in (coupling.g1, coupling.g2, coupling.g3):
            subnet.last.weight.zero_()
            if subnet.last.bias is not None:
                subnet.last.bias.zero_()


class DownscaleFlowBlock(SequentialFlow):
    r"""A checkerboard Squeeze (C -> 4C channels, half the size), then Steps of Flow.

    Arguments:
        in_channels: channels C before the Squeeze.
        steps: Steps of Flow after the Squeeze.
        split: channels of each coupling's first part.
        hidden_channels: growth of the couplings' Dense Blocks.
        clamp: bound of the couplings' log-scale.
    """

    def __init__(
        self,
        in_channels: int,
        steps: int,
        split: int,
        hidden_channels: int = 32,
        clamp: float = 1.0,
    ) -> None:
        channels = 4 * in_channels
        super().__init__(
            Squeeze(),
            *(StepOfFlow(channels, split, hidden_channels, clamp) for _ in range(steps)),
        )


class FDN(SequentialFlow):
    r"""The Flow-based image Denoising Network.

    ``encode`` maps a noisy image y to a latent z ~ N(0, I) of ``config.latent_channels``
    channels at 1 / 2^num_blocks of the size; ``disentangle`` zeroes the noise code z_N
    (the last channels); ``decode`` runs the exact inverse. ``denoise`` chains the three on
    an image of any size (at a ``strength`` that may scale z_N instead, or hint at more
    noise). The log-det of ``encode`` is the flow's, per sample, in nats.

    References:
        | Disentangling Noise from Images: A Flow-Based Image Denoising Neural Network
        | (Liu et al., Sensors 2022), https://doi.org/10.3390/s22249844

    Arguments:
        in_channels: image channels, 3 for colour and 1 for grey.
        num_blocks: DownScale Flow Blocks.
        steps_per_block: Steps of Flow per block.
        hidden_channels: growth of the couplings' Dense Blocks.
        clean_fraction: fraction of the latent channels that are z_C.
        clamp: bound of the couplings' log-scale.

    Example:
        >>> import torch
        >>> model = FDN(hidden_channels=4, steps_per_block=1).eval()
        >>> z, logdet = model.encode(torch.rand(1, 3, 8, 8))
        >>> z.shape
        torch.Size([1, 48, 2, 2])
        >>> model.denoise(torch.rand(1, 3, 7, 5)).shape
        torch.Size([1, 3, 7, 5])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_blocks: int = 2,
        steps_per_block: int = 8,
        hidden_channels: int = 32,
        clean_fraction: float = 0.75,
        clamp: float = 1.0,
    ) -> None:
        config = FDNConfig(
            in_channels, num_blocks, steps_per_block, hidden_channels, clean_fraction, clamp
        )
        blocks = (
            DownscaleFlowBlock(
                in_channels * 4**k, steps_per_block, in_channels, hidden_channels, clamp
            )
            for k in range(num_blocks)
        )
        super().__init__(*blocks)
        self.config = config
        # The strength a default denoise uses, by the noise it finds: (residual sigmas,
        # strengths), fitted on held-back training images (scripts/fit_strength.py) and set
        # by fdn.pretrained.load_pretrained for a bundled model that has one. None: strength 1.
        self.strength_curve: StrengthCurve | None = None

    @classmethod
    def from_config(cls, config: FDNConfig) -> FDN:
        return cls(**config.to_dict())

    def grow_from(
        self,
        state: typing.Mapping[str, Tensor],
        steps_per_block: int,
        hidden_channels: int | None = None,
    ) -> None:
        """Loads the weights of a smaller FDN (``state``, of ``steps_per_block`` Steps of Flow
        per block and Dense Blocks of growth ``hidden_channels``; None: this one's) so that
        this one computes exactly what it did, and training goes on from there with more
        capacity instead of starting over.

        Each block's added steps, its last ones, are the identity. Each Dense Block's added
        channels keep their new initial weights but read into nothing the old ones compute
        (:func:`fdn.layers.dense.widened`): only training makes them count.

        A state of another block count or split, or of more depth or width than this one,
        is a :class:`ValueError` naming the first weight that does not fit.
        """
        growth = self.config.hidden_channels if hidden_channels is None else hidden_channels
        if not 0 < steps_per_block <= self.config.steps_per_block:
            raise ValueError(
                f"can grow {self.config.steps_per_block} Steps of Flow per block from 1 to "
                f"{self.config.steps_per_block}, not from {steps_per_block}"
            )
        if not 0 < growth <= self.config.hidden_channels:
            raise ValueError(
                f"can widen Dense Blocks of growth {self.config.hidden_channels} from 1 to "
                f"{self.config.hidden_channels}, not from {growth}"
            )
        added = []
        for b, block in enumerate(self.layers):
            assert isinstance(block, DownscaleFlowBlock)
            for k, step in enumerate(block.layers):  # layers[0] is the Squeeze
                if k > steps_per_block:
                    assert isinstance(step, StepOfFlow)
                    step.reset_to_identity()
                    added.append(f"layers.{b}.layers.{k}.")
        ours = self.state_dict()
        kept = [name for name in ours if not name.startswith(tuple(added))]
        lacking = [name for name in kept if name not in state]
        if lacking:
            raise ValueError(f"{lacking[0]} is missing from the weights to grow from")
        self.load_state_dict(self.grown_state(state, growth, ours), strict=False)

    def grown_state(
        self,
        state: typing.Mapping[str, Tensor],
        hidden_channels: int,
        fresh: typing.Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """``state``'s tensors, of an FDN whose Dense Blocks have growth ``hidden_channels``,
        each laid into its place in this one (:func:`fdn.layers.dense.widened`), the added
        channels taken from ``fresh`` (a tensor of this network's shape for each name):
        this FDN's weights for :meth:`grow_from`, zeros for Adam's moments."""
        dense = {
            name + ".": typing.cast("torch.nn.Conv2d", module.convs[0]).in_channels
            for name, module in self.named_modules()
            if isinstance(module, DenseBlock)
        }
        grown = {}
        for name, tensor in state.items():
            misfit = ValueError(f"{name} {tuple(tensor.shape)} has no place in this network")
            if name not in fresh:
                raise misfit
            block = next((prefix for prefix in dense if name.startswith(prefix)), None)
            if block is None or hidden_channels == self.config.hidden_channels:
                if fresh[name].shape != tensor.shape:
                    raise misfit
                grown[name] = tensor
                continue
            try:
                fitted = tensor.to(fresh[name])
                grown[name] = widened(fresh[name], fitted, dense[block], hidden_channels)
            except ValueError:
                raise misfit from None
        return grown

    def _check_image(self, y: Tensor) -> None:
        if y.dim() != 4 or y.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a (B, {self.config.in_channels}, H, W) image batch, "
                f"got shape {tuple(y.shape)}"
            )

    def encode(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Maps a noisy batch y (H, W multiples of ``size_multiple``) to ``(z, logdet)``."""
        self._check_image(y)
        return self(y)

    def disentangle(self, z: Tensor, strength: float | Tensor = 1.0) -> Tensor:
        """Returns z_hat: z with its noise channels z_N set to 0 (paper eq. 4), or, at a
        ``strength`` below 1, scaled by ``1 - strength`` (strength 0 returns z). A tensor of
        B strengths applies one to each of the batch's B latents."""
        if isinstance(strength, Tensor):  # from a StrengthCurve, whose values lie in [0, 1]
            strengths = strength.to(z.device, z.dtype).reshape(-1)
        elif 0 <= strength <= 1:
            strengths = torch.full((1,), strength, dtype=z.dtype, device=z.device)
        else:
            raise ValueError(f"disentangle's strength must be in [0, 1], got {strength!r}")
        mask = (1 - strengths).reshape(-1, 1, 1, 1).expand(-1, z.shape[1], 1, 1).clone()
        mask[:, : self.config.clean_channels] = 1
        return z * mask

    def decode(self, z_hat: Tensor) -> Tensor:
        """The exact inverse of ``encode``."""
        return self.inverse(z_hat)[0]

    def denoise(self, y: Tensor, strength: float | None = None) -> Tensor:
        """Denoises a batch of any size: pad, encode, disentangle, decode, crop, clamp to [0, 1].

        ``strength``, in [0, 2], is how much noise to remove. Up to 1 it scales z_N by
        ``1 - strength`` instead of zeroing it: 0 returns y (clamped to [0, 1]), since the
        flow is exactly invertible, and 1 is the paper's denoise. Above 1 it is
        a sigma hint, for noise (a camera's, a JPEG's) that a model trained on AWGN mostly
        leaves behind: white Gaussian noise of standard deviation :func:`hint_sigma`
        (``30 / 255 * (strength - 1)``, so 30 grey levels at 2) is added to y and the
        strength-1 denoise is averaged over :data:`HINT_DRAWS` (4) draws, seeded 0 to 3
        (:func:`hint_noise`: the same on every device). The model then removes more,
        smoothing the residual grain, at 4x the cost. It is continuous at 1.

        None, the default, is 1 unless the model has a ``strength_curve`` (a bundled model
        fitted by ``scripts/fit_strength.py``): then each image's strength is the curve's at
        the noise the strength-1 denoise removed from it (:func:`residual_sigma`), which
        costs one more decode when the curve says less than 1 (``denoise_with_latent``).

        The bottom and right edges are reflect-padded to a multiple of ``size_multiple``
        (replicate-padded where the image is too small to reflect). In eval mode this takes
        the fast path, channels-last weights and input (:func:`fdn.runtime.channels_last`):
        about 0.65x the time on CPU, with outputs equal to the plain path's. What else was
        measured, and dropped, is in ``docs/performance.md``.
        """
        strength = check_strength(strength)
        if strength is not None and strength > 1:
            return with_sigma_hint(y, strength, lambda noisy: self.denoise(noisy, 1.0))
        return self.denoise_with_latent(y, strength)[0]

    def denoise_with_latent(
        self, y: Tensor, strength: float | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`denoise` at a strength in [0, 1] (or None, the model's default), with the
        ``(z, logdet)`` of the padded y that its one encode computed: y's likelihood
        (:mod:`fdn.likelihood`) at no extra cost."""
        self._check_image(y)
        height, width = y.shape[-2:]
        z, logdet = self.encode(channels_last(self, self.pad(y)))
        if strength is None and self.strength_curve is not None:
            x = self.decode(self.disentangle(z))[..., :height, :width].clamp(0, 1)
            strengths = self.strength_curve.at(residual_sigma(y, x))
            if bool((strengths < 1).any()):
                x = self.decode(self.disentangle(z, strengths))
        else:
            x = self.decode(self.disentangle(z, 1.0 if strength is None else strength))
        return x[..., :height, :width].clamp(0, 1), z, logdet

    def pad(self, y: Tensor) -> Tensor:
        """y with its bottom and right edges reflect-padded (replicate-padded where it is too
        small to reflect) to a multiple of ``size_multiple``."""
        height, width = y.shape[-2:]
        multiple = self.config.size_multiple
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            y = F.pad(y, (0, pad_w, 0, pad_h), mode=mode)
        return y
