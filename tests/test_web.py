"""Every route and error through the Flask test client, with real images and the real smoke model."""
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers import SMOKE_CLASSES, encode, upload
from training.devices import cpu_has_native_bf16
from training.imaging import open_image
from training.inference import Predictor
from training.runfiles import read_report
from training.runtimes import probability_tolerance
from webapp import create_app
from webapp.model import EXTENSION


def post_predict(client, files, **form):
    return client.post("/api/v1/predict", data={"file": files, **form}, content_type="multipart/form-data")


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json["status"] == "ready"


def test_api_predicts_top_k_equal_to_the_learner(client, trained_run, demo_data):
    path = next((demo_data / "flying_v").glob("*.jpg"))
    response = post_predict(client, [upload(path.read_bytes(), "v.jpg")], top_k="2")
    assert response.status_code == 200
    body = response.json
    assert body["model"]["classes"] == sorted(SMOKE_CLASSES)
    (result,) = body["results"]
    assert result["filename"] == "v.jpg" and isinstance(result["uncertain"], bool)
    assert len(result["predictions"]) == 2
    _, _, expected = Predictor.load(trained_run).learn.predict(path)
    best = int(np.argmax(expected))
    assert result["predictions"][0]["label"] == sorted(SMOKE_CLASSES)[best]
    tolerance = probability_tolerance(body["model"]["runtime"])
    assert result["predictions"][0]["probability"] == pytest.approx(float(expected[best]), abs=tolerance)
    timings = dict(part.split(";dur=") for part in response.headers["Server-Timing"].split(", "))
    assert set(timings) == {"decode", "model"} and all(float(ms) > 0 for ms in timings.values())


def test_api_takes_several_files_in_one_request(client, demo_data):
    files = [upload(p.read_bytes(), p.name) for p in sorted(demo_data.rglob("*.jpg"))[:3]]
    body = post_predict(client, files).json
    assert [r["filename"] for r in body["results"]] == [f[1] for f in files]
    assert all(len(r["predictions"]) == 3 for r in body["results"])


@pytest.mark.parametrize("files, status, code", [
    ([], 400, "no_file"),
    ([upload(b"", "empty.jpg")], 400, "empty_file"),
    ([upload(b"<html>hi</html>", "page.jpg")], 415, "unsupported_image"),
    ([upload(b"%PDF-1.4\n%%EOF", "doc.pdf")], 415, "unsupported_image"),
])
def test_api_errors_are_json_with_the_right_status(client, files, status, code):
    response = post_predict(client, files)
    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def test_api_refuses_images_with_too_many_pixels(trained_run):
    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "MAX_PIXELS": 10_000})
    response = post_predict(app.test_client(), [upload(encode(Image.new("RGB", (200, 200))))])
    assert response.status_code == 422 and response.json["error"]["code"] == "image_too_large"


def test_api_refuses_uploads_over_the_size_limit(trained_run):
    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "MAX_CONTENT_LENGTH": 1000})
    response = post_predict(app.test_client(), [upload(b"x" * 5000)])
    assert response.status_code == 413 and response.json["error"]["code"] == "too_large"


@pytest.mark.parametrize("top_k", ["-1", "0", "1000", "abc"])
def test_api_rejects_bad_top_k(client, demo_data, top_k):
    image = next(demo_data.rglob("*.jpg")).read_bytes()
    response = post_predict(client, [upload(image)], top_k=top_k)
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_top_k"


def test_model_endpoint_and_openapi(client):
    model = client.get("/api/v1/model").json
    assert model["classes"] == sorted(SMOKE_CLASSES) and model["backbone"] == "efficientnet_lite0"
    # bf16 only where the CPU has it natively (auto's choice either way: tests/test_runtimes.py)
    assert model["runtime"] == ("openvino-bf16" if cpu_has_native_bf16() else "openvino")
    assert len(model["validation"]["confusion_matrix"]) == 3
    spec = client.get("/api/v1/openapi.json").json
    assert "/api/v1/predict" in spec["paths"]


