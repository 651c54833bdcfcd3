"""Write tests/data/bad/: awkward, broken and hostile uploads, with the status each must get (manifest.json).

Run `python -m tests.make_bad_corpus` to regenerate; the files are committed so reviewers can see them.
"""
from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image

from tests.helpers import encode
from tests.hostile_uploads import heif_big_first

OUT = Path(__file__).parent / "data" / "bad"


def guitar_like(mode: str = "RGB", size=(96, 64)) -> Image.Image:
    img = Image.new("RGB", size, (250, 250, 250))
    img.paste((170, 30, 30), (20, 20, 70, 50))
    img.paste((120, 70, 20), (60, 30, 95, 36))
    return img.convert(mode) if mode != "RGB" else img


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge canvas, with almost no pixel data."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [guitar_like("P"), Image.new("P", (96, 64), 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return encode(guitar_like(), "HEIF")


def zip_bytes(payload: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in payload.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(guitar_like(), "JPEG", exif=exif)


def many_scan_jpeg(scans: int, side: int = 4000) -> bytes:
    """A valid progressive JPEG that repeats one tiny refinement scan: libjpeg only warns, and each scan walks
    every block of the image, so a few kilobytes of scans cost seconds of CPU."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    end = data.rfind(b"\xff\xd9")
    last_scan = data[starts[-1]:end]
    return data[:end] + last_scan * scans + data[end:]


def container_with_png(kind: str, png: bytes) -> bytes:
    """An ICO or ICNS whose directory declares a small icon but whose payload is the given (large) PNG."""
    if kind == "ico":
        header = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22)
        return header + png
    element = b"ic10" + struct.pack(">I", len(png) + 8) + png
    return b"icns" + struct.pack(">I", len(element) + 8) + element


def other_formats() -> dict[str, bytes]:
    """Formats Pillow can decode but no phone, camera or browser sends: refused whole."""
    img = guitar_like()
    files = {}
    for name, mode, fmt in [("image.jp2", "RGB", "JPEG2000"), ("image.dds", "RGB", "DDS"), ("image.blp", "P", "BLP"),
                            ("image.sgi", "RGB", "SGI"), ("image.qoi", "RGB", "QOI"), ("image.tga", "RGB", "TGA"),
                            ("image.pcx", "RGB", "PCX"), ("image.im", "RGB", "IM"), ("image.msp", "1", "MSP"),
                            ("image.xbm", "1", "XBM"), ("image.pfm", "F", "PPM"), ("image.ico", "RGB", "ICO"),
                            ("float.tif", "F", "TIFF")]:
        files[name] = encode(img.convert(mode), fmt)
    return files


def corpus() -> dict[str, tuple[bytes, int, str]]:
    """file name -> (bytes, expected HTTP status, expected error code or 'ok')."""
    jpeg = encode(guitar_like(), "JPEG", quality=90)
    png = encode(guitar_like(), "PNG")
    ok, unsupported = (200, "ok"), (415, "unsupported_image")
    big_png = encode(Image.new("1", (12000, 12000)), "PNG", optimize=True)
    files = {
        # Valid images in every awkward form: they must be classified, not rejected.
        "cmyk.jpg": (encode(guitar_like("CMYK"), "JPEG"), *ok),
        "grayscale.jpg": (encode(guitar_like("L"), "JPEG"), *ok),
        "grayscale.png": (encode(guitar_like("L"), "PNG"), *ok),
        "gray_alpha.png": (encode(guitar_like("LA"), "PNG"), *ok),
        "palette.png": (encode(guitar_like("P"), "PNG"), *ok),
        "rgba.png": (encode(guitar_like("RGBA"), "PNG"), *ok),
        "sixteen_bit.png": (encode(guitar_like("L").convert("I;16"), "PNG"), *ok),
        "sixteen_bit.tif": (encode(guitar_like("L").convert("I;16"), "TIFF"), *ok),
        "one_bit.png": (encode(guitar_like("1"), "PNG"), *ok),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), *ok),
        "one_by_500.png": (encode(Image.new("RGB", (1, 500), (9, 9, 9)), "PNG"), *ok),
        "animated.gif": (animated_gif(), *ok),
        "phone.heic": (heic(), *ok),
        "image.webp": (encode(guitar_like(), "WEBP"), *ok),
        "image.bmp": (encode(guitar_like(), "BMP"), *ok),
        "progressive.jpg": (encode(guitar_like(), "JPEG", progressive=True), *ok),
        "exif_rotated.jpg": (exif_rotated(), *ok),
        "png_named.jpg": (png, *ok),  # content decides, not the extension
        "jpeg_with_zip_appended.jpg": (jpeg + zip_bytes({"a.txt": b"hi"}), *ok),  # polyglot that is a real JPEG
        # Not images, or broken ones.
        "empty.jpg": (b"", 400, "empty_file"),
        "text.jpg": (b"This is a plain text file, not a photo.\n" * 4, *unsupported),
        "page.jpg": (b"<!doctype html><html><body><script>alert(1)</script></body></html>", *unsupported),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
                        *unsupported),
        "document.pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", *unsupported),
        "archive.zip": (zip_bytes({"guitar.jpg": jpeg}), *unsupported),
        "gzip.jpg": (b"\x1f\x8b\x08\x00" + b"\0" * 40, *unsupported),
        "elf.jpg": (b"\x7fELF\x02\x01\x01" + b"\0" * 60, *unsupported),
        "json.jpg": (b'{"not": "an image"}', *unsupported),
        "random_bytes.jpg": (bytes((i * 97 + 13) % 256 for i in range(2048)), *unsupported),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], *unsupported),
        "truncated.png": (png[: len(png) // 2], *unsupported),
        "jpeg_header_only.jpg": (jpeg[:20], *unsupported),
        "png_magic_jpeg_body.png": (b"\x89PNG\r\n\x1a\n" + jpeg[8:], *unsupported),
        "jpeg_magic_text.jpg": (b"\xff\xd8\xff\xe0" + b"hello" * 30, *unsupported),
        "gif_js_polyglot.gif": (b"GIF89a/*\x00\x00*/=1;alert(document.domain);//", *unsupported),
        "zero_bytes_named.png": (b"\0" * 512, *unsupported),
        "mp3.jpg": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\0" * 100, *unsupported),
        # Too many pixels: refused before decoding.
        "declared_20000x20000.png": (declared_png(20000, 20000), 422, "image_too_large"),
        "bomb_12000x12000.png": (big_png, 422, "image_too_large"),
        "wide_100000x500.png": (declared_png(100000, 500), 422, "image_too_large"),
        # Hostile in the work they cause, not in their size.
        "line_20000x1.png": (encode(Image.new("RGB", (20000, 1), (9, 9, 9)), "PNG", optimize=True), *ok),
        "line_1x200000.tif": (encode(Image.new("L", (1, 200000), 9), "TIFF", compression="tiff_deflate"), *ok),
        "jpeg_300_scans.jpg": (many_scan_jpeg(300), *unsupported),
        "heif_49mp_first_64px_primary.heic": (heif_big_first(), *ok),  # #27 row 1 (12 KB): only the primary is decoded
        "ico_with_12000x12000_png.ico": (container_with_png("ico", big_png), *unsupported),
        "icns_with_12000x12000_png.icns": (container_with_png("icns", big_png), *unsupported),
        **{name: (data, *unsupported) for name, data in other_formats().items()},
    }
    return files


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (data, status, code) in sorted(corpus().items()):
        (OUT / name).write_bytes(data)
        manifest[name] = {"status": status, "code": code}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest)} files to {OUT}")


if __name__ == "__main__":
    main()
