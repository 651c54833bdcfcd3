"""Decoding handles every valid kind of image the same way, and refuses the rest clearly."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import encode
from training.imaging import ImageTooLarge, NotAnImage, open_image, square_pad, to_batch


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    img = open_image(encode(Image.new(mode, (40, 20)), fmt))
    assert img.mode == "RGB" and img.size == (40, 20)


def test_transparency_is_flattened_onto_white():
    img = open_image(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img = open_image(encode(Image.new("RGB", (60, 30)), "JPEG", exif=exif))
    assert img.size == (30, 60)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert open_image(buffer.getvalue()).getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("payload", [b"", b"hello world", b"<html></html>", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_non_images_are_refused(payload):
    with pytest.raises(NotAnImage):
        open_image(payload)


def test_truncated_jpeg_is_refused():
    data = encode(Image.new("RGB", (200, 200), (10, 200, 30)), "JPEG")
    with pytest.raises(NotAnImage):
        open_image(data[: len(data) // 2])


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageTooLarge, match="5000x5000"):
        open_image(data, max_pixels=1_000_000)


def test_square_pad_keeps_the_whole_guitar_and_pads_white():
    tall = Image.new("RGB", (50, 100), (0, 0, 0))
    out = square_pad(tall, 64)
    arr = np.asarray(out)
    assert out.size == (64, 64)
    assert (arr[:, 0] == 255).all() and (arr[32, 32] == 0).all()


def test_to_batch_normalises_per_channel_into_contiguous_nchw():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(2)]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = to_batch(images, 12, mean, std)
    assert batch.shape == (2, 3, 12, 12) and batch.dtype == torch.float32 and batch.is_contiguous()
    pixels = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images]).transpose(0, 3, 1, 2)
    expected = (pixels - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(batch.numpy(), expected, atol=1e-5)


def test_a_heif_is_decoded_at_its_primary_image_not_its_first():
    import pillow_heif

    heif = pillow_heif.from_pillow(Image.new("RGB", (64, 48), (255, 0, 0)))
    heif.add_from_pillow(Image.new("RGB", (32, 24), (0, 0, 255)))
    buffer = io.BytesIO()
    heif.save(buffer, quality=90, primary_index=1)
    img = open_image(buffer.getvalue())
    assert img.size == (32, 24) and img.getpixel((16, 12))[2] > 200


def test_large_photos_decode_to_the_bounded_side_and_16_bit_keeps_its_range():
    assert open_image(encode(Image.new("RGB", (4000, 3000), (9, 99, 199)), "JPEG")).size == (1024, 768)
    grey = open_image(encode(Image.new("I;16", (300, 10), 40000), "PNG"))
    assert grey.getpixel((5, 5)) == (255, 255, 255)
