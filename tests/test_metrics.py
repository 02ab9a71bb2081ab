import math

import numpy as np
import pytest
import torch

from fdn.metrics import paired_difference, psnr, quantize, ssim

metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is in the test extra")


def as_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """The 8-bit image that the declared convention compares: (H, W, C) uint8."""
    return quantize(image).to(torch.uint8).permute(1, 2, 0).numpy()


def noisy_pair(shape, seed=0):
    """A smooth clean image and a noisy version that leaves [0, 1], as denoisers may."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.1, 0.9, shape[-1]).expand(shape)
    clean = (ramp + 0.05 * torch.rand(shape, generator=generator)).clamp(0, 1)
    denoised = clean + 0.15 * torch.randn(shape, generator=generator)
    return denoised, clean


SHAPES = [(1, 1, 11, 11), (2, 1, 17, 23), (2, 3, 32, 19), (1, 3, 40, 40)]


@pytest.mark.parametrize("shape", SHAPES)
def test_psnr_matches_skimage_on_8_bit_images(shape):
    denoised, clean = noisy_pair(shape)
    ours = psnr(denoised, clean)
    assert ours.shape == (shape[0],) and ours.dtype == torch.float64
    for k in range(shape[0]):
        reference = metrics.peak_signal_noise_ratio(
            as_uint8_hwc(clean[k]), as_uint8_hwc(denoised[k]), data_range=255
        )
        assert ours[k].item() == pytest.approx(reference, abs=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_matches_skimage_gaussian_ssim(shape):
    denoised, clean = noisy_pair(shape, seed=1)
    ours = ssim(denoised, clean)
    assert ours.shape == (shape[0],)
    for k in range(shape[0]):
        reference = metrics.structural_similarity(
            as_uint8_hwc(denoised[k]).astype(np.float64),
            as_uint8_hwc(clean[k]).astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        assert ours[k].item() == pytest.approx(reference, abs=1e-10)


def test_metrics_see_only_the_clamped_8_bit_image():
    denoised, clean = noisy_pair((2, 3, 16, 16))
    rounded = quantize(denoised) / 255
    assert rounded.min() >= 0 and rounded.max() <= 1
    assert torch.equal(psnr(denoised, clean), psnr(rounded, clean))
    assert torch.equal(ssim(denoised, clean), ssim(rounded, clean))
    # A change smaller than half a grey level does not move either metric.
    nudged = rounded + 0.4 / 255
    assert torch.equal(psnr(nudged, clean), psnr(rounded, clean))


def test_psnr_of_one_grey_level_everywhere():
    clean = torch.full((1, 3, 12, 12), 100 / 255)
    assert psnr(clean + 1 / 255, clean).item() == pytest.approx(20 * math.log10(255))
    assert psnr(clean, clean).item() == math.inf


def test_ssim_is_one_for_identical_and_symmetric_otherwise():
    denoised, clean = noisy_pair((2, 3, 20, 20))
    assert torch.allclose(ssim(clean, clean), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ssim(denoised, clean), ssim(clean, denoised))
    assert (ssim(denoised, clean) < 1).all()


def test_batch_scores_are_per_image():
    denoised, clean = noisy_pair((3, 1, 16, 16))
    for metric in (psnr, ssim):
        whole = metric(denoised, clean)
        single = torch.cat([metric(denoised[k : k + 1], clean[k : k + 1]) for k in range(3)])
        assert torch.allclose(whole, single)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30))


def test_a_paired_difference_has_its_standard_error_over_the_images():
    # Differences 0, 1, 2, 3: mean 1.5, sample standard deviation sqrt(5/3), over sqrt(4).
    difference = paired_difference([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert difference.mean == 1.5
    assert difference.standard_error == pytest.approx((5 / 3) ** 0.5 / 2)
    assert (difference.better, difference.count) == (3, 4)
    # Paired: a gain the same on every image is certain however far apart the images are.
    assert paired_difference([20.0, 30.0], [19.0, 29.0]).standard_error == 0.0
    assert math.isnan(paired_difference([20.0], [19.0]).standard_error)
    # A tie is not "better".
    assert paired_difference([20.0, 21.0], [20.0, 20.5]).better == 1


def test_a_paired_difference_needs_a_baseline_per_score():
    with pytest.raises(ValueError, match="3 scores against 2 baselines"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
