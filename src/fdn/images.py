r"""Reading and writing real image files, keeping their kind: format, mode, bit depth, metadata.

Pillow handles every 8-bit image, but it truncates 16-bit colour PNG and TIFF to 8 bits. So
16-bit PNGs go through pypng (pure Python, no dependencies, reads and writes every PNG colour
type at 16 bits, and lets us copy the metadata chunks across) and 16-bit TIFFs through
tifffile (the reference TIFF library in the scientific Python stack; an optional extra, as its
compressed variants may need imagecodecs). OpenCV would read both, but it is a large binary
dependency and drops ICC profiles and EXIF.

Colour channels and alpha are kept apart: the denoiser sees only the colour, and the alpha
channel is written back bit for bit. EXIF data (the orientation tag included) and ICC profiles
are written back unchanged where the format can hold them, so a viewer shows the output as it
showed the input; the pixels are denoised as stored, never rotated.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fdn._version import DISTRIBUTION
from fdn.atomic import atomic_write

__all__ = [
    "EXTENSIONS",
    "ImageFile",
    "ImageFileError",
    "read_array",
    "read_image",
    "to_unit_float",
    "write_image",
]

# Formats we read and write, with the extensions that find them in a folder.
EXTENSIONS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
_FORMATS = set(EXTENSIONS.values())

# PNG chunks that describe how to show the pixels; copied to 16-bit outputs. tRNS is a colour
# key (the one grey level or RGB colour that is transparent), kept as stored rather than
# turned into an alpha channel.
_PNG_KEPT_CHUNKS = (
    b"iCCP",
    b"sRGB",
    b"gAMA",
    b"cHRM",
    b"pHYs",
    b"eXIf",
    b"tEXt",
    b"iTXt",
    b"tRNS",
)

_FLOAT_ADVICE = "save as 8- or 16-bit, or call fdn.denoise_image on the float array"

_REFUSED_MODES = {
    "1": "1-bit black-and-white images are not supported (nothing to denoise at 1 bit)",
    "CMYK": "CMYK images are not supported: convert to RGB first",
    "YCbCr": "YCbCr images are not supported: convert to RGB first",
    "LAB": "Lab images are not supported: convert to RGB first",
    "HSV": "HSV images are not supported: convert to RGB first",
    "I": "32-bit integer images are not supported: save as 8- or 16-bit",
    "F": f"floating-point images are not supported by the file reader: {_FLOAT_ADVICE}",
}


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


@dataclass
class ImageFile:
    """A decoded image: its colour channels, its alpha, and what is needed to write it back.

    Attributes:
        pixels: the colour channels, ``(H, W, C)`` with C = 1 (grey) or 3 (RGB), uint8 or
            uint16.
        alpha: the alpha channel ``(H, W)`` of the same dtype, or None.
        format: the file format, one of PNG, JPEG, TIFF, BMP, WEBP.
        mode: the file's own mode, e.g. ``"RGB"``, ``"LA"``, ``"P"``, ``"RGB;16"``.
        metadata: what the writer needs to reproduce the file's kind (ICC, EXIF, ...).
        notes: conversions the user should be told about.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8


