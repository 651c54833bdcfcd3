"""Generate the embedded demo dataset: drawn guitar silhouettes, so a fresh checkout can train with no downloads."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from .classnames import CLASS_NAMES_FILE

# Body outlines in a unit box (x right, y down, neck leaving the top centre), as polygons to fill and to cut away.
Shape = tuple[list[list[tuple[float, float]]], list[list[tuple[float, float]]]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> list[tuple[float, float]]:
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _stratocaster() -> Shape:
    fill = [_ellipse(0, 0.25, 0.42, 0.32), _ellipse(0, -0.05, 0.34, 0.28),
            _ellipse(-0.26, -0.3, 0.1, 0.2), _ellipse(0.24, -0.22, 0.1, 0.16)]
    cut = [_ellipse(-0.09, -0.38, 0.08, 0.16), _ellipse(0.11, -0.34, 0.07, 0.12)]
    return fill, cut


def _telecaster() -> Shape:
    fill = [_ellipse(0, 0.25, 0.4, 0.3), [(-0.36, 0.2), (-0.3, -0.4), (-0.08, -0.42), (0.05, -0.1), (0.32, 0.0),
                                          (0.4, 0.2)]]
    return fill, []


def _les_paul() -> Shape:
    fill = [_ellipse(0, 0.22, 0.4, 0.33), _ellipse(-0.04, -0.16, 0.3, 0.26)]
    cut = [_ellipse(0.26, -0.32, 0.14, 0.16)]
    return fill, cut


def _sg() -> Shape:
    fill = [_ellipse(0, 0.2, 0.38, 0.3), [(-0.38, 0.15), (-0.3, -0.45), (-0.08, -0.05), (0.08, -0.05),
                                          (0.3, -0.45), (0.38, 0.15)]]
    cut = [_ellipse(-0.12, -0.36, 0.09, 0.2), _ellipse(0.12, -0.36, 0.09, 0.2)]
    return fill, cut


def _flying_v() -> Shape:
    fill = [[(-0.08, -0.42), (0.08, -0.42), (0.45, 0.5), (0.28, 0.5), (0.0, -0.02), (-0.28, 0.5), (-0.45, 0.5)]]
    return fill, []


def _explorer() -> Shape:
    fill = [[(-0.1, -0.4), (0.12, -0.4), (0.2, -0.18), (0.5, -0.55), (0.55, -0.35), (0.3, 0.1), (0.45, 0.45),
             (-0.2, 0.45), (-0.45, 0.2), (-0.22, -0.05)]]
    return fill, []


SHAPES = {
    "stratocaster": _stratocaster,
    "telecaster": _telecaster,
    "les_paul": _les_paul,
    "sg": _sg,
    "flying_v": _flying_v,
    "explorer": _explorer,
}


def _colour(rng: random.Random, light: bool) -> tuple[int, int, int]:
    low, high = (170, 255) if light else (0, 200)
    return tuple(rng.randint(low, high) for _ in range(3))


def draw_guitar(kind: str, size: int, rng: random.Random) -> Image.Image:
    """One photo-like drawing of a guitar of `kind`: random colours, background, scale, rotation and position."""
    fill, cut = SHAPES[kind]()
    canvas = size * 2  # draw large, then rotate and shrink: smoother edges
    scale = canvas * rng.uniform(0.36, 0.46)
    centre = (canvas / 2, canvas / 2 + scale * 0.45)

    def to_px(points):
        return [(centre[0] + x * scale, centre[1] + y * scale) for x, y in points]

    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in fill:
        draw.polygon(to_px(polygon), fill=255)
    for polygon in cut:
        draw.polygon(to_px(polygon), fill=0)
    # Neck and headstock, shared by every model.
    neck = [(-0.05, -0.2), (0.05, -0.2), (0.05, -1.15), (-0.05, -1.15)]
    head = [(-0.07, -1.15), (0.09, -1.15), (0.12, -1.45), (-0.06, -1.45)]
    draw.polygon(to_px(neck), fill=200)
    draw.polygon(to_px(head), fill=200)

    background = Image.new("RGB", (canvas, canvas), _colour(rng, light=rng.random() < 0.7))
    body_colour = Image.new("RGB", (canvas, canvas), _colour(rng, light=False))
    image = Image.composite(body_colour, background, mask.point(lambda v: 255 if v == 255 else 0))
    wood = Image.new("RGB", (canvas, canvas), (rng.randint(90, 160), rng.randint(50, 100), rng.randint(10, 50)))
    image = Image.composite(wood, image, mask.point(lambda v: 255 if v == 200 else 0))
    details = ImageDraw.Draw(image)
    for offset in (0.05, 0.2):  # pickups
        x, y = centre[0], centre[1] + offset * scale
        details.rectangle([x - 0.12 * scale, y - 0.03 * scale, x + 0.12 * scale, y + 0.03 * scale], fill=(20, 20, 20))

    image = image.rotate(rng.uniform(-35, 35), resample=Image.BILINEAR, fillcolor=background.getpixel((0, 0)),
                         center=(canvas / 2 + rng.uniform(-0.08, 0.08) * canvas, canvas / 2))
    image = image.resize((size, size), Image.BILINEAR)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return image


DISPLAY_NAMES = {"sg": "SG"}
MAKERS = {"fender": ("stratocaster", "telecaster"), "gibson": ("les_paul", "sg", "flying_v", "explorer")}


def make_demo_dataset(out: str | Path, per_class: int = 80, size: int = 160, seed: int = 0,
                      classes: list[str] | None = None, progress: bool = True) -> Path:
    """Write `out/<class>/NNNN.jpg` for each demo class; existing files are kept (the result is deterministic)."""
    out = Path(out)
    classes = classes or list(SHAPES)
    jobs = [(kind, k) for kind in classes for k in range(per_class)]
    for kind, k in tqdm(jobs, desc="Drawing demo guitars", disable=not progress):
        path = out / kind / f"{k:04d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"{seed}-{kind}-{k}")
        tmp = path.with_suffix(".tmp")
        draw_guitar(kind, size, rng).save(tmp, format="JPEG", quality=90)
        tmp.replace(path)
    (out / CLASS_NAMES_FILE).write_text(classes_toml(classes))
    return out


def classes_toml(classes: list[str]) -> str:
    """DATA/classes.toml as a user would write it: the names the folder ids can't spell, the makers as groups, and
    what they all are."""
    names = [f'{kind} = "{DISPLAY_NAMES[kind]}"\n' for kind in classes if kind in DISPLAY_NAMES]
    groups = [f"{maker} = [{', '.join(json.dumps(k) for k in kinds if k in classes)}]\n"
              for maker, kinds in MAKERS.items() if any(k in classes for k in kinds)]
    return "".join(names) + ("\n[groups]\n" + "".join(groups) if groups else "") + GUITAR_KIND


GUITAR_KIND = '\n[kind]\nname = "guitar"\nimagenet = ["electric guitar", "acoustic guitar"]\n'