def test_upload_page_and_results_with_heat_map(client, demo_data):
    page = client.get("/")
    assert page.status_code == 200 and b'type="file"' in page.data and b"multiple" in page.data
    image = next((demo_data / "les_paul").glob("*.jpg")).read_bytes()
    result = client.post("/predict", data={"file": upload(image, "lp.jpg")}, content_type="multipart/form-data")
    html = result.get_data(as_text=True)
    assert result.status_code == 200
    assert html.count("<progress") == 3
    assert 'class="heat-map" src="data:image/png;base64,' in html
    assert "lp.jpg" in html


def test_results_say_when_the_model_is_unsure(trained_run, demo_data):
    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "WTF_CSRF_ENABLED": False,
                      "UNSURE_BELOW": 1.01})
    client = app.test_client()
    # Only a class-level answer says "not sure"; an out-of-scope or group answer says something else.
    image = next(photo.read_bytes() for photo in sorted(demo_data.rglob("*.jpg"))
                 if post_predict(client, [upload(photo.read_bytes())]).json["results"][0]["scope"] == "class")
    html = client.post("/predict", data={"file": upload(image)},
                       content_type="multipart/form-data").get_data(as_text=True)
    assert "not sure" in html
    # "Right" on a not-sure answer would not say which model the person agrees with.
    assert "Right: it is the " in html


@pytest.mark.parametrize("word, capital, expected", [
    ("acoustic guitar", False, "an"), ("banjo", False, "a"), ("Ibanez", True, "An"), ("Fender", True, "A"), ("", False, "a"),
])
def test_the_article_follows_the_first_letter(word, capital, expected):
    from webapp.pages import article

    assert article(word, capital=capital) == expected


def test_model_page_shows_the_confusion_matrix(client):
    html = client.get("/model").get_data(as_text=True)
    assert 'id="confusion-matrix"' in html and "frozen-64" in html and "stratocaster" in html
    image = client.get("/model/confusion_matrix.png")
    assert image.status_code == 200 and image.data[:4] == b"\x89PNG"


def test_relative_model_path_is_resolved_from_the_working_directory(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run.parent)
    monkeypatch.setenv("GUITARS_MODEL", trained_run.name)
    monkeypatch.setenv("GUITARS_SECRET_KEY", "test-secret")
    monkeypatch.setenv("GUITARS_RUNTIME", "torch")
    app = create_app()
    assert app.config["MODEL_PATH"] == str(trained_run)
    monkeypatch.chdir("/")  # the path was fixed when settings were read; later chdirs don't move it
    image = app.test_client().get("/model/confusion_matrix.png")
    assert image.status_code == 200 and image.data[:4] == b"\x89PNG"


def test_missing_confusion_matrix_png_is_a_404_and_the_page_keeps_the_table(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "confusion_matrix.png").unlink()
    client = create_app({"TESTING": True, "MODEL_PATH": str(run), "RUNTIME": "torch"}).test_client()
    html = client.get("/model").get_data(as_text=True)
    assert 'id="confusion-matrix"' not in html and 'class="matrix"' in html
    assert client.get("/model/confusion_matrix.png").status_code == 404


