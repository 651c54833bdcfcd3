"""The one home of image decoding and preprocessing, shared by training, evaluation and serving."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from fastai.vision.core import PILImage, Transform
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
PAD_COLOUR = (255, 255, 255)  # product photos are padded with white, so we pad the same way
# What phones, cameras and browsers produce; every other parser Pillow has is attack surface nobody asked for.
# (MPO, the multi-picture JPEG of many phones, opens through the JPEG plugin.)
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF", "BMP", "TIFF") if f in Image.OPEN)
# Pixel modes those formats decode to; float and exotic modes (scientific TIFF) are refused.
MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L",
         "I;16N"}
# Each progressive JPEG scan costs time over every block of the image, whatever its size in bytes: a file repeating
# a tiny scan thousands of times holds a thread for a minute. Scans x pixels bounds decode time (~1 s here).
MAX_JPEG_SCAN_PIXELS = 1_000_000_000
JPEG_SOS = b"\xff\xda"  # start-of-scan marker; entropy-coded data stuffs every 0xFF, so it cannot fake one


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's guard for a configured limit above the default (never lowers it)."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, int(max_pixels))


class ImageError(ValueError):
    """An upload or file that is not a usable image."""


class NotAnImage(ImageError):
    """The bytes are not an image format we can decode."""


class ImageTooLarge(ImageError):
    """The image declares more pixels than we are willing to decode."""


def open_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a path, bytes or file object into an upright RGB image (first frame, EXIF applied, alpha on white)."""
    data = _read_bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
            if img.mode not in MODES:
                raise NotAnImage(f"{img.format} images with {img.mode!r} pixels are not supported")
            scans = data.count(JPEG_SOS) if img.format in ("JPEG", "MPO") else 0
            if scans * width * height > MAX_JPEG_SCAN_PIXELS:
                raise NotAnImage(f"the JPEG has {scans} scans, far more than any camera writes")
            img.seek(0)
            img.load()
    except (ImageTooLarge, NotAnImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image declares more pixels than allowed ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage("the file format was not recognised") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise NotAnImage(f"the image data is damaged or truncated ({exc.__class__.__name__})") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the user a prediction
        pass
    return to_rgb(img)


def _read_bytes(source) -> bytes:
    """The whole file as bytes, from a path, bytes or a binary file object."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return fh.read()
    return source.read()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, CMYK, 16-bit, alpha) to 8-bit RGB, flattening transparency onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, PAD_COLOUR)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def square_pad(img: Image.Image, size: int) -> Image.Image:
    """Resize the longer side to `size`, then pad to a white square (never crop: guitars are long)."""
    width, height = img.size
    # Resize first: padding first would build a max(w, h)^2 canvas, 40 GB for a 1x200000 image.
    if max(width, height) != size:
        scale = size / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        img = img.resize((width, height), Image.BILINEAR, reducing_gap=3.0)
    if width == height:
        return img
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    canvas.paste(img, ((size - width) // 2, (size - height) // 2))
    return canvas


class SquarePad(Transform):
    """fastai item transform wrapping `square_pad`, so training and serving resize identically."""

    order = 1

    def __init__(self, size: int):
        self.size = int(size)

    def encodes(self, img: PILImage) -> PILImage:
        return PILImage(square_pad(img, self.size))


def load_rgb(source) -> PILImage:
    """fastai type transform: any path, bytes or Pillow image to an upright RGB `PILImage`."""
    if isinstance(source, Image.Image):
        return PILImage(to_rgb(source))
    return PILImage(open_image(source))


def to_batch(images, size: int, mean, std) -> torch.Tensor:
    """Preprocess RGB images into one contiguous normalised float batch (N, 3, size, size), as fastai's pipeline does."""
    pixels = np.stack([np.asarray(square_pad(img, size), dtype=np.uint8) for img in images])
    std = np.asarray(std, dtype=np.float32)
    scale, shift = 1.0 / (255.0 * std), -np.asarray(mean, dtype=np.float32) / std
    # (x / 255 - mean) / std as one multiply-add per channel, written straight into NCHW order: one pass, not three.
    batch = np.empty((len(pixels), 3, size, size), dtype=np.float32)
    for channel in range(3):
        np.multiply(pixels[..., channel], scale[channel], out=batch[:, channel], casting="unsafe")
        batch[:, channel] += shift[channel]
    return torch.from_numpy(batch)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for file names with an image extension we train on."""
    return str(path).lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".heic", ".heif", ".tif", ".tiff"))
