"""Turn uploaded files into images, or into an HTTP error that says what was wrong."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from werkzeug.datastructures import FileStorage

from training.imaging import ImageTooLarge, NotAnImage, open_image


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


def read_uploads(files: list[FileStorage], max_files: int, max_pixels: int) -> list[Upload]:
    """Decode every uploaded file in memory; refuse the whole request on the first bad one."""
    files = [f for f in files if f is not None and (f.filename or f.content_length or f.mimetype)]
    if not files:
        raise UploadError(400, "no_file", "No file was uploaded: send one or more images in the 'file' field.")
    if len(files) > max_files:
        raise UploadError(400, "too_many_files", f"At most {max_files} images per request, got {len(files)}.")
    uploads = []
    for index, storage in enumerate(files):
        name = display_name(storage.filename, index)
        data = storage.read()
        if not data:
            raise UploadError(400, "empty_file", f"'{name}' is empty.")
        try:
            image = open_image(data, max_pixels=max_pixels)
        except ImageTooLarge as exc:
            raise UploadError(422, "image_too_large", f"'{name}': {exc}.") from exc
        except NotAnImage as exc:
            raise UploadError(
                415, "unsupported_image",
                f"'{name}' is not an image we can read (JPEG, PNG, WebP, GIF, HEIC, AVIF, BMP, TIFF). {exc}",
            ) from exc
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
