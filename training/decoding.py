"""The one home of image decoding: bytes to an upright RGB image, refusing what no camera writes before decoding it.

Pillow and numpy only (no torch): serving imports this module in its small decoder processes.
"""
from __future__ import annotations

import io
import os
import resource
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF photos from phones
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - optional at import time, pinned in requirements
    pillow_heif = None

# Larger images are refused before decoding: a small file can declare a huge canvas (decompression bomb).
MAX_PIXELS = 40_000_000
# Pillow's own guard stays on at our limit: it also covers images nested in containers, which decode before we look.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Images come out of decoding with their longer side at most this: every use (models up to 448 px, thumbnails, heat
# maps) needs less, and JPEGs decode straight to it (libjpeg's DCT scaling), so a phone photo costs a quarter.
DECODED_SIDE = 1024
PAD_COLOUR = (255, 255, 255)  # product photos are padded with white, so we pad the same way
# What phones, cameras and browsers produce; every other parser Pillow has is attack surface nobody asked for.
# (MPO, the multi-picture JPEG of many phones, opens through the JPEG plugin.)
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF", "BMP", "TIFF") if f in Image.OPEN)
# Pixel modes those formats decode to; float and exotic modes (scientific TIFF) are refused.
MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L",
         "I;16N"}
# Each progressive JPEG scan costs time over every block of the image, whatever its size in bytes: a file repeating
# a tiny scan thousands of times holds a thread for long. Scans x pixels bounds decode time (docs/experiments.md,
# "Figures behind code").
MAX_JPEG_SCAN_PIXELS = 1_000_000_000
JPEG_SOS = b"\xff\xda"  # start-of-scan marker; entropy-coded data stuffs every 0xFF, so it cannot fake one
# Pillow parses JPEG and PNG headers one segment (or fill byte) per Python loop turn, and joins Exif segments
# quadratically: a camera writes a handful (extended XMP: tens), a flood writes hundreds of thousands.
MAX_HEADER_SEGMENTS = 256
MAX_JPEG_FILL_BYTES = 1024
# IDAT may be split finely, but 16,384 chunks of an encoder's usual 8 KB is six times our upload limit.
MAX_PNG_CHUNKS = 16_384
# TIFF: what cameras and scanners write for photos. JPEG-in-TIFF, fax and exotic codecs are refused (row 7 of #27:
# progressive JPEG strips bypass the scan bound), and strips and tiles are bounded by the image they describe.
TIFF_COMPRESSIONS = {1: "none", 5: "LZW", 8: "deflate", 32946: "deflate", 32773: "PackBits"}
MAX_TIFF_PIECES = 65_536
MAX_GIF_SUB_BLOCKS = 4096  # comment and application blocks before the first image; Pillow reads each in Python
# How Pillow's C decoders report a failed allocation (in a decoder process: its address-space cap).
OUT_OF_MEMORY = ("out of memory", "could not create decoder object")
BMP_RLE = {1: "RLE8", 2: "RLE4"}  # Pillow pads RLE rows in a Python loop: one 40-megapixel row takes seconds


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's guard for a configured limit above the default (never lowers it)."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, int(max_pixels))


class ImageError(ValueError):
    """An upload or file that is not a usable image."""


class NotAnImage(ImageError):
    """The bytes are not an image format we can decode."""


class ImageTooLarge(ImageError):
    """The image declares more pixels than we are willing to decode."""


class ImageTooComplex(ImageError):
    """Decoding needed more time or memory than an image of its size ever should."""


def open_image(source, max_pixels: int = MAX_PIXELS, max_side: int = DECODED_SIDE) -> Image.Image:
    """Decode a path, bytes or file object into an upright RGB image (primary frame, EXIF applied, alpha on white)."""
    return _decode(_read_bytes(source), max_pixels, max_side)[0]


def decode_to_bytes(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int], bytes, int]:
    """`open_image` as picklable data (what a decoder process sends back): mode, size, pixels, source pixel count."""
    img, source_pixels = _decode(data, max_pixels, DECODED_SIDE)
    return img.mode, img.size, img.tobytes(), source_pixels


