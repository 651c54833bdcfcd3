"""The ImageNet check's sure reading ("it looks like an acoustic guitar") and the answer "a guitar, but not one of my
models": fitted on constructed readings, read from classes.toml, and given by the API and the page."""
import numpy as np
import pytest
from flask import render_template

from tests.helpers import upload
from tests.test_openset import clusters, drawn_non_guitars
from training.classnames import ClassKind, ClassNamesError, class_kind, class_names
from training.inference import Prediction
from training.openset import SEEN_AS_LINE, ScopeDetector, fit_reading, fit_scope, imagenet_names
from webapp.model import model_holder

ELECTRIC, ACOUSTIC, BANJO = 546, 402, 420


def readings(rng, n, top, boost=8.0):
    """ImageNet logits of `n` photos the check reads as `top` (boost 8: a probability of about 0.7)."""
    logits = rng.standard_normal((n, 1000))
    logits[:, top] += boost
    return logits


def guitar_readings(rng, n):
    """Electric guitars to the check, some surely and some barely, with one photo in twelve read as an acoustic one
    too (a hollow body), as surely as an electric."""
    logits = rng.standard_normal((n, 1000))
    logits[:, ELECTRIC] += rng.uniform(2.0, 12.0, n)
    logits[::12, ACOUSTIC] += rng.uniform(2.0, 10.0, len(logits[::12]))
    return logits


def test_the_checks_sure_reading_of_something_else_rejects_what_the_features_and_profile_keep():
    rng = np.random.default_rng(5)
    known = rng.standard_normal((3, 32))
    labels = np.repeat(np.arange(3), 200)
    fitted = dict(train_imagenet=guitar_readings(rng, 600), valid_imagenet=guitar_readings(rng, 120))
    plain = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40), **fitted)
    reading = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40), reading=True, kin=(ACOUSTIC,),
                        **fitted)
    assert reading.method == "mahalanobis+imagenet+reading" and 0.5 <= reading.sure_line < 1.0
    assert reading.theirs[ELECTRIC] and not reading.theirs[ACOUSTIC]
    # Acoustic guitars whose features sit among the classes, read as acoustic guitars with no doubt at all.
    photos, acoustics = clusters(rng, known, 20), readings(rng, 60, ACOUSTIC, 16.0)
    assert plain.in_scope(plain.scores(photos, imagenet=acoustics)).mean() > 0.8  # the profile alone keeps them
    assert not reading.in_scope(reading.scores(photos, imagenet=acoustics)).any()
    guitars = guitar_readings(rng, 60)
    assert reading.in_scope(reading.scores(photos, imagenet=guitars)).mean() > 0.8
    unnamed = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40), reading=True, **fitted)
    assert unnamed.sure_line is not None and unnamed.kin == ()  # no [kind]: never "a guitar, but not one of mine"
    again = ScopeDetector.from_meta(reading.to_meta())
    assert again.sure_line == reading.sure_line and again.kin == (ACOUSTIC, ELECTRIC)
    assert np.allclose(again.scores(photos, imagenet=acoustics), reading.scores(photos, imagenet=acoustics), atol=1e-2)
    assert again.seen_as(acoustics)[0][0] == ACOUSTIC and again.seen_as(acoustics)[0][1] >= SEEN_AS_LINE