def read_image(path: str | os.PathLike) -> ImageFile:
    """Reads an image file. Raises :class:`ImageFileError` with a one-line reason.

    Every failure of a decoder (Pillow, pypng, tifffile, zlib) becomes an
    :class:`ImageFileError`, so that a batch can report the file and go on. A file of several
    frames or pages (multi-page TIFF, animated WebP or PNG) is refused rather than cut down to
    its first image.
    """
    path = Path(path)
    if not path.exists():
        raise ImageFileError(path, "no such file")
    if not path.is_file():
        raise ImageFileError(path, "not a file")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as error:
        raise ImageFileError(path, f"cannot read ({error.strerror})") from None
    if size == 0:
        raise ImageFileError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image_format = image.format
            if image_format not in _FORMATS:
                raise ImageFileError(path, f"unsupported image format {image_format}")
            _refuse_frames(path, getattr(image, "n_frames", 1))
            if image_format == "PNG" and _png_bit_depth(path) == 16:
                return _read_png16(path)
            if image_format == "TIFF" and _tiff_bits(image) == 16:
                return _read_tiff16(path)
            image.load()
            return _from_pillow(path, image)
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError(path, _unidentified(path)) from None
    except Image.DecompressionBombError as error:
        raise ImageFileError(path, _too_large(error)) from None
    except MemoryError:
        raise ImageFileError(path, "not enough memory to decode this image") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as error:
        raise ImageFileError(path, f"corrupt or truncated image ({_one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - pypng, zlib and tifffile raise their own kinds
        raise ImageFileError(
            path, f"corrupt or truncated image ({_one_line(error, named=True)})"
        ) from None


def read_array(
    path: str | os.PathLike, channels: int | None = None, raw: bool = False
) -> np.ndarray:
    """An image file's colour channels as an ``(H, W, C)`` array: the one way training,
    validation, ``fdn eval`` and ``fdn compare`` read an image.

    The file is read by :func:`read_image`, so every format, mode and bit depth that
    ``fdn denoise`` takes is read here too, and fails with the same :class:`ImageFileError`.
    Alpha is dropped; a palette image gives its RGB colours.

    Arguments:
        path: the image file.
        channels: None keeps the file's own (1 for grey, 3 for colour); 3 replicates grey;
            1 turns colour into grey with the ITU-R 601 luma weights (0.299, 0.587, 0.114),
            rounded as Pillow's ``convert("L")`` rounds them, at the file's bit depth.
        raw: return the stored integers (uint8 or uint16) instead of float32.

    Returns:
        float32 in [0, 1] (uint8 values / 255, uint16 values / 65535), or with ``raw`` the
        uint8 or uint16 values, C-contiguous.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    pixels = read_image(path).pixels
    if channels == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels == 1 and pixels.shape[2] == 3:
        pixels = _luma(pixels)
    if raw:
        return np.ascontiguousarray(pixels)  # no view into a larger (alpha) buffer
    return to_unit_float(pixels)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """Stored uint8 or uint16 values as float32 in [0, 1] (/ 255 or / 65535)."""
    scaled = pixels.astype(np.float32)
    scaled /= np.float32(np.iinfo(pixels.dtype).max)
    return scaled


def _luma(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 1)`` grey of ``(H, W, 3)`` RGB, of the same dtype: Pillow's RGB-to-L in
    16.16 fixed point, ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``, at 8 or 16 bits."""
    wide: np.ndarray[Any, np.dtype[np.unsignedinteger[Any]]] = pixels.astype(
        np.uint32 if pixels.dtype == np.uint8 else np.uint64
    )
    grey = (wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000) >> 16
    return grey.astype(pixels.dtype)[:, :, None]


def _one_line(error: Exception, named: bool = False) -> str:
    """The error's message on one line, after its kind's name if ``named`` and the message
    does not already start with it (pypng's do; zlib's "Error -3 ..." says nothing of zlib)."""
    text = " ".join(str(error).split())
    kind = type(error)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    if not named or text.startswith(kind.__name__):
        return text or name
    return f"{name}: {text}" if text else name


def _unidentified(path: Path) -> str:
    """The reason Pillow could not open ``path``: a floating-point TIFF, or not an image.

    Pillow has no mode for floating-point colour (nor for 16- or 64-bit floating-point grey),
    so it cannot identify such a TIFF, valid as it is, and it would be reported as corrupt.
    """
    bits, sample_format = _tiff_sample_kind(path)
    if sample_format == 3:  # IEEE floating point
        return (
            f"{bits}-bit floating-point TIFF is not supported by the file reader: {_FLOAT_ADVICE}"
        )
    return "not an image file, or a corrupt one"


def _tiff_sample_kind(path: Path) -> tuple[int, int]:
    """BitsPerSample and SampleFormat of a TIFF's first image, or (0, 0) for another file.

    Read from the first IFD with struct, as tifffile is an optional extra. Each tag holds one
    value per channel; the first is enough to name the kind of samples.
    """
    try:
        with path.open("rb") as stream:
            order = {b"II": "<", b"MM": ">"}.get(stream.read(2))
            if order is None:
                return 0, 0
            (version,) = struct.unpack(order + "H", stream.read(2))
            if version == 42:  # classic TIFF: 4-byte offsets, 2-byte entry count
                offset, count = "I", "H"
                (ifd,) = struct.unpack(order + offset, stream.read(4))
            elif version == 43:  # BigTIFF: 8-byte offsets and entry count, after 4 bytes
                offset, count = "Q", "Q"
                (ifd,) = struct.unpack(order + offset, stream.read(12)[4:])
            else:
                return 0, 0
            size = struct.calcsize(offset)
            entry_size = 4 + 2 * size  # tag, type, value count, value or its offset
            stream.seek(ifd)
            (entries,) = struct.unpack(order + count, stream.read(struct.calcsize(count)))
            # A damaged count could ask for exabytes; no real IFD has more entries than this.
            table = stream.read(min(entries, 65535) * entry_size)
            found = {258: 1, 339: 1}  # BitsPerSample, SampleFormat: TIFF's defaults
            for start in range(0, len(table) - entry_size + 1, entry_size):
                entry = table[start : start + entry_size]
                tag, kind = struct.unpack(order + "HH", entry[:4])
                if tag not in found or kind != 3:  # both tags are SHORTs
                    continue
                (values,) = struct.unpack(order + offset, entry[4 : 4 + size])
                value = entry[4 + size : 6 + size]
                if 2 * values > size:  # too long to fit in the entry: stored elsewhere
                    (where,) = struct.unpack(order + offset, entry[4 + size :])
                    stream.seek(where)
                    value = stream.read(2)
                (found[tag],) = struct.unpack(order + "H", value)
            return found[258], found[339]
    except (OSError, struct.error):
        return 0, 0


def _too_large(error: Exception) -> str:
    """The reason for Pillow's DecompressionBombError, with the pixel count the header claims.

    Pillow refuses to decode more than twice ``Image.MAX_IMAGE_PIXELS`` (about 179 million
    pixels) so that a few bytes of header cannot make it allocate gigabytes.
    """
    found = re.search(r"\((\d+) pixels\)", str(error))
    claimed = f" ({int(found.group(1)):,} pixels)" if found else ""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"image too large{claimed}, above the decoder's safety limit of {limit:,} pixels: "
        "a damaged or hostile header, or an image to split into parts first"
    )


