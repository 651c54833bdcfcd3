"""The group answer ("a Fender, not sure which"): classes.toml's [groups], the fitted line, and the answer served."""
import io
import json
import shutil

import numpy as np
import pytest

from tests.helpers import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, PageWatch, gunicorn_server
from training.classnames import ClassGroup, ClassNamesError, class_groups
from training.groups import MIN_GROUP_ANSWERS, fit_group_line, group_figures, top_groups
from training.inference import GroupAnswer, Prediction, Predictor

CLASSES = ["jaguar", "jazzmaster", "les_paul", "sg"]
GROUPS = [ClassGroup("fender", "Fender", ("jaguar", "jazzmaster")), ClassGroup("gibson", "Gibson", ("les_paul", "sg"))]


def test_groups_read_from_classes_toml(tmp_path):
    (tmp_path / "classes.toml").write_text('sg = "SG"\n[groups]\nfender = ["jaguar", "jazzmaster"]\n'
                                           'gibson = {name = "Gibson (solid body)", classes = ["les_paul", "sg"]}\n')
    assert class_groups(tmp_path, CLASSES) == [ClassGroup("fender", "Fender", ("jaguar", "jazzmaster")),
                                               ClassGroup("gibson", "Gibson (solid body)", ("les_paul", "sg"))]


@pytest.mark.parametrize("groups, message", [
    ('fender = ["jaguar", "telecaster"]', "telecaster, which are not class folders"),
    ('fender = ["jaguar"]\noffset = ["jaguar", "jazzmaster"]', "jaguar is in groups fender and offset"),
    ('sg = ["les_paul"]', "has the id of a class"),
    ("fender = []", "must list its class ids"),
    ('fender = {name = "", classes = ["jaguar"]}', "must be a non-empty string"),
])
def test_bad_groups_are_refused_clearly(tmp_path, groups, message):
    (tmp_path / "classes.toml").write_text(f"[groups]\n{groups}\n")
    with pytest.raises(ClassNamesError, match=message):
        class_groups(tmp_path, CLASSES)


def rows(row, target, count):
    return [row] * count, [target] * count


def constructed_split(unsure_right: int):
    """Sure class answers all right; `unsure_right` not-sure answers whose group (Fender, 0.95) is right, and three
    whose likelier group (Fender, 0.6) is wrong."""
    sure = rows([0.9, 0.05, 0.05, 0.0], 0, 10)
    settled = rows([0.5, 0.45, 0.05, 0.0], 1, unsure_right)
    wrong = rows([0.4, 0.2, 0.4, 0.0], 2, 3)
    probabilities = np.array(sure[0] + settled[0] + wrong[0])
    return probabilities, np.array(sure[1] + settled[1] + wrong[1])


def test_group_line_admits_only_groups_as_right_as_sure_class_answers():
    probabilities, targets = constructed_split(unsure_right=6)
    best, summed = top_groups(probabilities, GROUPS, CLASSES)
    assert list(best[10:]) == [0] * 9 and summed[10] == pytest.approx(0.95) and summed[-1] == pytest.approx(0.6)
    line = fit_group_line(probabilities, targets, GROUPS, CLASSES, unsure_below=0.6)
    assert line == pytest.approx(0.95)  # 0.6 would admit the three wrong ones: 6/9 right, under the sure answers' 1.0
    figures = group_figures(probabilities, targets, GROUPS, CLASSES, 0.6, line)
    assert figures["unsure"] == 9 and figures["coverage"] == pytest.approx(6 / 9, abs=1e-4)
    assert figures["sure_accuracy"] == 1.0 and figures["accuracy"] == pytest.approx(16 / 19, abs=1e-4)


def test_no_group_line_from_too_few_photos():
    probabilities, targets = constructed_split(unsure_right=MIN_GROUP_ANSWERS - 1)
    assert fit_group_line(probabilities, targets, GROUPS, CLASSES, unsure_below=0.6) is None
    assert group_figures(probabilities, targets, GROUPS, CLASSES, 0.6, None)["coverage"] == 0.0


@pytest.mark.parametrize("in_scope, top, sure, level", [
    (True, 0.9, True, "class"),    # a sure class answer stays a class answer
    (True, 0.4, True, "group"),    # not sure of the class, sure of the group: the group is the answer
    (True, 0.4, False, "class"),   # sure of neither: a "not sure" class answer
    (False, 0.4, True, "none"),    # none of the classes, whatever the group says
])
def test_answer_level(in_scope, top, sure, level):
    prediction = Prediction(["jaguar", "jazzmaster"], [top, 1 - top], ["Jaguar", "Jazzmaster"], 0.0, in_scope,
                            GroupAnswer("fender", "Fender", 1.0, sure))
    result = prediction.as_result("photo.jpg", 2, unsure_below=0.6)
    assert result["scope"] == level
    assert result["group"] == {"label": "fender", "name": "Fender", "probability": 1.0, "sure": sure}


