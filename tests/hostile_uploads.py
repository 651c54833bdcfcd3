"""The attack rounds' hostile uploads, generated: small on the wire, each costly for some decoder (issue #27)."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.helpers import encode

MB = 1024 * 1024


def tiny_jpeg() -> bytes:
    return encode(Image.new("RGB", (16, 16), (200, 30, 30)), "JPEG")


def jpeg_exif_flood(megabytes: float) -> bytes:
    """A valid 16x16 JPEG carrying `megabytes` of 10-byte APP1 "Exif" segments (Pillow joins them quadratically)."""
    segment = b"\xff\xe1\x00\x08Exif\x00\x00"
    jpeg = tiny_jpeg()
    return jpeg[:2] + segment * int(megabytes * MB / len(segment)) + jpeg[2:]


def jpeg_fill_flood(megabytes: float) -> bytes:
    """A JPEG whose header is padded with fill bytes (0xFF), one Python loop turn each."""
    jpeg = tiny_jpeg()
    return jpeg[:2] + b"\xff" * int(megabytes * MB) + jpeg[2:]


def jpeg_empty_app_flood(megabytes: float) -> bytes:
    """A JPEG with hundreds of thousands of empty APP2 segments."""
    jpeg = tiny_jpeg()
    return jpeg[:2] + b"\xff\xe2\x00\x02" * int(megabytes * MB / 4) + jpeg[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_private_chunk_flood(megabytes: float) -> bytes:
    """A valid PNG with a flood of empty private chunks before its image data."""
    png = encode(Image.new("RGB", (16, 16), (9, 9, 9)), "PNG")
    chunk = png_chunk(b"prIv", b"")
    return png[:33] + chunk * int(megabytes * MB / len(chunk)) + png[33:]


def gif_sub_block_flood(megabytes: float) -> bytes:
    """A GIF whose comment extension is split into one-byte sub-blocks."""
    gif = encode(Image.new("P", (16, 16), 1), "GIF")
    header_end = 13 + 3 * 2 ** ((gif[10] & 7) + 1) if gif[10] & 0x80 else 13
    comment = b"\x21\xfe" + b"\x01x" * int(megabytes * MB / 2) + b"\x00"
    return gif[:header_end] + comment + gif[header_end:]


def bmp_rle_row(width: int = 40_000_000) -> bytes:
    """A 1 KB RLE8 BMP of one very long row: Pillow pads the row in a Python loop."""
    rle = b"\x00\x01"  # end of bitmap at once: the decoder still pads the whole row
    palette = b"\0\0\0\0" * 256
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, 1, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rle), 0, 0, offset) + info + palette + rle


def tiff(width: int, height: int, tags: list[tuple[int, int, list[int]]], payload: bytes = b"") -> bytes:
    """A little-endian TIFF with one IFD of (tag, type, values); the payload follows the IFD."""
    base = {256: (4, [width]), 257: (4, [height]), 258: (3, [8]), 262: (3, [1]), 277: (3, [1])}
    entries = {**base, **{tag: (kind, values) for tag, kind, values in tags}}
    sizes = {3: ("H", 2), 4: ("I", 4)}
    ifd_at, count = 8, len(entries)
    extra_at = ifd_at + 2 + 12 * count + 4
    body, extra = b"", b""
    for tag in sorted(entries):
        kind, values = entries[tag]
        code, size = sizes[kind]
        packed = struct.pack(f"<{len(values)}{code}", *values)
        if len(packed) <= 4:
            body += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
        else:
            body += struct.pack("<HHII", tag, kind, len(values), extra_at + len(extra))
            extra += packed
    return b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", count) + body + b"\0\0\0\0" + extra + payload


def tiff_many_strips(strips: int = 3_000_000) -> bytes:
    """An uncompressed 1-pixel-wide TIFF of `strips` one-row strips, all reading the same byte."""
    header = 8 + 2 + 12 * 8 + 4
    data_at = header + 4 * strips + 2 * strips
    return tiff(1, strips, [(278, 4, [1]), (273, 4, [data_at] * strips), (279, 3, [1] * strips)], b"\x80")


def tiff_huge_tile(side: int = 46000) -> bytes:
    """A 16x16 TIFF stored as one deflate tile of `side` squared: the buffer is sized by the tile."""
    data = zlib.compress(b"\0" * 4096)
    at = 8 + 2 + 12 * 10 + 4
    return tiff(16, 16, [(259, 3, [8]), (322, 4, [side]), (323, 4, [side]), (324, 4, [at]), (325, 4, [len(data)])],
                data)


def tiff_jpeg_strips() -> bytes:
    """A TIFF whose strips are JPEG-compressed (progressive JPEG inside TIFF escapes the JPEG scan bound)."""
    return encode(Image.new("RGB", (64, 64), (10, 200, 10)), "TIFF", compression="jpeg")


def sixteen_bit(fmt: str, size=(8000, 5000)) -> bytes:
    """A valid 40-megapixel 16-bit greyscale image: small compressed, large decoded."""
    return encode(Image.new("I;16", size, 40000), fmt, **({"compression": "tiff_deflate"} if fmt == "TIFF" else {}))


def heif_big_first(side: int = 7000) -> bytes:
    """A HEIF of two images: a large first one, then the small primary that a size check reads."""
    import pillow_heif

    heif = pillow_heif.from_pillow(Image.new("RGB", (side, side), (90, 90, 90)))
    heif.add_from_pillow(Image.new("RGB", (64, 64), (200, 30, 30)))
    buffer = io.BytesIO()
    heif.save(buffer, quality=10, primary_index=1)
    return buffer.getvalue()


def animated_webp_big_canvas(side: int = 5000) -> bytes:
    """An animated WebP whose canvas is 25 megapixels: small on the wire, 100 MB of RGBA when decoded."""
    frames = [Image.new("RGB", (side, side), (9, 9, 9)), Image.new("RGB", (side, side), (9, 9, 10))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], quality=1, method=0)
    return buffer.getvalue()


# (file name, how to make it, status, error code): one per row of #27 that a file can carry; all quick to make.
ROWS = [
    ("exif_flood_4mb.jpg", lambda: jpeg_exif_flood(4), 415, "unsupported_image"),
    ("rle_bmp_40mp_row.bmp", bmp_rle_row, 415, "unsupported_image"),
    ("tiff_3m_strips.tif", tiff_many_strips, 415, "unsupported_image"),
    ("tiff_46000_tile.tif", tiff_huge_tile, 415, "unsupported_image"),
    ("tiff_jpeg_strips.tif", tiff_jpeg_strips, 415, "unsupported_image"),
    ("jpeg_fill_flood_16mb.jpg", lambda: jpeg_fill_flood(16), 415, "unsupported_image"),
    ("jpeg_empty_app_flood_16mb.jpg", lambda: jpeg_empty_app_flood(16), 415, "unsupported_image"),
    ("png_private_chunks_16mb.png", lambda: png_private_chunk_flood(16), 415, "unsupported_image"),
    ("gif_sub_blocks_16mb.gif", lambda: gif_sub_block_flood(16), 415, "unsupported_image"),
    ("sixteen_bit_40mp.png", lambda: sixteen_bit("PNG"), 200, "ok"),
    ("sixteen_bit_40mp.tif", lambda: sixteen_bit("TIFF"), 200, "ok"),
    ("animated_25mp_canvas.webp", animated_webp_big_canvas, 200, "ok"),
]
