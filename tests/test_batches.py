"""One loop opens image files in batches for a model, skipping unreadable ones as `Unreadable`; `flask evaluate`'s
result is one `Evaluation`, whole from the start."""
import json
import shutil

import numpy as np
import pytest

from tests.helpers import encode
from training.batches import Unreadable, forward_files, image_batches
from training.decoding import ImageError
from training.evaluate import evaluate_folder
from training.inference import Predictor
from training.runfiles import validation_paths


@pytest.fixture
def folder(tmp_path):
    """Seven paths: photos of five shades of red, with a file that is no image at 1 and a missing one at 3."""
    from PIL import Image

    paths = []
    for k in range(7):
        path = tmp_path / "photos" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        if k == 1:
            path.write_text("not an image")
        elif k != 3:
            path.write_bytes(encode(Image.new("RGB", (8, 8), (k * 30, 0, 0)), "PNG"))
        paths.append(path)
    return paths


def test_batches_are_full_of_readable_images_and_the_unreadable_are_noted(folder, tmp_path):
    unreadable = []
    batches = list(image_batches(folder, 2, unreadable, root=tmp_path))
    assert [indices for indices, _ in batches] == [[0, 2], [4, 5], [6]]
    assert [img.getpixel((0, 0))[0] for _, images in batches for img in images] == [0, 60, 120, 150, 180]
    assert [u.file for u in unreadable] == ["photos/1.png", "photos/3.png"]
    assert all(isinstance(u, Unreadable) and u.reason for u in unreadable)
    assert unreadable[0].to_json() == {"file": "photos/1.png", "reason": unreadable[0].reason}
    file, reason = unreadable[0]  # a named pair, as DatasetScan.unreadable has always held
    assert (file, reason) == ("photos/1.png", unreadable[0].reason)


def test_without_a_list_for_them_an_unreadable_file_raises(folder):
    with pytest.raises(ImageError):
        list(image_batches(folder, 2))


def test_forward_files_gives_one_row_per_file_in_order(folder):
    readable = [p for k, p in enumerate(folder) if k not in (1, 3)]
    rows = forward_files(lambda batch: batch.mean(dim=(2, 3)), readable, 2, 8, (0, 0, 0), (1, 1, 1))
    assert rows.shape == (5, 3) and rows.dtype == np.float32
    assert np.allclose(rows[:, 0], [k * 30 / 255 for k in (0, 2, 4, 5, 6)], atol=2e-3)
    assert forward_files(lambda batch: batch, [], 2, 8, (0, 0, 0), (1, 1, 1)).shape == (0, 0)


def test_an_evaluation_is_whole_from_the_start(runner, trained_run, demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    (data / "les_paul" / "broken.jpg").write_text("not a photo")
    (tmp_path / "ood" / "drawn").mkdir(parents=True)
    for k in range(3):
        shutil.copy(next((demo_data / "flying_v").glob("*.jpg")), tmp_path / "ood" / "drawn" / f"{k}.jpg")
    predictor = Predictor.load(trained_run, runtime="torch")
    only = validation_paths(trained_run) | {"les_paul/broken.jpg"}
    evaluation = evaluate_folder(predictor, data, progress=False, only=only, views=True, ood_dir=tmp_path / "ood")
    assert evaluation.unreadable == [Unreadable("les_paul/broken.jpg", evaluation.unreadable[0].reason)]
    assert len(evaluation.scope_scores) == evaluation.metrics["n"] == len(only) - 1
    printed = evaluation.to_json()
    assert printed["unreadable"] == [{"file": "les_paul/broken.jpg", "reason": evaluation.unreadable[0].reason}]
    assert set(printed) == {"n", "accuracy", "macro_f1", "per_class", "confusion_matrix", "most_confused", "classes",
                            "names", "tta", "unknown_classes", "unreadable", "decisions", "mistakes", "scope", "views",
                            "groups", "out_of_scope"}
    assert set(printed["scope"]) == {"threshold", "rejected"}  # the per-photo scores are not printed
    assert printed["views"]["full"]["n"] == printed["n"] and printed["out_of_scope"]["drawn"]["n"] == 3
    assert json.loads(json.dumps(printed)) == printed
    plain = evaluate_folder(predictor, data, progress=False, only=only)
    assert plain.views is None and plain.out_of_scope is None and "views" not in plain.to_json()

    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(data), "--valid-only",
                                 "--views", "--ood", str(tmp_path / "ood"), "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.output)
    assert set(cli) == set(printed) and cli["n"] == printed["n"] and cli["unreadable"] == []
    assert cli["views"].keys() == printed["views"].keys() and "scores" not in cli["scope"]
    assert cli["out_of_scope"]["drawn"]["n"] == 3
