"""The views people photograph: close-ups of a guitar's parts, rotated and off-centre shots, cut from full shots."""
from __future__ import annotations

import random

import numpy as np
from fastai.vision.augment import RandTransform
from fastai.vision.core import PILImage
from PIL import Image

from .imaging import PAD_COLOUR

# Training draws random close-ups (`CloseUp`); evaluation cuts fixed views from validation photos (`view_crops`).
# Both find the guitar the same way: product shots are on white, so what is not near-white is the guitar.

MASK_SIDE = 96  # the guitar is found on a copy this small: its outline, not its detail, is needed
NEAR_WHITE = 235  # a pixel with every channel at least this is background
MIN_FOREGROUND = 0.01  # less than this share of the photo off-white: no guitar found, the whole photo counts
MAX_FOREGROUND = 0.6  # more than this off-white: not a shot on white, so the outline is not the guitar's
VIEWS = ("full", "headstock", "body", "bridge", "rotated", "angled", "off-centre")
ROTATION_DEGREES = 35  # steeper than training's tilts, as a hand-held photo can be
ANGLED_FAR_SIDE = 0.6  # an angled shot: the far side is this share of the near side's height...
ANGLED_WIDTH = 0.75  # ...and the photo this share of its width, as a camera turned about 40 degrees sees it
OFF_CENTRE_SIDE = 0.6  # an off-centre shot keeps this share of the photo's side, in one corner


def foreground(img: Image.Image) -> tuple[np.ndarray, bool]:
    """(x, y) of the guitar's pixels, found on a small copy, and whether a guitar on white was found (else all)."""
    small = img.copy()
    small.thumbnail((MASK_SIDE, MASK_SIDE))
    pixels = np.asarray(small.convert("RGB"))
    ys, xs = np.nonzero(pixels.min(axis=2) < NEAR_WHITE)
    found = MIN_FOREGROUND <= len(xs) / (pixels.shape[0] * pixels.shape[1]) <= MAX_FOREGROUND
    if not found:
        ys, xs = np.indices(pixels.shape[:2]).reshape(2, -1)
    scale = img.width / small.width, img.height / small.height
    return np.stack([(xs + 0.5) * scale[0], (ys + 0.5) * scale[1]], axis=1), found


def square_crop(img: Image.Image, centre, side: float) -> Image.Image:
    """A `side`-pixel square around `centre`; whatever falls outside the photo is white."""
    half = side / 2
    box = tuple(int(round(v)) for v in (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half))
    if box[0] >= 0 and box[1] >= 0 and box[2] <= img.width and box[3] <= img.height:
        return img.crop(box)
    canvas = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), PAD_COLOUR)
    canvas.paste(img, (-box[0], -box[1]))
    return canvas


class CloseUp(RandTransform):
    """fastai item transform, training only: with probability `p`, a square close-up of part of the guitar."""

    split_idx, order = 0, 0  # before SquarePad (order 1), on the photo at its own size

    def __init__(self, p: float, scale: tuple[float, float] = (0.06, 0.4)):
        super().__init__(p=p)
        self.scale = scale  # the range of the close-up's share of the photo's area

    def encodes(self, img: PILImage) -> PILImage:
        points, _ = foreground(img)
        centre = points[random.randrange(len(points))]
        side = np.sqrt(random.uniform(*self.scale) * img.width * img.height)
        return PILImage(square_crop(img, centre, side))


def guitar_axis(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The guitar's centre, its long axis pointing from the body to the headstock, and its extent along that axis."""
    centre = points.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((points - centre).T))
    axis = vectors[:, -1]  # the direction of most spread: along the neck
    along = (points - centre) @ axis
    across = np.abs((points - centre) @ vectors[:, 0])
    low, high = np.quantile(along, [0.01, 0.99])
    # The headstock end is the narrow one: compare the width of the outer fifth at each end.
    fifth = (high - low) / 5
    if np.median(across[along > high - fifth]) > np.median(across[along < low + fifth]):
        axis, (low, high) = -axis, (-high, -low)
    return centre, axis, np.array([low, high])


def part_crops(img: Image.Image, points: np.ndarray) -> dict[str, Image.Image]:
    """Close-ups of the headstock, the body and the bridge of the guitar whose pixels are `points`."""
    centre, axis, (low, high) = guitar_axis(points)
    length = high - low

    def at(fraction: float):  # a point on the axis, `fraction` of the way from the body's end to the headstock's
        return centre + axis * (low + fraction * length)

    return {"headstock": square_crop(img, at(0.9), 0.3 * length), "body": square_crop(img, at(0.25), 0.5 * length),
            "bridge": square_crop(img, at(0.18), 0.25 * length)}


def perspective_data(size: tuple[int, int], corners) -> tuple[float, ...]:
    """PIL's PERSPECTIVE data that puts a photo of `size`'s corners (clockwise from top left) at `corners`."""
    rows, values = [], []
    for (x, y), (u, v) in zip(corners, [(0, 0), (size[0], 0), size, (0, size[1])]):  # output -> input pixel
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        values += [u, v]
    return tuple(np.linalg.solve(np.array(rows, float), np.array(values, float)))


def angled(img: Image.Image, far_right: bool) -> Image.Image:
    """The photo as seen by a camera turned to one side: the far side shorter and the whole narrower, on white."""
    width, height = img.size
    left, right = width * (1 - ANGLED_WIDTH) / 2, width * (1 + ANGLED_WIDTH) / 2
    inset = height * (1 - ANGLED_FAR_SIDE) / 2
    near, far = (0, height), (inset, height - inset)
    (left_top, left_bottom), (right_top, right_bottom) = (near, far) if far_right else (far, near)
    corners = [(left, left_top), (right, right_top), (right, right_bottom), (left, left_bottom)]
    return img.transform(img.size, Image.PERSPECTIVE, perspective_data(img.size, corners), Image.BILINEAR,
                         fillcolor=PAD_COLOUR)


def view_crops(img: Image.Image, index: int = 0) -> dict[str, Image.Image]:
    """The photo and fixed views of it (VIEWS; part close-ups only from shots on white); `index` varies side and corner."""
    points, found = foreground(img)
    corner = index % 4
    side = OFF_CENTRE_SIDE * img.width, OFF_CENTRE_SIDE * img.height
    left = 0 if corner in (0, 3) else img.width - side[0]
    top = 0 if corner < 2 else img.height - side[1]
    return {
        "full": img,
        **(part_crops(img, points) if found else {}),
        "rotated": img.rotate(ROTATION_DEGREES * (1 if index % 2 else -1), Image.BILINEAR, expand=True,
                              fillcolor=PAD_COLOUR),
        "angled": angled(img, far_right=index % 2 == 0),
        "off-centre": img.crop(tuple(int(v) for v in (left, top, left + side[0], top + side[1]))),
    }
