import hashlib

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image

from fdn import FDN, denoise_image, load_model, save_model
from fdn.cli import main
from fdn.images import read_image

from helpers import randomize


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(4, 3, 8, 8), scale=0.02)
    return save_model(model.float(), tmp_path_factory.mktemp("model") / "small.safetensors")


def smooth(height, width, channels, top):
    """A gradient with many levels, so that 16-bit outputs can show more than 256 of them."""
    ramp = np.linspace(0, 1, height * width * channels).reshape(height, width, channels)
    return np.rint(ramp * top).astype(np.uint16 if top > 255 else np.uint8).squeeze()


def make_inputs(folder):
    folder.mkdir()
    Image.fromarray(smooth(37, 51, 3, 255)).save(folder / "rgb.png")
    rgba = smooth(29, 43, 4, 255)
    rgba[..., 3] = np.random.default_rng(0).integers(0, 256, rgba.shape[:2])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(smooth(33, 47, 1, 65535)).save(folder / "grey16.png")
    writer = png.Writer(45, 31, greyscale=False, bitdepth=16)
    with open(folder / "rgb16.png", "wb") as stream:
        writer.write(stream, smooth(31, 45, 3, 65535).reshape(31, -1))
    tifffile.imwrite(folder / "rgb16.tif", smooth(27, 41, 3, 65535), photometric="rgb")
    Image.fromarray(smooth(35, 49, 1, 255)).save(folder / "grey.jpg", quality=95)
    Image.fromarray(smooth(21, 39, 3, 255)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        folder / "palette.png"
    )
    (folder / "sub").mkdir()
    Image.fromarray(smooth(18, 22, 3, 255)).save(folder / "sub" / "nested.bmp")
    return folder


def digests(folder):
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_every_kind_of_image_comes_back_in_kind(tmp_path, model_file, capsys):
    inputs = make_inputs(tmp_path / "in")
    before = digests(inputs)
    out = tmp_path / "out"
    assert main(["denoise", str(inputs), "-o", str(out), "--model", str(model_file)]) == 0
    assert "8 denoised, 0 failed" in capsys.readouterr().out
    assert digests(inputs) == before
    expected_modes = {
        "rgb.png": "RGB",
        "rgba.png": "RGBA",
        "grey16.png": "L;16",
        "rgb16.png": "RGB;16",
        "rgb16.tif": "RGB;16",
        "grey.jpg": "L",
        "palette.png": "P",
        "sub/nested.bmp": "RGB",
    }
    for name, mode in expected_modes.items():
        source, result = read_image(inputs / name), read_image(out / name)
        assert result.mode == mode == source.mode, name
        assert result.pixels.shape == source.pixels.shape, name
        assert result.pixels.dtype == source.pixels.dtype, name
        assert not np.array_equal(result.pixels, source.pixels), name
        if source.bit_depth == 16:
            assert len(np.unique(result.pixels)) > 256, name
    assert np.array_equal(
        read_image(out / "rgba.png").alpha, read_image(inputs / "rgba.png").alpha
    )
    with Image.open(out / "grey.jpg") as jpeg, Image.open(out / "rgb16.tif") as tiff:
        assert jpeg.format == "JPEG" and tiff.format == "TIFF"