def _refuse_frames(path: Path, frames: int) -> None:
    """Refuses a file of several images: denoising the first alone would drop the others."""
    if frames > 1:
        raise ImageFileError(
            path,
            f"has {frames} frames (pages); fdn denoises single images: "
            "split it into separate files first",
        )


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as stream:
        header = stream.read(26)
    return header[24] if len(header) >= 26 else 8


def _tiff_bits(image: Image.Image) -> int:
    bits = image.tag_v2.get(258, (8,))  # type: ignore[attr-defined]  # BitsPerSample
    return int(bits[0] if isinstance(bits, tuple) else bits)


def _split_alpha(array: np.ndarray, has_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 2:
        array = array[:, :, None]
    if has_alpha:
        return array[:, :, :-1], array[:, :, -1].copy()
    return array, None


def _from_pillow(path: Path, image: Image.Image) -> ImageFile:
    mode, image_format = image.mode, image.format
    assert image_format is not None  # an opened file, its format checked by read_image
    if mode in _REFUSED_MODES:
        raise ImageFileError(path, _REFUSED_MODES[mode])
    metadata = {
        key: image.info[key] for key in ("icc_profile", "exif", "dpi") if image.info.get(key)
    }
    notes = []
    if image_format == "JPEG":
        metadata["qtables"] = image.quantization  # type: ignore[attr-defined]
        metadata["subsampling"] = _jpeg_subsampling(image)
    if image_format == "WEBP":
        metadata["lossless"] = _webp_is_lossless(path)
    if image_format == "TIFF":
        metadata["compression"] = image.info.get("compression", "raw")
    transparency = image.info.get("transparency")
    if image_format == "PNG" and mode in ("L", "RGB") and transparency is not None:
        # A colour key (tRNS): an int for grey, an (r, g, b) tuple for RGB. Pillow keeps it
        # in `info` only, and would not write it back unless told to.
        metadata["transparency"] = transparency
    if mode in ("P", "PA"):
        metadata["palette_image"] = image.copy()
        transparency = image.info.get("transparency")
        has_alpha = mode == "PA" or transparency is not None
        if isinstance(transparency, int):
            metadata["transparent_index"] = transparency
        image = image.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette image: denoised in RGB, then mapped back to its own palette")
    elif mode.startswith("I;16"):
        array = np.asarray(image).astype(np.uint16)
        return ImageFile(array[:, :, None], None, image_format, "L;16", metadata, notes)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageFileError(path, f"unsupported image mode {mode}")
    array = np.asarray(image)
    pixels, alpha = _split_alpha(array, image.mode in ("LA", "RGBA"))
    return ImageFile(pixels, alpha, image_format, mode, metadata, notes)


def _jpeg_subsampling(image: Image.Image) -> int:
    from PIL import JpegImagePlugin

    return JpegImagePlugin.get_sampling(image)


def _webp_is_lossless(path: Path) -> bool:
    """Whether a WebP file's image is lossless (a VP8L chunk) rather than lossy (VP8).

    The simple container has the image chunk first, but the extended one (a VP8X chunk first,
    used as soon as the file carries an ICC profile, EXIF, XMP or lossy alpha) puts other
    chunks before it. So walk the RIFF chunks after the 12-byte ``RIFF size WEBP`` header:
    each is a fourcc, a little-endian 32-bit size, and data padded to an even length.
    """
    with path.open("rb") as stream:
        stream.seek(12)
        while len(header := stream.read(8)) == 8:
            fourcc, size = header[:4], struct.unpack("<I", header[4:])[0]
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8L"
            stream.seek(size + size % 2, io.SEEK_CUR)
    return False


def _read_png16(path: Path) -> ImageFile:
    import png

    every_chunk = list(png.Reader(filename=os.fspath(path)).chunks())
    for kind, data in every_chunk:
        if kind == b"acTL" and len(data) >= 4:  # an APNG; its first field is the frame count
            _refuse_frames(path, struct.unpack(">I", data[:4])[0])
    chunks = [(kind, data) for kind, data in every_chunk if kind in _PNG_KEPT_CHUNKS]
    # read(), not asDirect(): asDirect would turn a tRNS colour key into an alpha channel and
    # rescale to an sBIT depth; read() gives the planes as stored (a 16-bit PNG never has a
    # palette to expand), and the tRNS chunk goes back out with the other kept chunks.
    width, height, rows, info = png.Reader(filename=os.fspath(path)).read()
    if info["bitdepth"] != 16:
        raise ImageFileError(path, f"unsupported PNG bit depth {info['bitdepth']}")
    array = np.array([np.asarray(row, dtype=np.uint16) for row in rows], dtype=np.uint16)
    array = array.reshape(height, width, info["planes"])
    pixels, alpha = _split_alpha(array, info["alpha"])
    mode = ("L" if info["greyscale"] else "RGB") + ("A" if info["alpha"] else "") + ";16"
    return ImageFile(pixels, alpha, "PNG", mode, {"png_chunks": chunks})


def _read_tiff16(path: Path) -> ImageFile:
    tifffile = _import_tifffile(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
            page = tif.pages[0]
            array = page.asarray()
            photometric = page.photometric.name
            extrasamples = len(page.extrasamples)
            compression = page.compression.name
            icc = page.tags.get(34675)
    except (ValueError, KeyError, ImportError) as error:
        # tifffile turns a missing imagecodecs (an ImportError, then a KeyError for the codec)
        # into a ValueError when decoding; the other two are caught should a version not.
        needs = _needs_imagecodecs(error)
        if needs is not None:
            raise ImageFileError(path, needs) from None
        if not isinstance(error, ValueError):
            raise
        raise ImageFileError(path, f"cannot decode this TIFF ({_one_line(error)})") from None
    except zlib.error as error:  # a truncated or damaged deflate-compressed strip
        reason = _one_line(error, named=True)
        raise ImageFileError(path, f"cannot decode this TIFF ({reason})") from None
    _refuse_frames(path, pages)
    if array.dtype != np.uint16:
        raise ImageFileError(path, f"unsupported TIFF sample type {array.dtype}")
    if photometric not in ("RGB", "MINISBLACK") or array.ndim not in (2, 3):
        raise ImageFileError(path, f"unsupported 16-bit TIFF layout ({photometric})")
    has_alpha = extrasamples == 1 and array.ndim == 3
    pixels, alpha = _split_alpha(array, has_alpha)
    if pixels.shape[2] not in (1, 3):
        raise ImageFileError(path, f"unsupported channel count {pixels.shape[2]}")
    mode = ("L" if pixels.shape[2] == 1 else "RGB") + ("A" if has_alpha else "") + ";16"
    metadata = {"compression": compression, "icc_profile": icc.value if icc else None}
    return ImageFile(pixels, alpha, "TIFF", mode, metadata)


def _needs_imagecodecs(error: Exception) -> str | None:
    """The reason to give for a TIFF that tifffile cannot decode without imagecodecs, or None.

    tifffile decodes LZW, JPEG, ZStandard and most other compressions (and some predictors)
    through imagecodecs, which the tiff extra leaves out as a large binary wheel; its error
    ("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package") is rewritten to say what to do.
    """
    text = str(error)
    if "imagecodecs" not in text:
        return None
    found = re.search(r"<(COMPRESSION|PREDICTOR)\.(\w+): \d+>", text)
    if found is None:
        what = "a compression"
    elif found.group(1) == "COMPRESSION":
        what = f"{found.group(2)} compression"
    else:
        what = f"the {found.group(2).lower()} predictor"
    return f"this TIFF uses {what}, which needs the imagecodecs package: pip install imagecodecs"


def _import_tifffile(path: Path):  # noqa: ANN202 - a module
    try:
        import tifffile
    except ImportError:
        raise ImageFileError(
            path, f"16-bit TIFF needs the tifffile package: pip install '{DISTRIBUTION}[tiff]'"
        ) from None
    return tifffile


def write_image(path: str | os.PathLike, source: ImageFile, pixels: np.ndarray) -> Path:
    """Writes ``pixels`` (``(H, W, C)``, the dtype of ``source.pixels``) as a file of the same
    kind as ``source``: format, mode, bit depth, alpha, ICC profile and EXIF.

    The file is written to a temporary name in the destination folder and renamed, so an
    interrupted write never leaves a partial image.
    """
    path = Path(path)
    if pixels.shape != source.pixels.shape or pixels.dtype != source.pixels.dtype:
        raise ValueError(
            f"pixels {pixels.shape} {pixels.dtype} do not match the source image "
            f"{source.pixels.shape} {source.pixels.dtype}"
        )
    array = pixels if source.alpha is None else np.dstack([pixels, source.alpha])
    if source.bit_depth == 16 and source.format == "PNG":
        writer = _png16_writer(source, array)
    elif source.bit_depth == 16 and source.format == "TIFF":
        writer = _tiff16_writer(path, source, array)
    else:
        writer = _pillow_writer(source, array)
    return atomic_write(path, writer)


def _png16_writer(source: ImageFile, array: np.ndarray) -> Callable[[Path], None]:
    import png

    height, width, planes = array.shape
    writer = png.Writer(
        width,
        height,
        greyscale=planes in (1, 2),
        alpha=source.alpha is not None,
        bitdepth=16,
    )
    buffer = io.BytesIO()
    writer.write(buffer, array.reshape(height, width * planes))
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    kept = source.metadata.get("png_chunks", [])
    chunks = chunks[:1] + kept + chunks[1:]  # right after IHDR, before the image data

    def write(tmp: Path) -> None:
        with tmp.open("wb") as stream:
            png.write_chunks(stream, chunks)

    return write


def _tiff16_writer(path: Path, source: ImageFile, array: np.ndarray) -> Callable[[Path], None]:
    tifffile = _import_tifffile(path)
    compressed = source.metadata.get("compression", "NONE") != "NONE"
    extras = {"extrasamples": ["unassalpha"]} if source.alpha is not None else {}
    icc = source.metadata.get("icc_profile")

    def write(tmp: Path) -> None:
        tifffile.imwrite(
            tmp,
            array if array.shape[2] > 1 else array[:, :, 0],
            photometric="rgb" if source.pixels.shape[2] == 3 else "minisblack",
            compression="zlib" if compressed else None,
            iccprofile=icc,
            **extras,
        )

    return write


def _pillow_writer(source: ImageFile, array: np.ndarray) -> Callable[[Path], None]:
    meta = source.metadata
    if source.mode == "L;16":
        image = Image.fromarray(array[:, :, 0].astype(np.uint16))
    else:
        modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
        image = Image.fromarray(
            array.squeeze(2) if array.shape[2] == 1 else array, modes[array.shape[2]]
        )
    if source.mode in ("P", "PA"):
        image = _back_to_palette(image, meta)
    options: dict = {key: meta[key] for key in ("icc_profile", "exif", "dpi") if meta.get(key)}
    if source.format == "JPEG":
        options.update(qtables=meta["qtables"], subsampling=meta["subsampling"])
        if options["subsampling"] == -1:
            del options["subsampling"]
    elif source.format == "WEBP":
        options.update(lossless=True) if meta.get("lossless") else options.update(quality=95)
    elif source.format == "TIFF":
        options["compression"] = meta.get("compression", "raw")
    elif source.format == "PNG" and meta.get("transparency") is not None:
        options["transparency"] = meta["transparency"]
    elif source.format == "BMP":
        options = {}

    def write(tmp: Path) -> None:
        image.save(tmp, format=source.format, **options)

    return write


def _back_to_palette(image: Image.Image, meta: dict) -> Image.Image:
    """Maps denoised colours to the nearest entry of the input's own palette."""
    palette_image: Image.Image = meta["palette_image"]
    palette = palette_image.getpalette()
    assert palette is not None  # a P or PA image has a palette
    reference = Image.new("P", (1, 1))
    reference.putpalette(palette)
    indexed = image.convert("RGB").quantize(palette=reference, dither=Image.Dither.NONE)
    index = meta.get("transparent_index")
    if index is not None:
        # Pixels that were transparent keep the transparent index, bit for bit.
        values = np.asarray(indexed).copy()
        values[np.asarray(palette_image) == index] = index
        indexed = Image.fromarray(values, "P")
        indexed.putpalette(palette)
    if "transparency" in palette_image.info:
        indexed.info["transparency"] = palette_image.info["transparency"]
    return indexed
