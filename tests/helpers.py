"""Test helpers: randomised flows in float64 and a brute-force log-determinant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from fdn.layers import ActNorm


def randomize(
    module: nn.Module, seed: int = 0, shape: tuple[int, ...] | None = None, scale: float = 0.1
) -> nn.Module:
    """Puts ``module`` in float64 with no parameter at its initial value.

    ActNorms are first initialised on a data batch of ``shape`` (in training mode), then every
    parameter is perturbed, the zero-initialised last convolutions of the couplings included,
    so that no layer is the identity.
    """
    generator = torch.Generator().manual_seed(seed)
    module.double()
    if shape is not None:
        module.train()
        with torch.no_grad():
            module(torch.rand(shape, generator=generator, dtype=torch.float64))
    with torch.no_grad():
        for parameter in module.parameters():
            # Conv kernels get noise scaled by their fan-in, so that 16 stacked couplings
            # stay well-conditioned; everything else (biases, ActNorm, 1x1 weights) `scale`.
            fan_in = parameter[0].numel() if parameter.dim() == 4 else 1
            noise = torch.randn(parameter.shape, generator=generator).double()
            parameter.add_(scale / fan_in**0.5 * noise)
    for layer in module.modules():
        if isinstance(layer, ActNorm):
            assert bool(layer.initialized) or shape is None
    return module.eval()


def brute_force_logdet(function, x: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` of ``function`` at a single input ``x`` from the autograd Jacobian."""
    jacobian = torch.autograd.functional.jacobian(lambda t: function(t)[0].flatten(), x)
    return torch.linalg.slogdet(jacobian.reshape(x.numel(), x.numel())).logabsdet


def make_images(root, counts=(("train", 6), ("val", 2)), size=(40, 36), seed=0):
    """Writes small smooth-plus-noise RGB PNGs into ``root/SPLIT/imgN.png``; returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    for split, count in counts:
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.add.outer(np.arange(height), np.arange(width))[:, :, None] * [2, 3, 1]
            noise = rng.integers(0, 40, (height, width, 3))
            image = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"img{i}.png")
    return root


def has_channels_last_weights(module: nn.Module) -> bool:
    """Whether some convolution kernel of ``module`` is laid out channels-last (NHWC)."""
    return any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in module.parameters()
    )


def mild_model(channels: int = 3, seed: int = 0):
    """A small FDN with mild random weights: it changes an image by ~0.12 on average, as a
    denoiser would (test_denoising, test_strength)."""
    from fdn import FDN

    torch.manual_seed(seed)
    return randomize(
        FDN(in_channels=channels, hidden_channels=8, steps_per_block=2),
        shape=(4, channels, 16, 16),
        scale=0.02,
    )


def load_script(name: str, folder: str = "scripts"):
    """The module of ``scripts/NAME.py``, or of ``FOLDER/NAME.py`` (``benchmarks``): the
    maintainers' scripts are not in the package."""
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records_from(monkeypatch, table: dict) -> None:
    """Makes the bundled models' records those of ``table`` (a models.json as a dict)."""
    from fdn import pretrained

    monkeypatch.setattr(pretrained, "model_record", lambda name: table[name])