def test_html_errors_are_friendly_pages(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404 and b"Back to the upload form" in response.data
    bad = client.post("/predict", data={"file": upload(b"not an image")}, content_type="multipart/form-data")
    assert bad.status_code == 415 and b"not an image we can read" in bad.data
    assert b"Traceback" not in bad.data


def test_form_requires_a_csrf_token(trained_run, demo_data):
    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch"})
    client = app.test_client()
    image = next(demo_data.rglob("*.jpg")).read_bytes()
    refused = client.post("/predict", data={"file": upload(image)}, content_type="multipart/form-data")
    assert refused.status_code == 400
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    accepted = client.post("/predict", data={"file": upload(image), "csrf_token": token},
                           content_type="multipart/form-data")
    assert accepted.status_code == 200


def test_security_headers(client):
    headers = client.get("/").headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


def test_missing_model_is_reported_not_crashed_on(tmp_path):
    app = create_app({"TESTING": True, "MODEL_PATH": str(tmp_path / "nothing"), "RUNTIME": "torch"})
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "does not exist" in ready.json["reason"]
    assert client.get("/healthz").status_code == 200
    assert post_predict(client, [upload(b"x")]).status_code == 503
    assert b"No model is loaded" in client.get("/").data


def test_corrupt_model_file_is_not_ready_and_no_server_path_is_shown(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "export.pkl").write_bytes(b"this is not a pickle")
    client = create_app({"TESTING": True, "MODEL_PATH": str(run), "RUNTIME": "torch"}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "not a loadable fastai learner" in ready.json["reason"]
    assert "myrun/export.pkl" in ready.json["reason"]
    for response in (ready, client.get("/"), client.get("/api/v1/model")):
        assert str(tmp_path) not in response.get_data(as_text=True)


def test_readiness_names_the_model_each_worker_serves(client, trained_run):
    import hashlib

    ready = client.get("/readyz").json
    expected = hashlib.sha256((trained_run / "export.pkl").read_bytes()).hexdigest()
    assert ready["model_sha256"] == expected and isinstance(ready["worker"], int)
    assert client.get("/api/v1/model").json["sha256"] == expected


def test_a_new_model_caught_between_its_two_files_is_loaded_once_both_land(trained_run, demo_data, tmp_path):
    import shutil
    import time

    from training.fsutil import atomic_path

    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(trained_run, old)
    shutil.copytree(trained_run, new)
    new_learner = Predictor.load(new, runtime="torch").learn  # a different model: same weights, new bytes
    new_learner.meta = {**new_learner.meta, "recipe": "retrained"}
    new_learner.export(new / "export.pkl")
    report = read_report(new)
    report["model_sha256"] = hashlib.sha256((new / "export.pkl").read_bytes()).hexdigest()
    app = create_app({"TESTING": True, "MODEL_PATH": str(old), "RUNTIME": "torch"})
    holder = app.extensions[EXTENSION]
    holder.check_every = 0
    first = holder.get()
    with atomic_path(old / "export.pkl") as tmp:  # the order training writes them: the model, then its report
        shutil.copy(new / "export.pkl", tmp)
    time.sleep(0.01)
    assert settled(holder) is first and "does not match" in holder.error  # mismatched pair refused, old one kept
    with atomic_path(old / "report.json") as tmp:
        tmp.write_text(json.dumps(report))
    time.sleep(0.01)
    served = settled(holder)
    assert served is not first and served.sha256 == report["model_sha256"] and served.meta["recipe"] == "retrained"


def test_model_file_change_is_picked_up_whole(trained_run, tmp_path, demo_data):
    import shutil
    import time

    run = tmp_path / "run"
    run.mkdir()
    app = create_app({"TESTING": True, "MODEL_PATH": str(run), "RUNTIME": "torch"})
    holder = app.extensions[EXTENSION]
    holder.check_every = 0
    assert holder.get() is None
    for name in ("report.json", "confusion_matrix.png", "export.pkl"):
        shutil.copy(trained_run / name, run / name)
    time.sleep(0.01)
    predictor = settled(holder)
    assert predictor is not None and predictor.classes == sorted(SMOKE_CLASSES)
    assert predictor.predict([open_image(next(demo_data.rglob("*.jpg")))])[0].labels


def settled(holder):
    """The holder's model once a reload that this check starts has finished."""
    holder.get()
    holder.wait_for_reload(timeout=120)
    return holder.get()


def test_requests_keep_the_old_model_while_a_new_one_loads(trained_run, tmp_path, monkeypatch):
    import threading

    from training.inference import Predictor

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    app = create_app({"TESTING": True, "MODEL_PATH": str(run), "RUNTIME": "torch"})
    holder = app.extensions[EXTENSION]
    now = [0.0]
    holder.clock = lambda: now[0]
    first = holder.get()
    loading, release = threading.Event(), threading.Event()
    real_load = Predictor.load.__func__

    def slow_load(cls, *args, **kwargs):  # the real load, held until the test has seen requests served meanwhile
        loading.set()
        release.wait(10)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Predictor, "load", classmethod(slow_load))
    (run / "report.json").touch()
    os.utime(run / "report.json", ns=(1, 1))  # a new stamp, whatever the file system's clock resolution
    now[0] += holder.check_every + 1
    assert holder.get() is first  # the check saw the change and answered at once, with the old model
    assert loading.wait(10)
    now[0] += holder.check_every + 1
    assert holder.get() is first  # while the load runs, requests are served, and no second load starts
    release.set()
    holder.wait_for_reload(timeout=120)
    assert holder.get() is not first and holder.get().sha256 == first.sha256


def test_rate_limit_is_off_by_default_and_429_when_set(trained_run, demo_data):
    image = next(demo_data.rglob("*.jpg")).read_bytes()
    default = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch"}).test_client()
    assert all(post_predict(default, [upload(image)]).status_code == 200 for _ in range(5))
    limited = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch",
                          "RATE_LIMIT_PER_MINUTE": 3}).test_client()
    statuses = [post_predict(limited, [upload(image)]).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    body = post_predict(limited, [upload(image)]).json
    assert body["error"]["code"] == "too_many_requests"


def test_the_form_and_the_api_share_one_rate_limit(trained_run, demo_data):
    image = next(demo_data.rglob("*.jpg")).read_bytes()
    client = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "RATE_LIMIT_PER_MINUTE": 3,
                         "WTF_CSRF_ENABLED": False}).test_client()
    form = {"file": [upload(image)]}
    assert client.post("/predict", data=form, content_type="multipart/form-data").status_code == 200
    assert [post_predict(client, [upload(image)]).status_code for _ in range(2)] == [200, 200]
    page = client.post("/predict", data={"file": [upload(image)]}, content_type="multipart/form-data")
    assert page.status_code == 429 and "Too many requests" in page.get_data(as_text=True)


