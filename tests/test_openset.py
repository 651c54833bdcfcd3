"""'Not one of my classes': the scope detector is fitted, exported, loaded and applied."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import upload
from training.openset import ScopeDetector, fit_scope, profile_scores
from training.runfiles import read_report


def clusters(rng, centres, n, spread=0.05):
    """`n` features around each of `centres` (rows), in a 32-d space."""
    return np.concatenate([c + spread * rng.standard_normal((n, len(c))) for c in centres])


def test_the_detector_keeps_its_share_of_in_scope_photos_and_rejects_other_directions():
    rng = np.random.default_rng(0)
    known = rng.standard_normal((3, 32))
    unknown = rng.standard_normal((2, 32))
    labels = np.repeat(np.arange(3), 200)
    detector = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40), keep=0.95)
    valid_kept = detector.in_scope(detector.scores(clusters(rng, known, 40))).mean()
    assert 0.85 <= valid_kept <= 1.0
    assert not detector.in_scope(detector.scores(clusters(rng, unknown, 50))).any()
    assert detector.scores(np.zeros((0, 32))).shape == (0,)


def test_scores_are_negative_mahalanobis_distances_to_the_nearest_class_mean():
    means = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    precision = np.diag([1.0, 4.0]).astype(np.float32)  # the second feature varies half as much: counts twice
    detector = ScopeDetector(means=means, precision=precision, threshold=-2.0, keep=0.95)
    scores = detector.scores(np.array([[1.0, 0.0], [9.0, 0.5], [5.0, 1.0]]))
    assert scores == pytest.approx([-1.0, -2.0, -29.0])
    assert list(detector.in_scope(scores)) == [True, True, False]


def test_the_detector_survives_the_trip_through_the_model_metadata():
    rng = np.random.default_rng(1)
    detector = fit_scope(rng.standard_normal((50, 8)), rng.integers(0, 3, 50), rng.standard_normal((10, 8)))
    again = ScopeDetector.from_meta(detector.to_meta())
    features = rng.standard_normal((5, 8))
    assert np.allclose(again.scores(features), detector.scores(features), atol=1e-3)
    assert again.threshold == detector.threshold and ScopeDetector.from_meta(None) is None


def test_mahalanobis_plus_plus_scores_directions_not_lengths():
    rng = np.random.default_rng(3)
    known = rng.standard_normal((3, 32))
    labels = np.repeat(np.arange(3), 200)
    detector = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40), normalise=True)
    photos = clusters(rng, known, 10)
    assert detector.method == "l2-mahalanobis"
    assert np.allclose(detector.scores(3 * photos), detector.scores(photos), rtol=1e-3)  # a longer feature, same direction
    plain = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40))
    assert not np.allclose(plain.scores(3 * photos), plain.scores(photos), rtol=0.1)
    again = ScopeDetector.from_meta(detector.to_meta())
    assert again.normalise and np.allclose(again.scores(photos), detector.scores(photos), rtol=1e-3)
    assert not ScopeDetector.from_meta({**plain.to_meta(), "normalise": None}).normalise  # older exports


def test_the_imagenet_profile_rejects_what_the_features_alone_accept():
    rng = np.random.default_rng(2)
    known = rng.standard_normal((3, 32))
    labels = np.repeat(np.arange(3), 200)
    # The training photos are "electric guitars" (ImageNet class 546) to the check; the violin (889) is not,
    # though its features sit among the known classes (a near photo the fine-tuned features cannot tell apart).
    def imagenet(n, top):
        logits = rng.standard_normal((n, 1000))
        logits[:, top] += 8.0
        return logits

    detector = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40), train_imagenet=imagenet(600, 546),
                         valid_imagenet=imagenet(120, 546))
    assert detector.method == "mahalanobis+imagenet"
    violins = clusters(rng, known, 20)
    features_only = fit_scope(clusters(rng, known, 200), labels, clusters(rng, known, 40))
    assert features_only.in_scope(features_only.scores(violins)).mean() > 0.8
    guitars, others = imagenet(60, 546), imagenet(60, 889)
    kept = detector.in_scope(detector.scores(violins, profile_scores(guitars, detector.profile_weights))).mean()
    rejected = ~detector.in_scope(detector.scores(violins, profile_scores(others, detector.profile_weights)))
    assert kept > 0.8 and rejected.all()
    again = ScopeDetector.from_meta(detector.to_meta())
    profile = profile_scores(others, again.profile_weights)
    assert np.allclose(again.scores(violins, profile), detector.scores(violins, profile), atol=1e-3)


def test_the_served_graph_computes_the_profile_as_numpy_does():
    import torch

    from training.openset import ImageNetCheck, ImageNetProfile

    check = ImageNetCheck((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    weights = np.random.default_rng(3).dirichlet(np.ones(1000)).astype(np.float32)
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        served = ImageNetProfile(check, weights)(batch)[:, 0].numpy()
        expected = profile_scores(check(batch).numpy(), weights)
    assert served == pytest.approx(expected, abs=1e-4)


def drawn_non_guitars(count: int = 6) -> list[bytes]:
    """Noise and fine stripes: nothing a model of drawn guitars has seen (plain shapes on plain backgrounds,
    which the demo guitars are made of, are not reliably "other" for a model trained seconds on 42 photos)."""
    rng = np.random.default_rng(0)
    diagonal = np.indices((96, 96)).sum(axis=0)
    images = []
    for k in range(count):
        if k % 2:
            stripes = (diagonal // (4 + k % 4)) % 2 == 1
            pixels = np.where(stripes[..., None], rng.integers(0, 255, 3), rng.integers(0, 255, 3)).astype(np.uint8)
        else:
            pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def test_training_fits_a_detector_and_the_api_says_what_is_out_of_scope(client, trained_run, demo_data):
    scope = read_report(trained_run)["scope"]
    # The check's sure reading joins in where a line keeps its budget on the validation photos (1%), which a handful
    # of drawn photos may not allow.
    assert scope["method"] in ("l2-mahalanobis+imagenet", "l2-mahalanobis+imagenet+reading")
    assert scope["keep"] == 0.95 and scope["valid_rejected"] <= 0.2
    assert (scope["sure_line"] is None) == (scope["method"] == "l2-mahalanobis+imagenet")
    assert scope["valid_read_as_other"] <= 0.01
    assert client.get("/api/v1/model").json["scope"]["threshold"] == pytest.approx(scope["threshold"], abs=1e-6)
    files = [upload(data, f"drawn-{k}.png") for k, data in enumerate(drawn_non_guitars())]
    results = client.post("/api/v1/predict", data={"file": files}, content_type="multipart/form-data").json["results"]
    assert all((r["scope_score"] < scope["threshold"]) == (not r["in_scope"]) for r in results)
    photos = sorted(demo_data.rglob("*.jpg"))[:8]
    guitars = client.post("/api/v1/predict", data={"file": [upload(p.read_bytes(), p.name) for p in photos]},
                          content_type="multipart/form-data").json["results"]
    assert sum(r["in_scope"] for r in guitars) >= 6
    # A detector fitted on the 30 photos of a model trained for seconds is weak: where its threshold falls varies
    # from one training to the next, but drawn patterns always score far below the guitars, and some are refused.
    assert max(r["scope_score"] for r in results) < np.median([r["scope_score"] for r in guitars])
    assert any(not r["in_scope"] for r in results)


def test_the_results_page_says_plainly_when_a_photo_is_none_of_the_classes(client):
    drawn = drawn_non_guitars()
    results = client.post("/api/v1/predict", data={"file": [upload(d, f"{k}.png") for k, d in enumerate(drawn)]},
                          content_type="multipart/form-data").json["results"]
    data = drawn[min(range(len(drawn)), key=lambda k: results[k]["scope_score"])]  # the least guitar-like
    html = client.post("/predict", data={"file": [upload(data, "circle.png")]},
                       content_type="multipart/form-data").get_data(as_text=True)
    assert "doesn't look like any of the 3 guitar models I know" in html and "top-k greyed" in html


def test_evaluate_reports_the_share_of_out_of_scope_photos_rejected(runner, trained_run, demo_data, tmp_path):
    for k, data in enumerate(drawn_non_guitars(8)):
        (tmp_path / "ood" / "drawn").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ood" / "drawn" / f"{k}.png").write_bytes(data)
    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(demo_data),
                                 "--ood", str(tmp_path / "ood"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["out_of_scope"]["drawn"]["n"] == 8 and report["out_of_scope"]["drawn"]["rejected"] > 0
    assert report["out_of_scope"]["drawn"]["auroc"] > 0.8


def test_the_served_model_rejects_the_validation_share_the_report_states(runner, trained_run, demo_data):
    # The threshold is drawn from fp32 scores and serving decides near it in fp32, so the two shares agree exactly.
    result = runner.invoke(args=["evaluate", "--model", str(trained_run), "--data", str(demo_data), "--valid-only",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scope"]["rejected"] == read_report(trained_run)["scope"]["valid_rejected"]
