"""Views people photograph: finding the guitar on white, cutting its parts, close-ups in training, `evaluate --views`."""
import json
import random

import numpy as np
import pytest
from fastai.vision.core import PILImage
from PIL import Image, ImageDraw

from training.views import VIEWS, CloseUp, angled, foreground, guitar_axis, view_crops

RED, BLUE = (200, 20, 20), (20, 20, 200)


def drawn_guitar(angle: float = 0.0) -> Image.Image:
    """A blue body at the bottom, a neck up to a red headstock at the top, on white; then turned by `angle`."""
    img = Image.new("RGB", (300, 300), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((100, 170, 200, 270), fill=BLUE)
    draw.rectangle((143, 60, 157, 180), fill=(120, 80, 40))
    draw.rectangle((138, 25, 162, 60), fill=RED)
    return img.rotate(angle, Image.BILINEAR, fillcolor="white")


def share(img: Image.Image, colour) -> float:
    pixels = np.asarray(img).astype(int)
    return float((np.abs(pixels - colour).sum(axis=2) < 60).mean())


@pytest.mark.parametrize("angle", [0, 90, 180, 270, 35])
def test_the_axis_points_from_the_body_to_the_narrow_headstock_end(angle):
    img = drawn_guitar(angle)
    points, found = foreground(img)
    assert found
    centre, axis, (low, high) = guitar_axis(points)
    headstock = centre + axis * high
    red = np.argwhere(np.abs(np.asarray(img).astype(int) - RED).sum(axis=2) < 60).mean(axis=0)[::-1]  # (x, y)
    assert np.linalg.norm(headstock - red) < 30


def test_the_part_views_show_the_part_they_are_named_for():
    views = view_crops(drawn_guitar(90), 0)
    assert list(views) == list(VIEWS)
    assert share(views["headstock"], RED) > 0.1 and share(views["headstock"], BLUE) == 0
    assert share(views["body"], BLUE) > 0.3 and share(views["body"], RED) == 0
    assert share(views["bridge"], BLUE) > 0.5
    assert views["off-centre"].size == (180, 180)
    assert views["rotated"].size != (300, 300)  # turned with the corners kept, not cut off


def test_a_photo_not_on_white_gets_no_part_views_but_the_rest():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 200, (120, 160, 3), dtype=np.uint8))
    assert not foreground(noise)[1]
    assert list(view_crops(noise, 1)) == ["full", "rotated", "angled", "off-centre"]


@pytest.mark.parametrize("far_right", [True, False])
def test_an_angled_view_is_narrower_with_its_far_side_shorter(far_right):
    img = Image.new("RGB", (200, 100), BLUE)
    view = np.asarray(angled(img, far_right)).astype(int)
    assert view.shape == (100, 200, 3)

    def is_blue(x, y):
        return np.abs(view[y, x] - BLUE).sum() < 60

    near, far = (30, 168) if far_right else (168, 30)  # just inside the left and right edges of the narrowed photo
    assert is_blue(near, 1) and is_blue(near, 98)  # the near side keeps its height
    assert not is_blue(far, 5) and not is_blue(far, 94) and is_blue(far, 50)  # the far side is shorter, centred
    assert not is_blue(2, 50) and not is_blue(197, 50)  # and the whole is narrower, on white


def test_close_ups_are_for_training_only_and_stay_on_the_guitar():
    random.seed(0)
    img = PILImage(drawn_guitar())
    close_up = CloseUp(p=1.0)
    assert close_up(img, split_idx=1) is img  # validation photos are never cropped
    crops = [close_up(img, split_idx=0) for _ in range(20)]
    assert all(crop.size[0] < 300 for crop in crops)
    # each is centred on a pixel of the guitar, so none is all background
    assert all(share(crop, (255, 255, 255)) < 0.97 for crop in crops)
    assert all(CloseUp(p=0.0)(img, split_idx=0) is img for _ in range(5))


def test_evaluate_scores_each_view_of_the_validation_photos(runner, trained_run, demo_data):
    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(demo_data), "--json",
                                 "--valid-only", "--views"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    valid = [item for item in json.loads((trained_run / "split.json").read_text())["items"] if item["is_valid"]]
    assert scores["n"] == len(valid) < 42
    assert scores["views"]["full"]["n"] == len(valid)
    assert scores["views"]["full"]["accuracy"] == pytest.approx(scores["accuracy"], abs=1e-4)
    settings = {"full on white", "full in a setting"}
    assert set(scores["views"]) - settings <= set(VIEWS) and {"rotated", "angled", "off-centre"} <= set(scores["views"])
    assert sum(scores["views"][name]["n"] for name in settings & set(scores["views"])) == len(valid)
    for row in scores["views"].values():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["unsure"] <= 1 and 0 <= row["out_of_scope"] <= 1
        matrix = np.array(row["confusion_matrix"])
        assert matrix.sum() == row["n"] and np.trace(matrix) == pytest.approx(row["accuracy"] * row["n"], abs=0.5)

    summary = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(demo_data), "--views"])
    assert "off-centre" in summary.output and "sure right" in summary.output


def test_valid_only_needs_the_run_directory(runner, trained_run, demo_data, tmp_path):
    lone = tmp_path / "export.pkl"
    lone.write_bytes((trained_run / "export.pkl").read_bytes())
    (tmp_path / "report.json").write_text((trained_run / "report.json").read_text())
    result = runner.invoke(args=["evaluate", "--model", str(lone), "--data", str(demo_data), "--valid-only"])
    assert result.exit_code == 1 and "split.json does not exist" in result.output