def test_the_reading_line_costs_at_most_its_budget_of_validation_photos():
    rng = np.random.default_rng(6)
    train = readings(rng, 400, ELECTRIC, 12.0)
    valid = readings(rng, 200, ELECTRIC, 12.0)
    valid[:6, BANJO] += 12.0 + np.linspace(1, 6, 6)[:, None].ravel()  # 3% read as banjos, some surer than others
    line, theirs = fit_reading(train, valid, budget=0.01)
    probabilities = np.exp(valid - valid.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    vetoed = (probabilities[:, BANJO] >= line).mean()
    assert vetoed <= 0.01 and (probabilities[:, BANJO] >= line - 0.01).mean() > vetoed  # the lowest line that does
    assert theirs[ELECTRIC] and theirs.sum() == 1
    valid[:, BANJO] += 30.0  # every photo read as a banjo: no line keeps the budget
    assert fit_reading(train, valid, budget=0.01) is None


@pytest.mark.parametrize("in_scope, of_kind, seen_as, level", [
    (False, True, ("acoustic guitar", 0.97), "guitar-unknown"),
    (False, False, ("banjo", 0.91), "none"),
    (False, False, None, "none"),
    (True, False, None, "class"),
])
def test_answer_level_of_an_out_of_scope_photo(in_scope, of_kind, seen_as, level):
    prediction = Prediction(["jaguar", "jazzmaster"], [0.9, 0.1], ["Jaguar", "Jazzmaster"], 0.0, in_scope,
                            seen_as=seen_as, of_kind=of_kind)
    result = prediction.as_result("photo.jpg", 2, unsure_below=0.6)
    assert result["scope"] == level and result["in_scope"] == in_scope
    assert result["seen_as"] == (None if seen_as is None else {"label": seen_as[0], "probability": seen_as[1]})


def test_the_kind_read_from_classes_toml(tmp_path):
    (tmp_path / "classes.toml").write_text('sg = "SG"\n[kind]\nname = "guitar"\n'
                                           'imagenet = ["electric guitar", "acoustic guitar"]\n')
    kind = class_kind(tmp_path)
    assert class_names(tmp_path, ["sg", "les_paul"]) == {"sg": "SG", "les_paul": "Les Paul"}  # [kind] is no class
    assert kind == ClassKind("guitar", ("electric guitar", "acoustic guitar"))
    assert ClassKind.from_meta(kind.to_meta()) == kind and ClassKind.from_meta(None) is None
    assert [imagenet_names().index(r) for r in kind.imagenet] == [ELECTRIC, ACOUSTIC]
    (tmp_path / "classes.toml").write_text("")
    assert class_kind(tmp_path) is None


@pytest.mark.parametrize("table, message", [
    ('imagenet = ["electric guitar"]', "needs a name"),
    ('name = "guitar"\nimagenet = "electric guitar"', "must list ImageNet class names"),
    ('name = "guitar"\nimagenet = ["electric gitar"]', "electric gitar, which are not ImageNet-1k class names"),
])
def test_a_bad_kind_is_refused_clearly(tmp_path, table, message):
    (tmp_path / "classes.toml").write_text(f"[kind]\n{table}\n")
    with pytest.raises(ClassNamesError, match=message):
        class_kind(tmp_path)


def out_of_scope_result(seen_as, of_kind):
    prediction = Prediction(["a", "b"], [0.8, 0.2], ["A", "B"], -9.0, False, seen_as=seen_as, of_kind=of_kind)
    return {**prediction.as_result("photo.jpg", 2, unsure_below=0.6), "id": "x", "thumbnail": "", "heat_map": ""}


def test_the_trained_model_carries_its_kind_and_says_what_out_of_scope_photos_look_like(client):
    assert client.get("/api/v1/model").json["kind"] == {"name": "guitar",
                                                        "imagenet": ["electric guitar", "acoustic guitar"]}
    files = [upload(data, f"drawn-{k}.png") for k, data in enumerate(drawn_non_guitars())]
    results = client.post("/api/v1/predict", data={"file": files}, content_type="multipart/form-data").json["results"]
    assert any(not r["in_scope"] for r in results)
    for r in results:
        assert r["scope"] in (("class", "group") if r["in_scope"] else ("guitar-unknown", "none"))
        assert r["seen_as"] is None or (not r["in_scope"] and r["seen_as"]["probability"] >= SEEN_AS_LINE)
        assert r["scope"] != "guitar-unknown" or r["seen_as"]["label"] in ("electric guitar", "acoustic guitar")


def test_the_page_names_the_kind_and_what_the_photo_looks_like(app):
    with app.test_request_context():
        predictor = model_holder().get()  # trained on the demo data, whose classes.toml names the kind
        kin = render_template("results.html", results=[out_of_scope_result(("acoustic guitar", 0.97), True)],
                              predictor=predictor)
        other = render_template("results.html", results=[out_of_scope_result(("banjo", 0.91), False)],
                                predictor=predictor)
    assert "A <strong>guitar</strong>, but not one" in kin and "it looks like\n      an acoustic guitar" in kin
    assert "it looks like a <strong>banjo</strong>" in other and "but not one" not in other
