"""Image files opened in batches for a model, the unreadable ones skipped and noted: one loop for evaluation,
`flask predict`, the scope detector's features and the review queue's."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .decoding import ImageError, open_image
from .imaging import to_batch

if TYPE_CHECKING:
    import torch


class Unreadable(NamedTuple):
    """A file that could not be decoded: its name (as the caller lists its files) and why."""

    file: str
    reason: str

    def to_json(self) -> dict:
        return {"file": self.file, "reason": self.reason}


def image_batches(paths: Sequence[Path], batch_size: int, unreadable: list[Unreadable] | None = None,
                  root: Path | None = None, progress: bool = False,
                  desc: str | None = None) -> Iterator[tuple[list[int], list[Image.Image]]]:
    """The files' decoded images, up to `batch_size` at a time, with their indices in `paths`, in order.

    With an `unreadable` list, a file that cannot be decoded is noted there (named relative to `root`, if given) and
    skipped; without one, it raises: for files known to be readable, whose rows must stay aligned with their labels.
    """
    indices: list[int] = []
    images: list[Image.Image] = []
    for index, path in enumerate(tqdm(paths, desc=desc, disable=not progress, unit="photo")):
        try:
            images.append(open_image(path))
        except (ImageError, OSError) as exc:
            if unreadable is None:
                raise
            unreadable.append(Unreadable(str(Path(path).relative_to(root) if root else path), str(exc)))
            continue
        indices.append(index)
        if len(images) == batch_size:
            yield indices, images
            indices, images = [], []
    if images:
        yield indices, images


def forward_files(forward: Callable[[torch.Tensor], torch.Tensor], paths: Sequence[Path], batch_size: int,
                  size: int, mean, std, progress: bool = False, desc: str | None = None) -> np.ndarray:
    """`forward`'s output rows (float32) for readable image files, preprocessed as serving does; (0, 0) for none."""
    outputs = [forward(to_batch(images, size, mean, std)).float().numpy()
               for _, images in image_batches(paths, batch_size, progress=progress, desc=desc)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