def client_after_checking_setting(monkeypatch, trained_run, name, refused, message, accepted):
    """A bad value of a GUITARS_* choice stops the app with `message`; a good one gives a client serving the run."""
    monkeypatch.setenv("GUITARS_MODEL", str(trained_run))
    monkeypatch.setenv("GUITARS_SECRET_KEY", "test-secret")
    monkeypatch.setenv(name, refused)
    with pytest.raises(ValueError, match=message):
        create_app()
    monkeypatch.setenv(name, accepted)
    app = create_app()
    app.config["TESTING"] = True
    return app.test_client()


def test_runtime_setting_is_checked_and_used(trained_run, monkeypatch):
    client = client_after_checking_setting(
        monkeypatch, trained_run, "GUITARS_RUNTIME", "tensorrt",
        "GUITARS_RUNTIME must be one of auto, openvino-bf16, openvino, onnx, torch", "torch")
    assert client.get("/api/v1/model").json["runtime"] == "torch"


def test_required_bf16_on_a_cpu_without_it_leaves_the_app_unready_with_the_reason(trained_run, monkeypatch):
    from training import runtimes

    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: False)
    client = client_after_checking_setting(
        monkeypatch, trained_run, "GUITARS_RUNTIME", "bf16",
        "GUITARS_RUNTIME must be one of auto, openvino-bf16, openvino, onnx, torch", "openvino-bf16")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no native bf16" in ready.json["reason"]
    assert post_predict(client, [upload(encode(Image.new("RGB", (64, 64))))]).status_code == 503


def test_tta_setting_is_checked_and_used(trained_run, demo_data, monkeypatch):
    client = client_after_checking_setting(
        monkeypatch, trained_run, "GUITARS_TTA", "yes", "GUITARS_TTA must be one of off, flip", "flip")
    assert client.get("/api/v1/model").json["tta"] == "flip"
    path = next((demo_data / "flying_v").glob("*.jpg"))
    expected = Predictor.load(trained_run, tta=True).predict([open_image(path)])[0]
    (result,) = post_predict(client, [upload(path.read_bytes())]).json["results"]
    assert result["predictions"][0]["label"] == expected.labels[0]
    assert result["predictions"][0]["probability"] == pytest.approx(expected.probabilities[0], abs=1e-5)


def test_large_uploads_are_never_spooled_to_disk(client, demo_data, monkeypatch):
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload touched the disk")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    padded = photo + b"\0" * (3 * 1024 * 1024)  # bytes after a JPEG's end are ignored by decoders
    response = post_predict(client, [upload(padded)])
    assert response.status_code == 200, response.json
