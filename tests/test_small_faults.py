"""Small defects found by a fault campaign: each test failed before its fix."""

import importlib.util

import numpy as np
import pytest
import tifffile
from PIL import Image

from fdn.cli import main
from fdn.images import ImageFileError, read_image


@pytest.mark.parametrize(
    ("dtype", "shape", "bits"),
    [(np.float32, (8, 8, 3), 32), (np.float64, (8, 8), 64), (np.float16, (8, 8, 3), 16)],
)
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_floating_point_tiff_is_named_not_called_corrupt(tmp_path, dtype, shape, bits, byteorder):
    # Pillow has no mode for these, so it cannot identify them at all.
    path = tmp_path / "float.tif"
    array = np.random.default_rng(0).random(shape).astype(dtype)
    photometric = "rgb" if array.ndim == 3 else "minisblack"
    tifffile.imwrite(path, array, photometric=photometric, byteorder=byteorder)
    with pytest.raises(ImageFileError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {bits}-bit floating-point TIFF is not supported")
    assert "fdn.denoise_image" in message and "corrupt" not in message


def test_floating_point_bigtiff_is_named(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.float32), photometric="rgb", bigtiff=True)
    with pytest.raises(ImageFileError, match="32-bit floating-point TIFF"):
        read_image(path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the same damaged IFD
def test_damaged_tiff_header_is_still_called_corrupt(tmp_path):
    path = tmp_path / "bad.tif"
    # A BigTIFF whose first IFD claims 2**64 - 1 entries.
    path.write_bytes(b"II+\x00\x08\x00\x00\x00" + (16).to_bytes(8, "little") + b"\xff" * 8)
    with pytest.raises(ImageFileError, match="not an image file, or a corrupt one"):
        read_image(path)


def test_compare_refuses_a_missing_folder_for_out(tmp_path, capsys):
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(tmp_path / "clean.png")
    folder = tmp_path / "missing" / "x"
    argv = ["compare", str(tmp_path / "clean.png"), "--methods", "nlm"]
    assert main([*argv, "--out", str(folder / "fig.png")]) == 1
    err = capsys.readouterr().err
    assert err == f"fdn: error: {folder}: no such folder for --out\n"
    assert not (tmp_path / "missing").exists()


def test_compare_refuses_a_file_as_the_folder_for_out(tmp_path, capsys):
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(tmp_path / "clean.png")
    argv = ["compare", str(tmp_path / "clean.png"), "--methods", "nlm"]
    assert main([*argv, "--out", str(tmp_path / "clean.png" / "fig.png")]) == 1
    assert (
        capsys.readouterr().err
        == f"fdn: error: {tmp_path / 'clean.png'}: not a folder for --out\n"
    )


def test_lzw_tiff_without_imagecodecs_names_the_package(tmp_path, monkeypatch):
    # Pillow writes a 16-bit LZW TIFF without imagecodecs; fdn reads 16-bit TIFF with tifffile.
    path = tmp_path / "lzw.tif"
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(
        path, compression="tiff_lzw"
    )
    if importlib.util.find_spec("imagecodecs") is not None:
        # With imagecodecs the file decodes; raise what tifffile raises without it.
        def without_imagecodecs(*args, **kwargs):
            raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

        monkeypatch.setattr(tifffile.TiffPage, "asarray", without_imagecodecs)
    with pytest.raises(ImageFileError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: this TIFF uses LZW compression, which needs the imagecodecs package: "
        "pip install imagecodecs"
    )


def test_a_missing_predictor_codec_is_named(tmp_path, monkeypatch):
    path = tmp_path / "predicted.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16))

    def without_imagecodecs(*args, **kwargs):
        raise ValueError("<PREDICTOR.FLOATINGPOINT: 3> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", without_imagecodecs)
    with pytest.raises(ImageFileError, match="uses the floatingpoint predictor, which needs"):
        read_image(path)


# What torch.utils.data's ExceptionWrapper.reraise makes of an exception in a worker.
WORKER_ERROR = (
    "Caught DataError in DataLoader worker process 0.\n"
    "Original Traceback (most recent call last):\n"
    '  File "torch/utils/data/_utils/worker.py", line 349, in _worker_loop\n'
    "    data = fetcher.fetch(index)\n"
    '  File "fdn/data.py", line 120, in __getitem__\n'
    "    raise DataError(f'{path}: not an image file, or a corrupt one')\n"
    "fdn.data.DataError: train/a.png: not an image file, or a corrupt one\n"
)


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (WORKER_ERROR, "fdn.data.DataError: train/a.png: not an image file, or a corrupt one"),
        ("first line\n   second\tline \n", "first line second line"),
    ],
)
def test_an_error_is_printed_on_one_line(monkeypatch, capsys, message, line):
    def fails(*args, **kwargs):
        raise ValueError(message)

    import fdn.info

    monkeypatch.setattr(fdn.info, "model_info", fails)
    assert main(["info"]) == 1
    assert capsys.readouterr().err == f"fdn: error: {line}\n"