def test_trained_model_carries_its_groups(trained_run, demo_data):
    """End to end on the demo data's two groups: classes.toml -> export.pkl -> the answer and `flask evaluate`."""
    predictor = Predictor.load(trained_run, runtime="torch")
    assert [(g.label, g.classes) for g in predictor.groups] == [("fender", ("stratocaster",)),
                                                                ("gibson", ("les_paul", "flying_v"))]
    report = json.loads((trained_run / "report.json").read_text())
    assert report["groups"]["line"] == predictor.group_unsure_below
    from PIL import Image
    images = [Image.open(p).convert("RGB") for p in sorted(demo_data.glob("*/0000.jpg"))]
    probabilities = predictor.probabilities(images)
    gibson = [predictor.classes.index(c) for c in ("les_paul", "flying_v")]
    for row, prediction in zip(probabilities, predictor.predict(images)):
        expected = ("gibson", row[gibson].sum()) if row[gibson].sum() > 0.5 else ("fender", 1 - row[gibson].sum())
        assert (prediction.group.label, prediction.group.probability) == (expected[0], pytest.approx(expected[1]))


def test_evaluate_and_predict_report_groups(runner, trained_run, demo_data):
    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(demo_data), "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)["groups"]
    assert groups["n"] == 42 and 0 < groups["accuracy"] <= 1
    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(demo_data), "--views"])
    assert "Group right on" in result.output and "group sure" in result.output
    photo = demo_data / "les_paul" / "0000.jpg"
    result = runner.invoke(args=["predict", "--model", str(trained_run), str(photo)])
    assert result.exit_code == 0, result.output
    from training.decoding import open_image
    group = Predictor.load(trained_run).predict([open_image(photo)])[0].group  # as flask predict serves it
    assert "group" in result.output.splitlines()[0] and f"{group.name} " in result.output.splitlines()[1]


@pytest.fixture(scope="module")
def always_grouping_run(trained_run, tmp_path_factory):
    """The smoke run re-exported with a group line of 0: every group answer is sure."""
    from fastai.learner import load_learner

    from training.fsutil import sha256_file
    from training.runfiles import EXPORT, read_report, write_report

    run = tmp_path_factory.mktemp("grouped") / "run"
    shutil.copytree(trained_run, run)
    learn = load_learner(run / EXPORT, cpu=True)
    learn.meta["group_unsure_below"] = 0.0
    learn.export(run / EXPORT)
    write_report(run, {**read_report(run), "model_sha256": sha256_file(run / EXPORT)})
    return run


def test_api_answers_the_group_when_the_class_is_not_sure(always_grouping_run, demo_data):
    from webapp import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(always_grouping_run), "UNSURE_BELOW": 1.0})
    photo = (demo_data / "les_paul" / "0000.jpg").read_bytes()
    response = app.test_client().post("/api/v1/predict", data={"file": (io.BytesIO(photo), "lp.jpg")})
    result = response.get_json()["results"][0]
    assert result["uncertain"] and result["group"]["sure"] and result["scope"] == "group"
    assert response.get_json()["model"]["group_unsure_below"] == 0.0
    page = app.test_client().get("/model").get_data(as_text=True)
    assert "Gibson (Les Paul, Flying V)" in page and "names its group when the group's probability is at least 0%" in page
    sure_app = create_app({"TESTING": True, "MODEL_PATH": str(always_grouping_run), "UNSURE_BELOW": 0.0})
    response = sure_app.test_client().post("/api/v1/predict", data={"file": (io.BytesIO(photo), "lp.jpg")})
    assert response.get_json()["results"][0]["scope"] == "class"


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=BROWSER_MARKS[1].kwargs["reason"])
def test_page_shows_the_maker_when_the_model_is_unsure(always_grouping_run, demo_data, tmp_path):
    from playwright.sync_api import sync_playwright

    with gunicorn_server(str(always_grouping_run), tmp_path, tmp_path / "gunicorn.log",
                         GUITARS_UNSURE_BELOW="1") as (url, _):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            watch = PageWatch(page)
            page.goto(url + "/")
            page.set_input_files("#file-input", [str(demo_data / "flying_v" / "0000.jpg")])
            page.click("button[type=submit]")
            page.wait_for_selector("p.group-answer")
            text = page.inner_text("p.group-answer")
            assert "Gibson" in text and "can't tell which model" in text and "Flying V" in text
            assert page.locator("p.warning").count() == 0  # the group replaces the vague "not sure"
            watch.assert_whole(page)
            browser.close()
