import io
import struct
import zlib

import numpy as np
import png
import pytest
import tifffile
from PIL import Image

from fdn.images import ImageFileError, read_image, write_image

RNG = np.random.default_rng(0)


def noise8(*shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def noise16(*shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def write_png16(path, array):
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    writer = png.Writer(
        width, height, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16
    )
    with open(path, "wb") as stream:
        writer.write(stream, array.reshape(height, width * planes))


def round_trip(path, change=None):
    image = read_image(path)
    pixels = image.pixels if change is None else change(image.pixels)
    out = path.with_name("out_" + path.name)
    write_image(out, image, pixels)
    return image, read_image(out), out


@pytest.mark.parametrize(
    "name, array, mode",
    [
        ("rgb.png", noise8(13, 17, 3), "RGB"),
        ("rgba.png", noise8(13, 17, 4), "RGBA"),
        ("la.png", noise8(13, 17, 2), "LA"),
        ("grey.bmp", noise8(13, 17), "L"),
        ("rgb.tif", noise8(13, 17, 3), "RGB"),
        ("rgb.webp", noise8(13, 17, 3), "RGB"),
    ],
)
def test_pillow_images_keep_size_mode_and_exact_pixels(tmp_path, name, array, mode):
    path = tmp_path / name
    Image.fromarray(array).save(path, **({"lossless": True} if name.endswith("webp") else {}))
    image, back, out = round_trip(path)
    assert image.mode == mode and back.mode == mode
    assert image.pixels.dtype == np.uint8
    with Image.open(out) as written:
        assert written.size == (17, 13) and written.mode == mode
        assert np.array_equal(np.asarray(written), array)


def test_grey_jpeg_stays_grey_jpeg_with_its_quality(tmp_path):
    path = tmp_path / "grey.jpg"
    smooth = np.add.outer(np.arange(21), np.arange(33)).astype(np.uint8) * 3
    Image.fromarray(smooth).save(path, quality=90)
    image, back, out = round_trip(path)
    assert image.pixels.shape == (21, 33, 1) and back.mode == "L"
    with Image.open(out) as written, Image.open(path) as original:
        assert written.format == "JPEG" and written.mode == "L" and written.size == (33, 21)
        assert written.quantization == original.quantization
    assert np.abs(back.pixels.astype(int) - image.pixels.astype(int)).max() <= 8


def test_alpha_is_copied_bit_for_bit(tmp_path):
    array = noise8(9, 11, 4)
    path = tmp_path / "rgba.png"
    Image.fromarray(array).save(path)
    _, back, _ = round_trip(path, change=lambda p: 255 - p)
    assert np.array_equal(back.alpha, array[:, :, 3])
    assert np.array_equal(back.pixels, 255 - array[:, :, :3])


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
def test_16_bit_png_of_every_colour_type(tmp_path, planes):
    array = noise16(7, 9, planes).squeeze()
    path = tmp_path / "deep.png"
    write_png16(path, array)
    image, back, out = round_trip(path)
    assert image.bit_depth == 16 and back.bit_depth == 16
    assert image.mode == back.mode == ["L;16", "LA;16", "RGB;16", "RGBA;16"][planes - 1]
    restored = back.pixels if back.alpha is None else np.dstack([back.pixels, back.alpha])
    assert np.array_equal(restored.squeeze(), array)
    width, height, _, info = png.Reader(filename=str(out)).read()
    assert (width, height, info["bitdepth"], info["planes"]) == (9, 7, 16, planes)


def test_16_bit_png_keeps_its_icc_profile(tmp_path):
    path = tmp_path / "icc.png"
    write_png16(path, noise16(4, 4, 3))
    # Insert an iCCP chunk the way a camera raw converter would.
    profile = b"fake icc profile bytes"
    chunks = list(png.Reader(filename=str(path)).chunks())
    chunks.insert(1, (b"iCCP", b"prof\x00\x00" + zlib.compress(profile)))
    with open(path, "wb") as stream:
        png.write_chunks(stream, chunks)
    _, _, out = round_trip(path)
    kinds = dict(png.Reader(filename=str(out)).chunks())
    assert zlib.decompress(kinds[b"iCCP"].split(b"\x00", 1)[1][1:]) == profile


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_tiff(tmp_path, channels):
    array = noise16(11, 13, channels).squeeze()
    path = tmp_path / "deep.tif"
    photometric = "minisblack" if channels == 1 else "rgb"
    extras = {"extrasamples": ["unassalpha"]} if channels == 4 else {}
    tifffile.imwrite(path, array, photometric=photometric, compression="zlib", **extras)
    image, _back, out = round_trip(path)
    assert image.bit_depth == 16 and image.pixels.shape[2] == min(channels, 3)
    assert np.array_equal(tifffile.imread(out), array)


def test_16_bit_grey_png_written_by_pillow(tmp_path):
    array = noise16(6, 10)
    path = tmp_path / "grey16.png"
    Image.fromarray(array).save(path)
    image, back, _ = round_trip(path)
    assert image.bit_depth == 16 and np.array_equal(back.pixels[:, :, 0], array)


def test_palette_png_comes_back_as_palette(tmp_path):
    rgb = Image.fromarray(noise8(10, 12, 3)).convert("P", palette=Image.Palette.ADAPTIVE)
    rgb.info["transparency"] = 0
    path = tmp_path / "palette.png"
    rgb.save(path, transparency=0)
    image, _back, out = round_trip(path)
    assert image.notes and "palette" in image.notes[0]
    with Image.open(out) as written, Image.open(path) as original:
        assert written.mode == "P" and written.size == (12, 10)
        assert written.getpalette() == original.getpalette()
        assert written.info.get("transparency") == 0
        # Untouched pixels map back to their own palette entries.
        assert np.array_equal(np.asarray(written), np.asarray(original))


def test_exif_orientation_and_icc_survive_in_jpeg(tmp_path):
    image = Image.fromarray(noise8(8, 16, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif.tobytes(), icc_profile=b"an icc profile")
    _, _, out = round_trip(path)
    with Image.open(out) as written:
        assert written.getexif()[0x0112] == 6
        assert written.info["icc_profile"] == b"an icc profile"
        assert written.size == (16, 8)  # the stored pixels are not rotated


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"this is text, not a picture\n", "not an image"),
        (None, "corrupt or truncated"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(noise8(64, 64, 3)).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageFileError) as caught:
        read_image(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_and_refused_modes(tmp_path):
    with pytest.raises(ImageFileError, match="no such file"):
        read_image(tmp_path / "absent.png")
    Image.new("CMYK", (4, 4)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(ImageFileError, match="CMYK images are not supported"):
        read_image(tmp_path / "cmyk.jpg")
    Image.new("F", (4, 4)).save(tmp_path / "float.tif")
    with pytest.raises(ImageFileError, match="floating-point"):
        read_image(tmp_path / "float.tif")


def test_unsupported_format(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.gif")
    with pytest.raises(ImageFileError, match="unsupported image format GIF"):
        read_image(tmp_path / "a.gif")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "rgb.png"
    Image.fromarray(noise8(8, 8, 3)).save(path)
    image = read_image(path)
    target = tmp_path / "out" / "rgb.png"

    def explode(self, fp, *args, **kwargs):
        fp_path = fp if isinstance(fp, str) else str(fp)
        with open(fp_path, "wb") as stream:
            stream.write(b"\x89PNG half written")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, image, image.pixels)
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_write_keeps_an_existing_output_intact(tmp_path, monkeypatch):
    path = tmp_path / "rgb.png"
    Image.fromarray(noise8(8, 8, 3)).save(path)
    image = read_image(path)
    target = tmp_path / "previous.png"
    target.write_bytes(b"previous result")
    monkeypatch.setattr(
        Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError):
        write_image(target, image, image.pixels)
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous.png", "rgb.png"]


def test_png_ihdr_depth_is_what_routes_16_bit(tmp_path):
    path = tmp_path / "deep.png"
    write_png16(path, noise16(3, 3, 3))
    assert struct.unpack(">B", path.read_bytes()[24:25])[0] == 16
    with Image.open(path) as pillow:
        assert pillow.mode == "RGB"  # what Pillow would have given: 8 bits, truncated
    assert read_image(path).pixels.dtype == np.uint16