def test_files_and_globs_keep_their_names(tmp_path, model_file):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = [str(inputs / "rgb.png"), str(inputs / "*.jpg"), "-o", str(out)]
    assert main(["denoise", *args, "--model", str(model_file), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grey.jpg", "rgb.png"]


def test_tiling_flags(tmp_path, model_file):
    inputs = make_inputs(tmp_path / "in")
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    source = str(inputs / "rgb.png")
    assert main(["denoise", source, "-o", str(whole), "--model", str(model_file)]) == 0
    flags = ["--tile", "24", "--tile-overlap", "8", "--threads", "1", "--device", "cpu"]
    assert main(["denoise", source, "-o", str(tiled), "--model", str(model_file), *flags]) == 0
    difference = read_image(whole / "rgb.png").pixels.astype(int) - read_image(
        tiled / "rgb.png"
    ).pixels.astype(int)
    assert np.abs(difference).max() <= 2


def test_a_bad_file_in_a_folder_is_skipped_and_reported(tmp_path, model_file, capsys):
    inputs = make_inputs(tmp_path / "in")
    (inputs / "text.png").write_text("not a picture")
    (inputs / "empty.jpg").write_bytes(b"")
    good = (inputs / "rgb.png").read_bytes()
    (inputs / "truncated.png").write_bytes(good[: len(good) // 2])
    before = digests(inputs)
    out = tmp_path / "out"
    assert main(["denoise", str(inputs), "-o", str(out), "--model", str(model_file)]) == 1
    err = capsys.readouterr().err
    assert "8 denoised, 3 failed" in err
    for name, reason in [
        ("text.png", "not an image"),
        ("empty.jpg", "empty file"),
        ("truncated.png", "corrupt or truncated"),
    ]:
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and reason in lines[0] and lines[0].startswith("fdn: error: ")
        assert not (out / name).exists()
    assert "Traceback" not in err
    assert digests(inputs) == before
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: [str(d / "missing.png")], "no such file or folder"),
        (lambda d: [str(d / "emptydir")], "no images in this folder"),
        (lambda d: [str(d / "*.nothing")], "no images match"),
    ],
)
def test_unusable_inputs_are_one_line_errors(tmp_path, model_file, capsys, setup, message):
    (tmp_path / "emptydir").mkdir()
    argv = ["denoise", *setup(tmp_path), "-o", str(tmp_path / "out"), "--model", str(model_file)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("fdn: error: ") and message in err and err.count("\n") == 1


def test_output_onto_an_input_is_refused(tmp_path, model_file, capsys):
    inputs = make_inputs(tmp_path / "in")
    before = digests(inputs)
    assert (
        main(["denoise", str(inputs / "rgb.png"), "-o", str(inputs), "--model", str(model_file)])
        == 1
    )
    assert "would overwrite an input" in capsys.readouterr().err
    assert digests(inputs) == before


def test_rerun_into_a_folder_inside_the_input_does_not_eat_its_outputs(tmp_path, model_file):
    inputs = make_inputs(tmp_path / "in")
    out = inputs / "denoised"
    for _ in range(2):
        assert (
            main(["denoise", str(inputs), "-o", str(out), "--model", str(model_file), "--quiet"])
            == 0
        )
    assert not (out / "denoised").exists()


def test_bad_model_and_flags(tmp_path, model_file, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"garbage" * 10)
    assert main(["denoise", str(image), "-o", str(tmp_path / "o"), "--model", str(bogus)]) == 1
    err = capsys.readouterr().err
    assert str(bogus) in err and err.count("\n") == 1
    assert main(["denoise", str(image), "-o", str(tmp_path / "o"), "--model", "no-such"]) == 1
    assert "neither a file nor a bundled model" in capsys.readouterr().err
    argv = ["denoise", str(image), "-o", str(tmp_path / "o"), "--model", str(model_file)]
    assert main([*argv, "--tile", "20", "--tile-overlap", "16"]) == 1
    assert "--tile 20 must be at least" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--tile", "-3"])
    assert exited.value.code == 2


def test_ensemble_flag(tmp_path, model_file):
    inputs = make_inputs(tmp_path / "in")
    plain, ensembled = tmp_path / "plain", tmp_path / "ens"
    source = str(inputs / "rgb.png")
    assert main(["denoise", source, "-o", str(plain), "--model", str(model_file)]) == 0
    argv = ["denoise", source, "-o", str(ensembled), "--model", str(model_file), "--ensemble"]
    assert main(argv) == 0
    a, b = read_image(plain / "rgb.png").pixels, read_image(ensembled / "rgb.png").pixels
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_ensemble_size_gives_the_smaller_ensemble(tmp_path, model_file):
    inputs = make_inputs(tmp_path / "in")
    source = str(inputs / "rgb.png")
    model = load_model(model_file)
    pixels = read_image(inputs / "rgb.png").pixels
    for size in (2, 4):
        out = tmp_path / f"x{size}"
        argv = ["denoise", source, "-o", str(out), "--model", str(model_file)]
        assert main([*argv, "--ensemble-size", str(size)]) == 0
        got = read_image(out / "rgb.png").pixels
        assert np.array_equal(got, denoise_image(pixels, model, ensemble=size))
        assert not np.array_equal(got, denoise_image(pixels, model, ensemble=8))


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ensemble-size", "3"], "invalid choice: 3"),
        (["--ensemble-size", "x4"], "invalid int value"),
        (["--ensemble", "--ensemble-size", "4"], "not allowed with argument --ensemble"),
    ],
)
def test_ensemble_size_errors(tmp_path, model_file, capsys, options, message):
    inputs = make_inputs(tmp_path / "in")
    argv = ["denoise", str(inputs / "rgb.png"), "-o", str(tmp_path / "out"), *options]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--model", str(model_file)])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_precision_flag(tmp_path, model_file, capsys):
    inputs = make_inputs(tmp_path / "in")
    source = str(inputs / "rgb16.png")
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        argv = ["denoise", source, "-o", str(out), "--model", str(model_file)]
        assert main([*argv, "--precision", precision]) == 0
        outputs[precision] = read_image(out / "rgb16.png").pixels.astype(np.int64)
    difference = np.abs(outputs["bf16"] - outputs["fp32"])
    assert difference.max() > 0 and difference.mean() < 0.005 * 65535
    argv = ["denoise", source, "-o", str(tmp_path / "x"), "--model", str(model_file)]
    with pytest.raises(SystemExit):
        main([*argv, "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