def _decode(data: bytes, max_pixels: int, max_side: int) -> tuple[Image.Image, int]:
    """The decoded RGB image and how many pixels its file holds."""
    refuse_hostile_headers(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # No seek(): it can switch to another image of the file (a HEIF's first, not its primary) unchecked.
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            check_opened(img, data, max_pixels)
            source_pixels = img.width * img.height
            if img.format in ("JPEG", "MPO"):
                img.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale when that still covers it
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image declares more pixels than allowed ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage("the file format was not recognised") from exc
    except MemoryError as exc:
        raise ImageTooComplex("decoding it needs more memory than any photo of its size") from exc
    except OSError as exc:
        if any(sign in str(exc) for sign in OUT_OF_MEMORY):
            raise ImageTooComplex("decoding it needs more memory than any photo of its size") from exc
        raise NotAnImage(f"the image data is damaged or truncated ({exc.__class__.__name__})") from exc
    except (SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise NotAnImage(f"the image data is damaged or truncated ({exc.__class__.__name__})") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the user a prediction
        pass
    return shrink(to_rgb(img), max_side), source_pixels


def _read_bytes(source) -> bytes:
    """The whole file as bytes, from a path, bytes or a binary file object."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return fh.read()
    return source.read()


def refuse_hostile_headers(data: bytes) -> None:
    """Refuse, from the raw bytes and before any parser runs, the header floods Pillow would loop over in Python."""
    if data[:2] == b"\xff\xd8":
        _check_jpeg_segments(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        _check_png_chunks(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif_extensions(data)
    elif data[:4] in (b"II*\0", b"MM\0*"):
        _check_tiff_directory(data)
    elif data[:2] == b"BM" and len(data) >= 34 and struct.unpack_from("<I", data, 14)[0] >= 40:
        compression = struct.unpack_from("<I", data, 30)[0]
        if compression in BMP_RLE:
            raise NotAnImage(f"{BMP_RLE[compression]}-compressed BMP files are not accepted")


def _check_jpeg_segments(data: bytes) -> None:
    """Walk the markers up to the first scan: bounded segments and fill bytes."""
    pos, segments, fill = 2, 0, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return  # not a marker: the decoder will call the file damaged
        if data[pos + 1] == 0xFF:
            fill += 1
            if fill > MAX_JPEG_FILL_BYTES:
                raise NotAnImage("the JPEG header is padded with more fill bytes than any encoder writes")
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xDA:
            return
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        segments += 1
        if segments > MAX_HEADER_SEGMENTS:
            raise NotAnImage(f"the JPEG has more than {MAX_HEADER_SEGMENTS} header segments; cameras write a few")
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]


def _check_png_chunks(data: bytes) -> None:
    """Walk the chunk lengths: bounded chunks, few of them other than image data."""
    pos, chunks, extra = 8, 0, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        extra += kind != b"IDAT"
        if chunks > MAX_PNG_CHUNKS or extra > MAX_HEADER_SEGMENTS:
            raise NotAnImage("the PNG is split into more chunks than any encoder writes")
        if kind == b"IEND":
            return
        pos += 12 + length


def _check_gif_extensions(data: bytes) -> None:
    """Walk the blocks before the first image: bounded extension sub-blocks."""
    if len(data) < 13:
        return
    pos = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    sub_blocks = 0
    while pos + 2 <= len(data) and data[pos] == 0x21:
        pos += 2
        while pos < len(data) and data[pos]:
            sub_blocks += 1
            if sub_blocks > MAX_GIF_SUB_BLOCKS:
                raise NotAnImage("the GIF's extension blocks are split into more pieces than any encoder writes")
            pos += 1 + data[pos]
        pos += 1


def _check_tiff_directory(data: bytes) -> None:
    """Read the first directory's entry counts (not their values): bounded strips and tiles."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return
    at = struct.unpack_from(order + "I", data, 4)[0]
    if at + 2 > len(data):
        return
    entries = struct.unpack_from(order + "H", data, at)[0]
    for index in range(min(entries, (len(data) - at - 2) // 12)):
        tag, _, count = struct.unpack_from(order + "HHI", data, at + 2 + 12 * index)
        if tag in (273, 279, 324, 325) and count > MAX_TIFF_PIECES:
            raise NotAnImage(f"the TIFF is cut into {count:,} strips or tiles; the limit is {MAX_TIFF_PIECES:,}")


def check_opened(img: Image.Image, data: bytes, max_pixels: int) -> None:
    """Refuse an opened image whose decoding would cost more than its size promises."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
    if img.mode not in MODES:
        raise NotAnImage(f"{img.format} images with {img.mode!r} pixels are not supported")
    scans = data.count(JPEG_SOS) if img.format in ("JPEG", "MPO") else 0
    if scans * width * height > MAX_JPEG_SCAN_PIXELS:
        raise NotAnImage(f"the JPEG has {scans} scans, far more than any camera writes")
    if img.format == "TIFF":
        _check_tiff(img)


def _check_tiff(img: Image.Image) -> None:
    """A photo's TIFF: a codec from the list, and strips or tiles no larger or more numerous than the image needs."""
    tags = img.tag_v2
    compression = tags.get(259, 1)
    if compression not in TIFF_COMPRESSIONS:
        accepted = ", ".join(sorted(set(TIFF_COMPRESSIONS.values())))
        raise NotAnImage(f"TIFF compression {compression} is not accepted (only {accepted})")
    width, height = img.size
    tile_width, tile_height = tags.get(322), tags.get(323)
    if tile_width is not None or tile_height is not None:
        if (tile_width or 0) > width + 16 or (tile_height or 0) > height + 16:
            raise NotAnImage(f"the TIFF's {tile_width}x{tile_height} tiles are larger than its {width}x{height} image")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, CMYK, 16-bit, alpha) to 8-bit RGB, flattening transparency onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = _stretch_to_8_bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, PAD_COLOUR)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def _stretch_to_8_bit(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey image scaled to 8 bits by its own maximum, a band of rows at a time (no float64 copy)."""
    values = np.asarray(img)
    top = float(values.max()) or 1.0
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, 4_000_000 // max(1, values.shape[1]))
    for start in range(0, values.shape[0], rows):
        band = values[start:start + rows].astype(np.float32) * np.float32(255.0 / top)
        np.clip(band, 0, 255, out=band)
        out[start:start + rows] = band
    return Image.fromarray(out, "L")


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    """The image with its longer side at most `max_side` (aspect kept), resampled as `square_pad` resamples."""
    if max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.BILINEAR, reducing_gap=3.0)


def limit_address_space(extra_bytes: int) -> None:
    """Cap this process's address space at what it uses now plus `extra_bytes`: an allocation past it fails."""
    with open("/proc/self/status") as fh:
        size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, size + extra_bytes))


def prepare_decoder(extra_bytes: int, max_pixels: int) -> None:
    """Set up a decoder process: the operator's pixel limit, then its memory cap."""
    allow_pixels(max_pixels)
    limit_address_space(extra_bytes)
