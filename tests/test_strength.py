import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fdn
from fdn import denoise_image, save_model
from fdn.cli import build_parser, main
from fdn.denoising import denoise_tensor
from fdn.images import read_image
from fdn.model import StrengthCurve, hint_noise, residual_sigma

from helpers import mild_model


@pytest.fixture(scope="module")
def model():
    return mild_model()


@pytest.fixture(scope="module")
def image():
    """A float64 batch in [0, 1] whose size is not a multiple of 4, so padding is exercised."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 30, 27, generator=generator, dtype=torch.float64)


def test_strength_0_returns_the_input(model, image):
    assert (model.denoise(image, strength=0) - image).abs().max() < 1e-10


def test_strength_1_is_the_default_bit_for_bit(model, image):
    default = model.denoise(image)
    assert torch.equal(model.denoise(image, strength=1.0), default)
    # ... which is today's denoise: decode(disentangle(encode(y))), cropped and clamped, to
    # float64 rounding (by hand the convolutions are contiguous, in denoise channels-last:
    # some CPUs sum the two in another order, by an ulp).
    padded = torch.nn.functional.pad(image, (0, 1, 0, 2), mode="reflect")
    by_hand = model.decode(model.disentangle(model.encode(padded)[0]))[..., :30, :27]
    torch.testing.assert_close(by_hand.clamp(0, 1), default, rtol=0, atol=1e-12)


def test_strength_2_is_the_mean_of_four_seeded_noise_hints(model, image):
    by_hand = torch.zeros_like(image)
    for k in range(4):
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(k))
        by_hand += model.denoise(image + 30 / 255 * noise.double()) / 4
    assert torch.allclose(model.denoise(image, strength=2), by_hand, rtol=0, atol=1e-12)
    # Different draws, and the same on every call.
    assert not torch.equal(hint_noise(image.shape, 0), hint_noise(image.shape, 1))
    assert torch.equal(hint_noise(image.shape, 3), hint_noise(image.shape, 3))


def test_strength_above_1_draws_the_same_noise_in_any_dtype(model, image):
    # The noise is drawn in float32 on the CPU before it moves to the image's device and
    # dtype: a float32 model sees the float64 model's draws.
    single = copy.deepcopy(model).float().denoise(image.float(), strength=1.5).double()
    assert (single - model.denoise(image, strength=1.5)).abs().max() < 1e-4


def test_strength_above_1_is_continuous_at_1(model, image):
    once = model.denoise(image)
    assert (model.denoise(image, strength=1 + 1e-9) - once).abs().max() < 1e-7


def test_strength_scales_the_noise_latent(model):
    z = torch.randn(2, 48, 3, 3, dtype=torch.float64)
    scaled = model.disentangle(z, strength=0.25)
    assert torch.equal(scaled[:, :36], z[:, :36])
    assert torch.allclose(scaled[:, 36:], 0.75 * z[:, 36:])
    assert torch.equal(model.disentangle(z, strength=1.0), model.disentangle(z))


@pytest.mark.parametrize("strength", [-0.1, 2.01, math.nan, math.inf])
def test_strength_outside_0_2_is_refused(model, image, strength):
    with pytest.raises(ValueError, match=r"strength must be in \[0, 2\]"):
        model.denoise(image, strength=strength)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 2\]"):
        denoise_image(np.zeros((8, 8, 3), np.uint8), model, strength=strength)


def noisy_ramps(size: int, seed: int) -> torch.Tensor:
    """Three smooth colour ramps with AWGN of sigma 25, clipped: a (1, 3, size, size) batch."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0.2, 0.8, size), np.linspace(0, 0.2, size))
    clean = np.stack([ramp, ramp[::-1], 0.5 + 0 * ramp])
    return torch.from_numpy(np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1))[None]


def test_distance_from_the_input_grows_with_strength_on_the_bundled_model():
    bundled = fdn.load_model("fdn-color-blind").double()
    noisy = noisy_ramps(32, seed=0)
    distances = [
        (bundled.denoise(noisy, strength=s) - noisy).pow(2).mean().sqrt().item()
        for s in (0, 0.25, 0.5, 0.75, 1)
    ]
    assert distances[0] < 1e-6
    assert all(a < b for a, b in itertools.pairwise(distances)), distances


