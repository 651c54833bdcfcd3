"""Turn uploaded files into images (decoded in the decoder processes), or into an HTTP error that says what was wrong."""
from __future__ import annotations

import time
from dataclasses import dataclass

from PIL import Image
from werkzeug.datastructures import FileStorage

from training.decoding import ImageTooComplex, ImageTooLarge, NotAnImage

from .decoders import DecoderPool, DecodeTimeout


class UploadError(Exception):
    """A request we refuse, with its HTTP status, a machine code and a human message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    """One decoded upload; the file name is for display only and never touches the file system."""

    filename: str
    image: Image.Image


def display_name(raw: str | None, index: int) -> str:
    """A safe label for a client-supplied file name: no path, no control characters, bounded length."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:100].strip()
    return name or f"upload-{index + 1}"


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may make the decoders do: pixels per file and in all, and seconds in all."""

    max_files: int
    max_pixels: int
    max_request_pixels: int
    seconds: float


def read_uploads(files: list[FileStorage], pool: DecoderPool, limits: DecodeLimits,
                 clock=time.monotonic) -> list[Upload]:
    """Decode every uploaded file in the decoder processes; refuse the whole request on the first bad one."""
    files = [f for f in files if f is not None and (f.filename or f.content_length or f.mimetype)]
    if not files:
        raise UploadError(400, "no_file", "No file was uploaded: send one or more images in the 'file' field.")
    if len(files) > limits.max_files:
        raise UploadError(400, "too_many_files", f"At most {limits.max_files} images per request, got {len(files)}.")
    deadline, pixels_left = clock() + limits.seconds, limits.max_request_pixels
    uploads = []
    for index, storage in enumerate(files):
        name = display_name(storage.filename, index)
        data = storage.read()
        storage.close()  # the upload's bytes are the decoder's now; the request holds only the decoded image
        if not data:
            raise UploadError(400, "empty_file", f"'{name}' is empty.")
        seconds_left = deadline - clock()
        if seconds_left <= 0:
            raise UploadError(422, "decode_timeout", f"'{name}' and the images before it took longer than "
                                                     f"{limits.seconds:g} s to decode: send fewer or smaller images.")
        try:
            image, source_pixels = pool.decode(data, min(limits.max_pixels, pixels_left), seconds_left)
        except ImageTooLarge as exc:
            if pixels_left < limits.max_pixels:
                raise UploadError(422, "request_too_large", f"'{name}': the images of one request may hold "
                                  f"{limits.max_request_pixels:,} pixels in all; this one goes past it.") from exc
            raise UploadError(422, "image_too_large", f"'{name}': {exc}.") from exc
        except DecodeTimeout as exc:
            raise UploadError(422, "decode_timeout", f"'{name}': {exc}.") from exc
        except ImageTooComplex as exc:
            raise UploadError(422, "image_too_complex", f"'{name}' is not an image we can decode safely: {exc}.") from exc
        except NotAnImage as exc:
            raise UploadError(
                415, "unsupported_image",
                f"'{name}' is not an image we can read (JPEG, PNG, WebP, GIF, HEIC, AVIF, BMP, TIFF). {exc}",
            ) from exc
        pixels_left -= source_pixels
        uploads.append(Upload(name, image))
    return uploads


def parse_top_k(raw, default: int, n_classes: int) -> int:
    """`top_k` from a form or query: an integer from 1 to the number of classes."""
    if raw in (None, ""):
        return min(default, n_classes)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise UploadError(400, "bad_top_k", f"top_k must be an integer, got {str(raw)[:20]!r}.") from None
    if not 1 <= value <= n_classes:
        raise UploadError(400, "bad_top_k", f"top_k must be between 1 and {n_classes}, got {value}.")
    return value
