"""A real gunicorn on a free loopback port, hit with real uploads; a killed worker is replaced."""
import os
import signal
import time

import pytest
import requests

from tests.helpers import worker_pids
from training.imaging import open_image
from training.inference import Predictor


@pytest.mark.slow
def test_gunicorn_serves_predictions_and_survives_a_killed_worker(server, trained_run, demo_data):
    url, proc, _ = server
    images = sorted(demo_data.rglob("*.jpg"))[:6]
    predictor = Predictor.load(trained_run)  # auto, as the workers load it: the same runtime
    expected = [predictor.predict([open_image(p)])[0] for p in images]  # one photo a call, as each request is
    for path, answer in zip(images, expected):
        response = requests.post(url + "/api/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=30)
        assert response.status_code == 200
        (top, *_) = response.json()["results"][0]["predictions"]
        assert top["label"] == answer.labels[0], path
        # the workers run fewer threads, which may round a sum differently
        assert top["probability"] == pytest.approx(answer.probabilities[0], abs=1e-4)
    bad = requests.post(url + "/api/v1/predict", files={"file": ("x.jpg", b"garbage")}, timeout=30)
    assert bad.status_code == 415
    assert requests.get(url + "/", timeout=10).headers["X-Frame-Options"] == "DENY"

    workers = worker_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    answered = 0
    while time.monotonic() < deadline and answered < 10:
        try:
            response = requests.post(url + "/api/v1/predict",
                                     files={"file": (images[0].name, images[0].read_bytes())}, timeout=30)
            assert response.status_code == 200
            answered += 1
        except requests.ConnectionError:
            time.sleep(0.2)
    assert answered == 10
    while time.monotonic() < deadline and len(worker_pids(proc.pid)) < 2:
        time.sleep(0.3)
    replaced = worker_pids(proc.pid)
    assert len(replaced) == 2 and workers[0] not in replaced