def high_pass(image: torch.Tensor, size: int = 3) -> float:
    """The standard deviation of the image minus its ``size`` x ``size`` box blur (the grain
    left)."""
    blurred = torch.nn.functional.avg_pool2d(image, size, stride=1)
    edge = size // 2
    return (image[..., edge:-edge, edge:-edge] - blurred).std().item()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_strength_above_1_smooths_more_than_1_on_the_bundled_model(seed):
    # On smooth ramps under AWGN (sigma 25) a hint leaves 2-4% less fine grain than strength
    # 1. Between 1.5 and 2 the grain is level here, within about 1% either way, and which is
    # lower turns with the seed and the release (the 30.391 and 30.400 colour releases each
    # had seeds of both signs), so that order is tested on real grain below.
    bundled = fdn.load_model("fdn-color-blind")
    noisy = noisy_ramps(96, seed=seed).float()
    grain = [high_pass(bundled.denoise(noisy, strength=s)) for s in (1, 1.5, 2)]
    assert grain[1] < 0.99 * grain[0] and grain[2] < 0.99 * grain[0], grain


def test_strength_above_1_smooths_real_grain_more_the_higher_it_is():
    # The model card's case: JPEG-compressed sensor noise, which a model trained on AWGN
    # mostly leaves at strength 1; each step of the hint takes more of it (the 30.400
    # release: 15.07, 14.05 and 13.30 at 1, 1.5 and 2 on this crop, 15.80 in the input;
    # RGB minus its 9x9 box blur, 0-255).
    skimage = pytest.importorskip("skimage")
    photo = Path(skimage.__file__).parent / "data" / "hubble_deep_field.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is not installed")
    crop = read_image(photo).pixels[400:496, 640:736]
    bundled = fdn.load_model("fdn-color-blind")

    def grain(pixels):
        return high_pass(torch.from_numpy(pixels.astype(np.float64)).permute(2, 0, 1)[None], 9)

    left = [grain(crop)] + [grain(denoise_image(crop, bundled, strength=s)) for s in (1, 1.5, 2)]
    assert all(b < 0.97 * a for a, b in itertools.pairwise(left)), left


@pytest.mark.parametrize("strength", [0.5, 1.5])
def test_tiled_strength_matches_the_whole_image(model, strength):
    # The bound of test_denoising's tiling test (overlap 32: within half an 8-bit level
    # everywhere, 1e-4 on average), which a strength must keep.
    # float32: tiling's error is far above float32's rounding, and float64 convolutions are slow.
    model = copy.deepcopy(model).float()
    image = torch.rand(3, 120, 136, generator=torch.Generator().manual_seed(0))
    whole = denoise_tensor(image, model, strength=strength)
    tiled = denoise_tensor(image, model, tile=96, overlap=32, strength=strength)
    error = (tiled - whole).abs()
    assert error.max() < 2e-3 and error.mean() < 1e-4


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    # A float32 copy: .float() in place would change the module's float64 model for the
    # tests after this one.
    small = copy.deepcopy(model).float()
    return save_model(small, tmp_path_factory.mktemp("model") / "small.safetensors")


def test_cli_strength_changes_the_output(tmp_path, model_file):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "noisy.png")
    outputs = {}
    for name, extra in (("default", []), ("half", ["--strength", "0.5"])):
        argv = ["denoise", str(tmp_path / "noisy.png"), "-o", str(tmp_path / name)]
        assert main([*argv, "--model", str(model_file), "--quiet", *extra]) == 0
        outputs[name] = np.asarray(Image.open(tmp_path / name / "noisy.png"))
    assert not np.array_equal(outputs["half"], outputs["default"])
    # Half-way: closer to the input than the full estimate is.
    distance = {k: np.abs(v.astype(int) - pixels).mean() for k, v in outputs.items()}
    assert distance["half"] < distance["default"]


def test_strength_default_and_help(capsys):
    # The default is the model's own (None): 1, or its fitted strength curve's.
    assert build_parser().parse_args(["denoise", "x.png", "-o", "out"]).strength is None
    assert (
        build_parser().parse_args(["denoise", "x", "-o", "o", "--strength", "auto"]).strength
        is None
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["denoise", "--help"])
    assert "4 denoises" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("value", ["3", "nan", "-0.5", "inf", "strong"])
