"""Image files under faults (issue #16, items 4, 5, 6, 9): decoder failures are one-line errors
that never abort a batch, extra frames and pages are refused rather than dropped, lossless WebP
in the extended container stays lossless, and PNG colour-key transparency is kept as stored."""

import io
import struct
import zlib

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image

from fdn import FDN, save_model
from fdn.batch import Job, denoise_files
from fdn.cli import main
from fdn.images import ImageFileError, read_image, write_image

from helpers import randomize

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(4, 3, 8, 8), scale=0.02)
    return save_model(model.float(), tmp_path_factory.mktemp("model") / "small.safetensors")


def noise8(*shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def noise16(*shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def png16_bytes(array, **options):
    """A 16-bit PNG of ``array`` (``(H, W)`` grey or ``(H, W, 3)`` RGB) written by pypng."""
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    writer = png.Writer(width, height, greyscale=planes == 1, bitdepth=16, **options)
    buffer = io.BytesIO()
    writer.write(buffer, array.reshape(height, width * planes))
    return buffer.getvalue()


def chunk(kind, data):
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pillow_bytes(array, image_format, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


# Damaged files, each from a valid one; every one of them used to escape read_image as some
# other exception than ImageFileError, and abort a whole batch.


def huge_png(path):
    """A valid 8x8 PNG whose IHDR (with a correct CRC) claims 100000 x 100000 pixels."""
    data = bytearray(pillow_bytes(noise8(8, 8, 3), "PNG"))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def huge_jpeg(path):
    """A valid 8x8 JPEG whose SOF0 marker claims 60000 x 60000 pixels (its most is 65535)."""
    data = bytearray(pillow_bytes(noise8(8, 8, 3), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    path.write_bytes(bytes(data))


def png16_bad_crc(path):
    data = bytearray(png16_bytes(noise16(8, 8, 3)))
    data[data.index(b"IDAT") + 6] ^= 0xFF
    path.write_bytes(bytes(data))


def png16_truncated(path):
    data = png16_bytes(noise16(8, 8, 3))
    path.write_bytes(data[: len(data) - 40])


def tiff16_truncated(path):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, noise16(32, 32, 3), photometric="rgb", compression="zlib")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])


DAMAGED = [
    ("huge.png", huge_png, "image too large (10,000,000,000 pixels)"),
    ("huge.jpg", huge_jpeg, "image too large (3,600,000,000 pixels)"),
    ("crc16.png", png16_bad_crc, "corrupt or truncated"),
    ("cut16.png", png16_truncated, "corrupt or truncated"),
    ("cut16.tif", tiff16_truncated, "cannot decode this TIFF"),
]


@pytest.mark.parametrize(("name", "make", "reason"), DAMAGED)
def test_decoder_failures_are_one_line_image_file_errors(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageFileError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


@pytest.mark.parametrize(("name", "make", "reason"), DAMAGED)
def test_a_damaged_file_does_not_abort_the_batch(tmp_path, model_file, capsys, name, make, reason):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(noise8(20, 24, 3)).save(inputs / "good.png")
    make(inputs / name)
    assert main(["denoise", str(inputs), "-o", str(out), "--model", str(model_file)]) == 1
    err = capsys.readouterr().err
    assert "1 denoised, 1 failed" in err and "Traceback" not in err
    lines = [line for line in err.splitlines() if name in line]
    assert len(lines) == 1 and lines[0].startswith("fdn: error: ") and reason in lines[0]
    assert (out / "good.png").is_file() and not (out / name).exists()


def test_any_exception_in_one_file_is_reported_and_counted(tmp_path, model_file):
    # A grey image whose model fails with an exception kind nobody anticipated.
    from fdn import load_model

    Image.fromarray(noise8(12, 12)).save(tmp_path / "grey.png")
    Image.fromarray(noise8(12, 12, 3)).save(tmp_path / "rgb.png")
    colour = load_model(model_file)

    def model(channels):
        if channels == 1:
            raise KeyError("no grey model")
        return colour

    jobs = [Job(tmp_path / n, tmp_path / "out" / n) for n in ("grey.png", "rgb.png")]
    lines = []
    result = denoise_files(jobs, model, progress=False, report=lines.append)
    assert (result.denoised, result.failed) == (1, 1)
    assert lines == [f"fdn: error: {tmp_path / 'grey.png'}: KeyError: 'no grey model'"]
    assert (tmp_path / "out" / "rgb.png").is_file()


# Files of several images: each used to come out as its first image alone, without a word.


def pages_tiff8(path):
    frames = [Image.fromarray(noise8(10, 12, 3)) for _ in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def pages_tiff16(path):
    with tifffile.TiffWriter(path) as tif:
        for _ in range(3):
            tif.write(noise16(10, 12, 3), photometric="rgb")


def animated_webp(path):
    frames = [Image.fromarray(noise8(10, 12, 3)) for _ in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True)


def apng8(path):
    frames = [Image.fromarray(noise8(10, 12, 3)) for _ in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def apng16(path):
    """A 16-bit APNG of 3 frames: the default image is frame 0, then 2 more in fdAT chunks."""
    chunks = list(png.Reader(bytes=png16_bytes(noise16(10, 12, 3))).chunks())
    idat = b"".join(data for kind, data in chunks if kind == b"IDAT")
    control = struct.pack(">IIIIHHBB", 12, 10, 0, 0, 1, 10, 0, 0)  # size, offset, delay, ops
    body = [chunk(b"acTL", struct.pack(">II", 3, 0))]
    sequence = iter(range(5))  # fcTL and fdAT chunks share one sequence
    for frame in range(3):
        body.append(chunk(b"fcTL", struct.pack(">I", next(sequence)) + control))
        if frame == 0:
            body.append(chunk(b"IDAT", idat))
        else:
            body.append(chunk(b"fdAT", struct.pack(">I", next(sequence)) + idat))
    ihdr = chunk(b"IHDR", chunks[0][1])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(body) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("pages.tif", pages_tiff8),
        ("pages16.tif", pages_tiff16),
        ("animated.webp", animated_webp),
        ("animated.png", apng8),
        ("animated16.png", apng16),
    ],
)
def test_files_of_several_frames_are_refused(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageFileError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message == (
        f"{path}: has 3 frames (pages); fdn denoises single images: "
        "split it into separate files first"
    )


def riff_chunks(path):
    """The fourccs of a WebP file's top-level RIFF chunks."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    kinds, offset = [], 12
    while offset + 8 <= len(data):
        (size,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        kinds.append(data[offset : offset + 4])
        offset += 8 + size + size % 2
    return kinds


@pytest.mark.parametrize(
    ("options", "image_chunk"),
    [
        ({"lossless": True, "icc_profile": b"an icc profile" * 7}, b"VP8L"),
        ({"lossless": True, "exif": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"}, b"VP8L"),
        ({"lossless": True, "icc_profile": b"odd length"}, b"VP8L"),
        ({"quality": 90, "icc_profile": b"an icc profile"}, b"VP8 "),
    ],
)
def test_webp_in_the_extended_container_keeps_its_compression(tmp_path, options, image_chunk):
    ramp = np.add.outer(np.arange(24), np.arange(32)) * 4
    array = np.clip(ramp[:, :, None] + noise8(24, 32, 3) // 8, 0, 255).astype(np.uint8)
    source, out = tmp_path / "in.webp", tmp_path / "out"
    Image.fromarray(array).save(source, **options)
    assert b"VP8X" in riff_chunks(source) and image_chunk in riff_chunks(source)
    argv = ["denoise", str(source), "-o", str(out), "--model", "fdn-color-blind", "--quiet"]
    assert main(argv) == 0
    kinds = riff_chunks(out / "in.webp")
    assert image_chunk in kinds and ({b"VP8 ", b"VP8L"} - {image_chunk}).isdisjoint(kinds)
    if "icc_profile" in options:
        with Image.open(out / "in.webp") as written:
            assert written.info["icc_profile"] == options["icc_profile"]


def colour_key_png(path, kind):
    if kind == "grey16":
        path.write_bytes(png16_bytes(noise16(6, 8), transparent=1234))
    elif kind == "rgb16":
        path.write_bytes(png16_bytes(noise16(6, 8, 3), transparent=(1, 2, 3)))
    elif kind == "rgb8":
        Image.fromarray(noise8(6, 8, 3)).save(path, transparency=(10, 20, 30))
    else:
        Image.fromarray(noise8(6, 8)).save(path, transparency=7)


@pytest.mark.parametrize("kind", ["grey16", "rgb16", "rgb8", "grey8"])
def test_png_colour_key_transparency_is_kept_as_stored(tmp_path, kind):
    path, out = tmp_path / "key.png", tmp_path / "out.png"
    colour_key_png(path, kind)
    image = read_image(path)
    assert image.alpha is None
    write_image(out, image, image.pixels)
    assert out.read_bytes()[25] == path.read_bytes()[25]  # the IHDR colour type
    written, original = (
        dict(png.Reader(filename=str(out)).chunks()),
        dict(png.Reader(filename=str(path)).chunks()),
    )
    assert written[b"tRNS"] == original[b"tRNS"]
    assert np.array_equal(read_image(out).pixels, image.pixels)
