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
PAD_COLOUR = (255, 255, 255)  # product photos are padded with white, so we pad the same way
# open_image checks the declared size against its own limit before decoding, so Pillow's global guard
# (which would fire first, with a different limit and message) is switched off in favour of ours.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An upload or file that is not a usable image."""


class NotAnImage(ImageError):
    """The bytes are not an image format we can decode."""


class ImageTooLarge(ImageError):
    """The image declares more pixels than we are willing to decode."""


def open_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a path, bytes or file object into an upright RGB image (first frame, EXIF applied, alpha on white)."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
            img.seek(0)
            img.load()
    except ImageTooLarge:
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
    """Pad to a white square (never crop: guitars are long) and resize to `size` x `size`."""
    width, height = img.size
    if width != height:
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), PAD_COLOUR)
        canvas.paste(img, ((side - width) // 2, (side - height) // 2))
        img = canvas
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return img


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
    # (x / 255 - mean) / std as one multiply-add per channel, written straight into NCHW order: about 1.5x faster
    # per request than converting, permuting and normalising in separate passes.
    batch = np.empty((len(pixels), 3, size, size), dtype=np.float32)
    for channel in range(3):
        np.multiply(pixels[..., channel], scale[channel], out=batch[:, channel], casting="unsafe")
        batch[:, channel] += shift[channel]
    return torch.from_numpy(batch)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for file names with an image extension we train on."""
    return str(path).lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".heic", ".heif", ".tif", ".tiff"))
