"""A real smoke training run: its files, its learner, its report, resume and clear refusals."""
import csv
import json
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.helpers import SMOKE_CLASSES, elastic_recipe
from training.demo import draw_guitar
from training.imaging import open_image, square_pad
from training.inference import Predictor
from training.learner import GuitarModel
from training.mistakes import mistake_rows
from training.runfiles import read_report
from training.runtimes import probability_tolerance


def test_run_writes_every_output(trained_run):
    for name in ["export.pkl", "report.json", "confusion_matrix.png", "top_losses.png", "mistakes.csv", "split.json",
                 "state.json"]:
        assert (trained_run / name).is_file(), name
    assert not list(trained_run.glob("*.tmp"))


def test_report_has_the_blogs_table_and_validation_metrics(trained_run):
    report = read_report(trained_run)
    assert report["classes"] == sorted(SMOKE_CLASSES)
    assert [s["stage"] for s in report["stages"]] == ["frozen-64", "unfrozen-64"]
    row = report["stages"][0]["epochs"][0]
    assert set(row) == {"epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "seconds"}
    assert abs(row["accuracy"] + row["error_rate"] - 1) < 1e-6
    val = report["validation"]
    matrix = np.array(val["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == val["n"] > 0
    assert val["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert set(val["per_class"]) == set(SMOKE_CLASSES)
    assert report["weights"].startswith("ImageNet")
    assert report["split_seed"] == 7 and len(report["dataset"]["fingerprint"]) == 16
    assert report["packages"]["fastai"] == "2.8.12"
    cal = report["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    assert report["unsure_below"] == cal["unsure_below"] and 0 < cal["unsure_below"] <= 1


def test_mistakes_csv_lists_exactly_the_misclassified_validation_photos(trained_run):
    report = read_report(trained_run)
    with open(trained_run / "mistakes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    matrix = np.array(report["validation"]["confusion_matrix"])
    assert len(rows) == matrix.sum() - np.trace(matrix)
    valid = {r["path"]: r["label"] for r in json.loads((trained_run / "split.json").read_text())["items"]
             if r["is_valid"]}
    for row in rows:
        assert valid[row["file"]] == row["label"] != row["predicted"]
        assert float(row["p_label"]) <= float(row["p_predicted"])


def test_mistake_rows_put_the_most_confidently_wrong_first():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.05, 0.95]])
    rows = mistake_rows(["a", "b", "c", "d"], probs, np.array([0, 0, 1, 0]), ["x", "y"])
    assert [r["file"] for r in rows] == ["d", "b"]
    assert rows[0] == {"file": "d", "label": "x", "predicted": "y", "p_predicted": 0.95, "p_label": 0.05}


@pytest.mark.slow
def test_export_loads_in_a_process_that_imports_only_the_inference_module(trained_run, demo_data):
    image = next((demo_data / "flying_v").glob("*.jpg"))
    code = textwrap.dedent(f"""
        from pathlib import Path
        from fastai.learner import load_learner
        import training.inference
        learn = load_learner({str(trained_run / 'export.pkl')!r}, cpu=True)
        label, index, probs = learn.predict(Path({str(image)!r}))
        print(len(probs), list(learn.dls.vocab))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"3 {sorted(SMOKE_CLASSES)}"


def test_fast_path_equals_learn_predict(trained_run, demo_data):
    plain, fast = Predictor.load(trained_run, runtime="torch"), Predictor.load(trained_run)
    for path in sorted(demo_data.rglob("*.jpg"))[::7]:
        _, _, expected = plain.learn.predict(path)
        got = plain.probabilities([open_image(path)])[0]
        assert np.abs(got - expected.numpy()).max() < 1e-4
        served = fast.probabilities([open_image(path)])[0]
        assert np.abs(served - expected.numpy()).max() <= probability_tolerance(fast.runtime)
        assert served.argmax() == expected.argmax()


def test_split_is_saved_with_its_seed_and_both_sides(trained_run):
    split = json.loads((trained_run / "split.json").read_text())
    assert split["seed"] == 7
    assert any(r["is_valid"] for r in split["items"]) and not all(r["is_valid"] for r in split["items"])


def test_existing_run_is_not_overwritten_without_resume(runner, trained_run, demo_data):
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "smoke", "--out", str(trained_run)])
    assert result.exit_code == 1 and "--resume" in result.output


@pytest.mark.slow
def test_resume_skips_completed_stages_and_finishes(runner, trained_run, demo_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # Make it look like the process died after stage 1, before stage 2 and the export.
    state = json.loads((run / "state.json").read_text())
    state["completed"], state["exported"] = state["completed"][:1], False
    (run / "state.json").write_text(json.dumps(state))
    (run / "export.pkl").unlink()
    (run / "checkpoints" / "stage-2.pth").unlink()
    stage1 = torch.load(run / "checkpoints" / "stage-1.pth", weights_only=True)

    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "smoke", "--out", str(run),
                                 "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "frozen-64: done earlier, skipped" in result.output
    assert "stage 2/2 unfrozen-64" in result.output
    assert (run / "export.pkl").is_file()
    report = read_report(run)
    assert [s["stage"] for s in report["stages"]] == ["frozen-64", "unfrozen-64"]
    # Stage 1's weights were the starting point, not a fresh ImageNet body.
    assert torch.equal(stage1["0.0.weight"], torch.load(run / "checkpoints" / "stage-1.pth", weights_only=True)["0.0.weight"])

    again = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "smoke", "--out", str(run), "--resume"])
    assert again.exit_code == 0 and "already complete" in again.output


@pytest.mark.slow
@pytest.mark.parametrize("budget, epochs", [(60, 3), (1, 1)])
def test_elastic_last_stage_runs_as_many_epochs_as_the_budget_allows(runner, demo_data, tmp_path, budget, epochs):
    recipe = elastic_recipe(tmp_path / "elastic.toml", budget, fixed_epochs=1, elastic_epochs="[1, 3]", elastic_size=80)
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", str(recipe),
                                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = read_report(tmp_path / "run")
    last = report["stages"][-1]
    assert len(last["epochs"]) == last["budget"]["epochs"] == epochs
    # room for every epoch: given the rest of the budget, and the clock let fastai's own schedule run out; no room
    # even for the low end: the clock still ends it, after half an epoch's time at the final size
    assert last["budget"]["low_end_fits"] == (budget == 60)
    if budget == 1:
        assert last["budget"]["fit_seconds"] == pytest.approx(0.5 * last["budget"]["epoch_seconds_estimate"])
    probe = last["budget"]["probe"]  # timed on the stage's own batches: 80 px, training set, batch size 16
    assert probe["train_batches"] == report["dataset"]["train_images"] // 16 and 0 < probe["valid_batch_seconds"]
    # ... scaled by how fast the first stage really ran against its own probe at the start
    assert last["budget"]["epoch_seconds_estimate"] == pytest.approx(last["budget"]["speed"] * (
        probe["train_batch_seconds"] * probe["train_batches"] + probe["valid_batch_seconds"] * probe["valid_batches"]))
    assert (f"about {epochs} epochs" if budget == 60 else "short of its 1 epochs") in result.output
    assert "up to 3 epochs, annealed on the clock" in result.output

    from webapp import create_app
    page = create_app({"TESTING": True, "MODEL_PATH": str(tmp_path / "run"), "RUNTIME": "torch"}).test_client().get("/model")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"elastic: {epochs} epoch{'s' if epochs != 1 else ''} on the clock" in html
    assert "Every stage's epoch was timed before the first one started" in html


def test_resume_refuses_a_different_recipe(runner, trained_run, demo_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "demo", "--out", str(run), "--resume"])
    assert result.exit_code == 1 and "recipe differs" in result.output


def test_evaluate_reports_json_and_unknown_classes(runner, trained_run, demo_data, tmp_path):
    data = tmp_path / "eval"
    shutil.copytree(demo_data, data)
    (data / "ukulele").mkdir()
    shutil.copy(next((data / "les_paul").glob("*.jpg")), data / "ukulele" / "u.jpg")
    plot, mistakes = tmp_path / "cm.png", tmp_path / "mistakes.csv"
    result = runner.invoke(args=["evaluate", "--model", str(trained_run / "export.pkl"), "--data", str(data),
                                 "--json", "--plot", str(plot), "--mistakes", str(mistakes)])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["n"] == 42 and scores["unknown_classes"] == {"ukulele": 1}
    assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1
    assert set(scores["per_class"]) == set(SMOKE_CLASSES)
    assert np.array(scores["confusion_matrix"]).sum() == 42
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matrix = np.array(scores["confusion_matrix"])
    assert len(scores["mistakes"]) == matrix.sum() - np.trace(matrix)
    with open(mistakes, newline="") as fh:
        assert list(csv.DictReader(fh)) == [{k: str(v) for k, v in row.items()} for row in scores["mistakes"]]

    assert scores["tta"] == "off"
    summary = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(data)])
    assert "Accuracy" in summary.output and "ukulele (1)" in summary.output
    mirrored = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(data), "--json", "--tta"])
    assert mirrored.exit_code == 0 and json.loads(mirrored.output)["tta"] == "flip"


def test_flip_tta_averages_each_photo_with_its_mirror(trained_run, demo_data):
    plain = Predictor.load(trained_run, runtime="torch")
    tta = Predictor.load(trained_run, runtime="torch", tta=True)
    # Already square at the model's size, so mirroring before or after preprocessing is the same picture.
    images = [square_pad(open_image(p), plain.size) for p in sorted(demo_data.rglob("*.jpg"))[::10]]
    mirrored = [ImageOps.mirror(img) for img in images]
    assert np.abs(plain.probabilities(mirrored) - plain.probabilities(images)).max() > 1e-3
    expected = (plain.probabilities(images) + plain.probabilities(mirrored)) / 2
    np.testing.assert_allclose(tta.probabilities(images), expected, atol=1e-5)
    assert tta.describe()["tta"] == "flip" and plain.describe()["tta"] == "off"


def test_tampered_model_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with open(run / "export.pkl", "ab") as fh:
        fh.write(b"\0")
    from training.inference import ModelLoadError

    with pytest.raises(ModelLoadError, match="SHA-256"):
        Predictor.load(run)


class BodyResponse(torch.nn.Module):
    """A head whose every class scores how strongly the body responds overall: its Grad-CAM is known in advance."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes

    def forward(self, features):
        return features.mean((1, 2, 3))[:, None].expand(-1, self.n_classes)


def drawing_on_white(corner: tuple[int, int], size: int = 192) -> tuple[Image.Image, np.ndarray]:
    """A drawn guitar in one quarter of a white square, and the mask of the guitar's own pixels."""
    tile = draw_guitar("les_paul", size // 2, random.Random(3))
    tile_pixels = np.asarray(tile).astype(int)
    guitar = np.abs(tile_pixels - tile_pixels[0, 0]).sum(axis=2) > 60  # not the drawing's background colour
    canvas, mask = Image.new("RGB", (size, size), "white"), np.zeros((size, size), bool)
    canvas.paste(tile, corner)
    mask[corner[1]:corner[1] + size // 2, corner[0]:corner[0] + size // 2] = guitar
    return canvas, mask


@pytest.mark.parametrize("corner", [(96, 0), (0, 96)])  # off the diagonal: a transposed map would miss
def test_grad_cam_is_hot_on_the_guitar(trained_run, corner):
    predictor = Predictor.load(trained_run, runtime="torch")
    # The smoke model has barely learnt its classes, so what a class attends to is noise; with every class scoring
    # the body's overall response, Grad-CAM must light up where the drawing is. 192 px: a 6x6 map, not 2x2.
    predictor.model = GuitarModel(predictor.model.body, BodyResponse(len(predictor.classes)))
    predictor.size = 192
    image, guitar = drawing_on_white(corner)
    cam = predictor.grad_cam(image, "les_paul")
    assert cam.shape == (6, 6) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam.std() > 0.1  # not flat
    hot = np.kron(cam >= 0.5, np.ones((32, 32), bool))  # each cell of the map over its 32x32 pixels
    quarter = np.zeros_like(hot)
    quarter[corner[1]:corner[1] + 96, corner[0]:corner[0] + 96] = True
    assert (hot & guitar).sum() > 0.3 * guitar.sum()  # the hot region covers much of the guitar ...
    assert (hot & quarter).sum() > 0.8 * hot.sum()  # ... and lies mostly in its quarter, not on the white


def test_heat_map_overlays_the_cam_at_the_models_size(trained_run, demo_data):
    from webapp.heatmap import heat_map

    predictor = Predictor.load(trained_run)
    image = open_image(next((demo_data / "les_paul").glob("*.jpg")))
    overlay = heat_map(predictor, image, "les_paul")
    assert overlay.size == (predictor.size, predictor.size)


def _train_one_stage(runner, demo_data, tmp_path, name: str, settings: str, *options: str):
    """Train a one-stage recipe of Lite0 at 64 px with `settings` (TOML lines); the CLI result and the run folder."""
    recipe = tmp_path / f"{name}.toml"
    recipe.write_text(f'valid_pct = 0.25\n[[stages]]\nname = "{name}"\nbackbone = "efficientnet_lite0"\n'
                      f'size = 64\nbs = 16\n{settings}')
    out = tmp_path / "run"
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", str(recipe), "--out", str(out),
                                 "--no-progress", *options])
    assert result.exit_code == 0, result.output
    return result, out


@pytest.mark.slow
def test_lr_find_stage_saves_its_plot_and_uses_the_suggestion(runner, demo_data, tmp_path):
    result, out = _train_one_stage(runner, demo_data, tmp_path, "find-64", 'frozen = true\nepochs = 1\nlr = "find"\n')
    assert (out / "lr_find-find-64.png").read_bytes()[:4] == b"\x89PNG"
    stage = read_report(out)["stages"][0]
    assert stage["lr"] == "find" and 1e-7 < stage["lr_found"] < 10
    assert f"lr_find suggests {stage['lr_found']:.2e}" in result.output


def _changed(before: torch.nn.Module, state: dict, prefix: str) -> dict[str, bool]:
    """For each parameter of `before`, whether the checkpoint `state` holds a different value."""
    return {name: not torch.equal(p.detach(), state[f"{prefix}{name}"]) for name, p in before.named_parameters()}


def test_frozen_stage_without_train_bn_changes_only_the_head(trained_run):
    from training.learner import build_model

    pretrained = build_model("efficientnet_lite0", len(SMOKE_CLASSES))
    state = torch.load(trained_run / "checkpoints" / "stage-1.pth", weights_only=True)
    assert not any(_changed(pretrained.body, state, "0.").values())  # BatchNorm weights included
    assert any(_changed(pretrained.head, state, "1.").values())


@pytest.mark.slow
def test_frozen_groups_keep_the_early_blocks_as_pretrained(runner, demo_data, tmp_path):
    from training.learner import build_model, three_groups

    _, out = _train_one_stage(runner, demo_data, tmp_path, "partial-64",
                              "frozen = false\nfrozen_groups = 1\ntrain_bn = false\nepochs = 1\nlr = [1e-4, 1e-3]\n")
    pretrained = build_model("efficientnet_lite0", len(SMOKE_CLASSES))
    trained = build_model("efficientnet_lite0", len(SMOKE_CLASSES), pretrained=False)
    trained.load_state_dict(torch.load(out / "checkpoints" / "stage-1.pth", weights_only=True))
    early, late, _ = three_groups(pretrained)
    early_after, late_after, _ = three_groups(trained)
    assert all(torch.equal(a, b) for a, b in zip(early, early_after))
    assert not all(torch.equal(a, b) for a, b in zip(late, late_after))


@pytest.mark.slow
@pytest.mark.parametrize("precision, trained_format", [("bf16", torch.channels_last), ("fp32", torch.contiguous_format)])
def test_bf16_trains_channels_last_and_exports_contiguous(runner, demo_data, tmp_path, precision, trained_format):
    from fastai.learner import load_learner

    _, out = _train_one_stage(runner, demo_data, tmp_path, "format-64", "frozen = false\nepochs = 1\nlr = 1e-3\n",
                              "--precision", precision)
    checkpoint = torch.load(out / "checkpoints" / "stage-1.pth", weights_only=True)
    convs = [w for w in checkpoint.values() if w.ndim == 4 and w.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=trained_format) for w in convs)
    exported = [p for p in load_learner(out / "export.pkl").model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous() for p in exported)


@pytest.mark.slow
def test_train_to_a_log_file_prints_one_line_per_epoch_and_no_torch_warning(logged_run):
    _, result = logged_run
    output = result.stdout + result.stderr
    assert "\r" not in output  # no progress-bar redraws when stdout is not a terminal
    assert "FutureWarning" not in output and "torch.jit.script" not in output
    assert "  epoch 1: train_loss" in result.stdout, result.stdout


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_trains_bf16_only_where_the_cpu_has_native_bf16(demo_data, tmp_path, monkeypatch, native, expected):
    from training import devices
    from training.recipes import load_recipe
    from training.runner import TrainOptions, prepare_run

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)  # either CPU, on any machine
    lines = []
    run = prepare_run(demo_data, load_recipe("smoke"), tmp_path / "run", TrainOptions(device="cpu", progress=False),
                      lines.append)
    assert run.precision == expected and f"device cpu, precision {expected}" in lines[-1]
    assert devices.training_memory_format(run.device, run.precision) == (
        torch.channels_last if native else torch.contiguous_format)
