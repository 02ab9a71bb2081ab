"""Noise synthesis: a new z_N under the image's own z_C, decoded (fdn.renoise, fdn renoise)."""

import copy
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import fdn
from fdn import FDN, save_model
from fdn.cli import main

from helpers import randomize


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(4, 3, 8, 8), scale=0.05)


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    return save_model(
        copy.deepcopy(model).float(), tmp_path_factory.mktemp("model") / "small.safetensors"
    )


@pytest.fixture
def image():
    return np.random.default_rng(0).uniform(0.2, 0.8, (13, 10, 3))  # H, W not multiples of 4


def test_temperature_zero_is_the_denoised_estimate(model, image):
    (renoised,) = fdn.renoise(image, model, temperature=0)
    y = torch.from_numpy(image).permute(2, 0, 1)[None]
    z, _ = model.encode(model.pad(y))
    z[:, model.config.clean_channels :] = 0
    decoded = model.decode(z)[0, :, :13, :10].permute(1, 2, 0).detach().numpy()
    assert renoised.dtype == np.float64 and renoised.shape == image.shape
    np.testing.assert_allclose(renoised, decoded, atol=1e-12)
    denoised = model.denoise(y)[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(renoised.clip(0, 1), denoised, atol=1e-12)


def test_seeds_and_samples(model, image):
    first = fdn.renoise(image, model, samples=3, seed=5)
    assert len(first) == 3
    again = fdn.renoise(image, model, samples=3, seed=5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Each sample is a new draw, and another seed gives other draws.
    assert not np.allclose(first[0], first[1])
    other = fdn.renoise(image, model, samples=1, seed=6)
    assert not np.allclose(first[0], other[0])
    # The first samples of a seed do not depend on how many are drawn.
    np.testing.assert_array_equal(fdn.renoise(image, model, seed=5)[0], first[0])


def test_temperature_scales_the_synthetic_noise(model, image):
    denoised = fdn.renoise(image, model, temperature=0)[0]
    small = fdn.renoise(image, model, temperature=0.001, seed=1)[0] - denoised
    large = fdn.renoise(image, model, temperature=0.002, seed=1)[0] - denoised
    np.testing.assert_allclose(large, 2 * small, rtol=1e-3, atol=1e-7)  # linear to first order


def test_uint8_in_uint8_out_and_bad_arguments(model):
    pixels = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    (out,) = fdn.renoise(pixels, model)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    with pytest.raises(ValueError, match="samples"):
        fdn.renoise(pixels, model, samples=0)
    with pytest.raises(ValueError, match="temperature"):
        fdn.renoise(pixels, model, temperature=-1)
    with pytest.raises(ValueError, match="1-channel"):
        fdn.renoise(pixels[:, :, 0], model)


def digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


def test_cli_writes_samples_and_leaves_the_input(tmp_path, model_file, capsys):
    source = tmp_path / "in" / "scene.png"
    source.parent.mkdir()
    pixels = np.random.default_rng(2).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(source)
    before = digests(source.parent)
    out = tmp_path / "out"
    argv = ["renoise", str(source), "-o", str(out), "--model", str(model_file)]
    assert main([*argv, "--samples", "3", "--seed", "4", "--temperature", "0.8"]) == 0
    assert digests(source.parent) == before
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"scene_renoise_{k}.png" for k in (1, 2, 3)]
    for name in written:
        with Image.open(out / name) as image:
            assert image.size == (23, 17) and image.mode == "RGB"
    assert "3 written" in capsys.readouterr().out


def test_cli_bad_file_is_one_line_and_fails(tmp_path, model_file, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    argv = ["renoise", str(bad), "-o", str(tmp_path / "out"), "--model", str(model_file)]
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("fdn: error:") and "broken.png" in line for line in lines)
    assert all(len(line) < 300 for line in lines)
    assert main(["renoise", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.png" in err


def test_cli_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["renoise", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--samples", "--temperature", "--seed", "--output"):
        assert option in text


def test_no_sample_overwrites_an_input_or_another_sample(tmp_path, model):
    # fdn denoise's output checks hold for every sample file, before anything is written.
    from fdn.batch import InputError, Job
    from fdn.synthesis import renoise_files

    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in ("a.png", "a_renoise_1.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    clash = [Job(tmp_path / "a.png", tmp_path / "a.png")]  # sample 1 is the other input
    with pytest.raises(InputError, match="would overwrite an input"):
        renoise_files([*clash, Job(tmp_path / "a_renoise_1.png", tmp_path / "b.png")], model)
    (tmp_path / "x").mkdir()
    twice = [Job(tmp_path / "a.png", tmp_path / "x" / "a.png")] * 2
    with pytest.raises(InputError, match="would be written here"):
        renoise_files(twice, model)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["a.png", "a_renoise_1.png"]