def test_cli_strength_out_of_range_is_a_one_line_error(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["denoise", "x.png", "-o", str(tmp_path / "out"), "--strength", value])
    assert exited.value.code != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "argument --strength" in errors[0], errors
    assert not (tmp_path / "out").exists()


# The strength curve: a model's default strength by the noise it finds (scripts/fit_strength.py)


def with_curve(model, sigmas, strengths):
    curved = copy.deepcopy(model)
    curved.strength_curve = StrengthCurve(tuple(sigmas), tuple(strengths))
    return curved


def test_without_a_curve_the_default_is_strength_1(model, image):
    assert model.strength_curve is None
    assert torch.equal(model.denoise(image), model.denoise(image, 1.0))


def test_the_default_strength_is_the_curves_at_the_residual_sigma(model, image):
    found = residual_sigma(image, model.denoise(image, 1.0)).item()
    curved = with_curve(model, (found - 1, found + 1), (0.4, 0.6))  # 0.5 at `found`
    assert torch.allclose(curved.denoise(image), model.denoise(image, 0.5), rtol=0, atol=1e-12)
    # A strength given is used as given; the curve's at 1 everywhere changes nothing.
    assert torch.equal(curved.denoise(image, 0.8), model.denoise(image, 0.8))
    assert torch.equal(with_curve(model, (0, 50), (1, 1)).denoise(image), model.denoise(image))


def test_each_image_of_a_batch_gets_its_own_strength(model):
    generator = torch.Generator().manual_seed(1)
    clean = 0.5 + 0.1 * torch.rand(1, 3, 24, 24, generator=generator, dtype=torch.float64)
    light = clean + 5 / 255 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    heavy = clean + 50 / 255 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    found = [residual_sigma(y, model.denoise(y, 1.0)).item() for y in (light, heavy)]
    assert found[0] < found[1]
    curved = with_curve(model, tuple(found), (0.3, 1.0))
    batch = curved.denoise(torch.cat([light, heavy]))
    assert torch.allclose(batch[:1], model.denoise(light, 0.3), rtol=0, atol=1e-12)
    assert torch.allclose(batch[1:], model.denoise(heavy, 1.0), rtol=0, atol=1e-12)


def test_a_sigma_hint_denoises_at_strength_1_whatever_the_curve(model, image):
    curved = with_curve(model, (0, 100), (0.2, 0.2))
    assert torch.equal(curved.denoise(image, 1.5), model.denoise(image, 1.5))
    whole = denoise_tensor(image[0], curved, tile=16, overlap=4, strength=1.5)
    assert torch.equal(whole, denoise_tensor(image[0], model, tile=16, overlap=4, strength=1.5))


def test_the_image_functions_use_the_models_default(model):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 18, 3), dtype=np.uint8)
    curved = with_curve(model, (0, 300), (0.5, 0.5))
    assert np.array_equal(
        denoise_image(pixels, curved), denoise_image(pixels, model, strength=0.5)
    )
    assert np.array_equal(denoise_image(pixels, model), denoise_image(pixels, model, strength=1))


@pytest.mark.parametrize(
    ("sigmas", "strengths", "match"),
    [((), (), "at least one"), ((5, 5), (1, 1), "increase"), ((5, 10), (1, 1.2), r"\[0, 1\]")],
)
def test_a_bad_strength_curve_is_refused(sigmas, strengths, match):
    with pytest.raises(ValueError, match=match):
        StrengthCurve(sigmas, strengths)


def test_a_bundled_model_gets_its_curve_from_models_json(tmp_path):
    import json
    import shutil
    from importlib import resources

    from fdn.pretrained import load_pretrained, model_record

    weights = resources.files("fdn") / "weights"
    record = dict(model_record("fdn-color-blind"))
    shutil.copy(str(weights / record["file"]), tmp_path / record["file"])
    record["strength_curve"] = {"sigmas": [2.0, 20.0], "strengths": [0.5, 1.0]}
    (tmp_path / "models.json").write_text(json.dumps({"fdn-color-blind": record}))
    model = load_pretrained("fdn-color-blind", folder=tmp_path)
    assert model.strength_curve == StrengthCurve((2.0, 20.0), (0.5, 1.0))
    # A model file loaded by path has none: its default is strength 1.
    assert fdn.load_model(tmp_path / record["file"]).strength_curve is None
