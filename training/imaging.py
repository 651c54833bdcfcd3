"""Preprocessing shared by training, evaluation and serving: square padding, fastai transforms, batches."""
from __future__ import annotations

import os

import numpy as np
import torch
from fastai.vision.core import PILImage, Transform
from PIL import Image

from .decoding import (  # noqa: F401 - decoding's names, re-exported for the modules that preprocess
    FORMATS,
    MAX_PIXELS,
    PAD_COLOUR,
    ImageError,
    ImageTooComplex,
    ImageTooLarge,
    NotAnImage,
    allow_pixels,
    open_image,
    to_rgb,
)


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
