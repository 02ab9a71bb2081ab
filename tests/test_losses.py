import math

import pytest
import torch

from fdn import FDN
from fdn.config import _CHOICES
from fdn.losses import (
    PSNR_LOSS_FLOOR,
    bits_per_dim,
    dequantize,
    fdn_loss,
    nll_loss,
    reconstruction_loss,
)

from helpers import randomize


def test_nll_is_gaussian_negative_log_likelihood_per_dimension():
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    logdet = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    expected = (-(log_prior + logdet) / 16).mean()
    assert torch.allclose(nll_loss(z, logdet), expected)


def test_nll_of_standard_normal_data_through_identity_is_its_entropy():
    z = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    entropy = 0.5 * math.log(2 * math.pi * math.e)
    assert nll_loss(z, torch.zeros(64)).item() == pytest.approx(entropy, abs=5e-3)


def test_bits_per_dim():
    assert bits_per_dim(math.log(2)) == pytest.approx(1.0)
    assert bits_per_dim(0.0, dequantized=True) == pytest.approx(math.log2(255))


def test_dequantize_adds_centred_noise_within_one_bin():
    y = torch.full((2, 3, 64, 64), 128 / 255)
    noisy = dequantize(y, generator=torch.Generator().manual_seed(0))
    offset = (noisy - y) * 255
    assert offset.abs().max() <= 0.5 and offset.abs().max() > 0.45
    assert abs(offset.mean().item()) < 0.01


def test_reconstruction_loss_is_mean_absolute_error():
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert reconstruction_loss(a, torch.zeros(2, 2)).item() == pytest.approx(1.5)


def test_reconstruction_loss_l2_is_mean_squared_error():
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert reconstruction_loss(a, torch.zeros(2, 2), "l2").item() == pytest.approx(3.5)


def test_psnr_loss_is_minus_the_mean_psnr_of_the_images():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 1, 16, 16, generator=generator, dtype=torch.float64)
    # Three images at three noise levels: the loss averages their PSNRs, not their errors.
    scales = torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64).view(3, 1, 1, 1)
    noisy = clean + scales * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    loss = reconstruction_loss(noisy, clean, "psnr")
    mse = (noisy - clean).pow(2).flatten(1).mean(1)
    expected = (
        -sum(-10 * math.log10(float(((noisy[i] - clean[i]) ** 2).mean())) for i in range(3)) / 3
    )
    # The floor moves each term by 10 log10(1 + 1e-4 / MSE_i): here at most ~4.5 dB / 3.
    floored = float((10 * torch.log10(1 + PSNR_LOSS_FLOOR / mse)).mean())
    assert loss.item() == pytest.approx(expected + floored, abs=1e-9)
    assert loss.item() != pytest.approx(10 * math.log10(mse.mean().item()), abs=0.1)


def test_psnr_loss_weighs_each_image_by_its_own_error():
    # d(10 log10(MSE_i + floor)) / d(error) is the squared error's gradient over MSE_i + floor:
    # an image with a 4x smaller error pulls 4x harder per pixel, as PSNR counts it.
    error = torch.tensor([0.1, 0.4], dtype=torch.float64).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    error = error.clone().requires_grad_(True)
    reconstruction_loss(error, torch.zeros_like(error), "psnr").backward()
    grad = error.grad.flatten(1)[:, 0]
    ratio = (grad[0] / grad[1]).item()
    assert ratio == pytest.approx((0.16 + PSNR_LOSS_FLOOR) / (0.01 + PSNR_LOSS_FLOOR) / 4)


def test_every_configurable_reconstruction_is_a_loss():
    # The config accepts fdn.choices.RECONSTRUCTIONS; each must be a loss here, and anything
    # else is an error that lists them.
    for kind in _CHOICES[("optim", "reconstruction")]:
        assert torch.isfinite(reconstruction_loss(torch.rand(2, 3), torch.rand(2, 3), kind))
    with pytest.raises(ValueError, match="l1, l2, psnr"):
        reconstruction_loss(torch.zeros(1, 1), torch.zeros(1, 1), "l3")


def test_fdn_loss_combines_terms_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=4, steps_per_block=2), shape=(4, 3, 8, 8)).float()
    model.train()
    clean = torch.rand(2, 3, 8, 8)
    noisy = clean + 0.1 * torch.randn_like(clean)
    loss = fdn_loss(model, noisy, clean, lambda_nll=0.3, lambda_rec=2.0)
    assert torch.allclose(loss.total, 0.3 * loss.nll + 2.0 * loss.reconstruction)
    z, logdet = model.encode(noisy)
    assert torch.allclose(loss.nll, nll_loss(z, logdet))
    decoded = model.decode(model.disentangle(z))
    assert torch.allclose(loss.reconstruction, (decoded - clean).abs().mean())
    loss.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    psnr_loss = fdn_loss(model, noisy, clean, 0.3, 2.0, reconstruction="psnr")
    assert torch.allclose(psnr_loss.nll, loss.nll)
    assert torch.allclose(psnr_loss.reconstruction, reconstruction_loss(decoded, clean, "psnr"))


def test_fdn_loss_dequantises_only_when_asked():
    model = FDN(hidden_channels=4, steps_per_block=1).eval()
    y = torch.rand(1, 3, 8, 8)
    plain = fdn_loss(model, y, y)
    assert plain.nll == fdn_loss(model, y, y).nll
    generator = torch.Generator().manual_seed(0)
    assert fdn_loss(model, y, y, dequantize_input=True, generator=generator).nll != plain.nll


def test_fdn_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        fdn_loss(
            FDN(hidden_channels=4, steps_per_block=1),
            torch.rand(1, 3, 8, 8),
            torch.rand(1, 3, 4, 4),
        )
