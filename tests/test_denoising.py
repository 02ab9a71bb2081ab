import itertools

import numpy as np
import pytest
import torch

from fdn import FDN, denoise_image
from fdn.denoising import denoise_tensor, tile_spans

from helpers import mild_model, randomize


@pytest.fixture(scope="module")
def model():
    return mild_model()


@pytest.fixture(scope="module")
def grey_model():
    torch.manual_seed(1)
    return randomize(FDN(in_channels=1, hidden_channels=4, steps_per_block=1), shape=(4, 1, 8, 8))


@pytest.mark.parametrize("length, tile, overlap", [(1000, 256, 32), (250, 64, 32), (97, 40, 8)])
def test_tile_spans_cover_align_and_overlap(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(start % 4 == 0 for start, _ in spans)
    assert all(end - start <= tile + 3 for start, end in spans)
    for (_, previous_end), (start, _) in itertools.pairwise(spans):
        assert previous_end - start >= overlap


@pytest.mark.parametrize(
    "dtype, shape",
    [
        (np.uint8, (13, 17, 3)),
        (np.uint16, (13, 17, 3)),
        (np.float32, (13, 17, 3)),
        (np.uint8, (13, 17)),
        (np.uint8, (13, 17, 1)),
        (np.uint16, (9, 6, 4)),
        (np.uint8, (9, 6, 2)),
    ],
)
def test_same_shape_and_dtype_out(model, dtype, shape):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    else:
        image = rng.random(shape).astype(dtype)
    out = denoise_image(image, model)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert not np.array_equal(out, image)
    if shape[-1] in (2, 4) and len(shape) == 3:
        assert np.array_equal(out[..., -1], image[..., -1])  # alpha untouched


def test_uint8_result_is_the_rounded_float_result(model):
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    as_float = denoise_image(image.astype(np.float32) / 255, model)
    assert np.array_equal(denoise_image(image, model), np.rint(as_float * 255).astype(np.uint8))


def test_16_bit_output_uses_more_than_256_levels(model):
    smooth = np.linspace(0, 65535, 40 * 40 * 3).reshape(40, 40, 3).astype(np.uint16)
    assert len(np.unique(denoise_image(smooth, model))) > 256


def test_grey_image_through_colour_model_is_replicated(model):
    grey = np.random.default_rng(0).random((12, 12)).astype(np.float32)
    out = denoise_image(grey, model)
    rgb = denoise_image(np.repeat(grey[:, :, None], 3, axis=2), model)
    assert np.allclose(out, rgb.mean(axis=2), atol=1e-6)


def test_colour_image_through_grey_model_is_per_channel(grey_model):
    rgb = np.random.default_rng(0).random((12, 12, 3)).astype(np.float32)
    out = denoise_image(rgb, grey_model)
    for c in range(3):
        assert np.allclose(out[:, :, c], denoise_image(rgb[:, :, c], grey_model), atol=1e-6)


def test_bad_arrays_are_clear_errors(model):
    with pytest.raises(ValueError, match="C <= 4"):
        denoise_image(np.zeros((4, 4, 5), np.uint8), model)
    with pytest.raises(ValueError, match="unsupported dtype"):
        denoise_image(np.zeros((4, 4), np.int64), model)
    with pytest.raises(ValueError, match="NaN"):
        denoise_image(np.full((4, 4), np.nan, np.float32), model)


@pytest.mark.parametrize(
    ("value", "dtype"), [(1e300, np.float64), (1e38, np.float32), (255.0, np.float32)]
)
def test_finite_floats_far_outside_the_unit_range_are_refused(model, value, dtype):
    # 1e300 used to become inf in float32 and 1e38 to overflow the flow: all-NaN output.
    image = np.full((8, 8, 3), 0.5, dtype)
    image[0, 0, 0] = value
    with pytest.raises(ValueError, match="must lie in"):
        denoise_image(image, model)


def test_noisy_floats_a_little_outside_the_unit_range_are_denoised(model):
    image = np.random.default_rng(0).normal(0.5, 0.3, (8, 8, 3)).astype(np.float32)
    assert image.min() < 0 and image.max() > 1
    out = denoise_image(image, model)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_tiles_equal_whole_image_when_the_model_is_local():
    # At initialisation the couplings are the identity, so every output pixel depends on its
    # own 4x4 cell only: aligned tiles must reproduce the whole-image result exactly.
    model = FDN(hidden_channels=8, steps_per_block=2).train()
    model(torch.rand(4, 3, 16, 16))
    model.eval()
    image = torch.rand(3, 118, 134)
    assert torch.equal(
        denoise_tensor(image, model, tile=48, overlap=16), denoise_tensor(image, model)
    )


def test_tiled_denoise_matches_whole_image_within_bound(model):
    # The bound: with overlap 32 the feathered tiles stay within half an 8-bit level (2e-3)
    # of the whole-image result everywhere, and 1e-4 on average; measured 5e-4 / 1.5e-5 on
    # this model. Less overlap does measurably worse, which is what the overlap is for.
    image = torch.rand(3, 120, 136, generator=torch.Generator().manual_seed(0))
    whole = denoise_tensor(image, model)
    errors = {}
    for overlap in (0, 32):
        tiled = denoise_tensor(image, model, tile=72, overlap=overlap)
        errors[overlap] = (tiled - whole).abs()
    assert errors[32].max() < 2e-3 and errors[32].mean() < 1e-4
    assert errors[32].mean() < errors[0].mean() / 2


def test_large_images_are_tiled_automatically(model, monkeypatch):
    import fdn.denoising as denoising

    seen = []
    real = denoising.denoise_tensor
    monkeypatch.setattr(denoising, "DEFAULT_TILE", 72)
    monkeypatch.setattr(
        denoising,
        "denoise_tensor",
        lambda img, m, tile, *a: seen.append(tile) or real(img, m, tile, *a),
    )
    image = np.zeros((80, 80, 3), np.uint8)
    denoise_image(image, model, max_pixels=10_000)
    denoise_image(image, model, max_pixels=100)
    assert seen == [None, 72]


def test_bf16_precision_runs_in_bfloat16_and_stays_close(model):
    image = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    model = model.float()
    plain = denoise_image(image, model)
    half = denoise_image(image, model, precision="bf16")
    assert half.dtype == np.float32 and half.shape == image.shape
    difference = np.abs(half - plain)
    assert difference.max() > 0  # the convolutions really ran in bfloat16
    assert difference.mean() < 5e-3  # bfloat16's relative error is 2^-8, about 4e-3


def test_unknown_precision_is_a_clear_error(model):
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose from fp32, bf16"):
        denoise_image(np.zeros((8, 8, 3), np.float32), model, precision="fp8")
