"""A training run replaces the served model: every worker serves the new one within 10 s, no request fails."""
import hashlib
import shutil
import threading
import time

import pytest
import requests

from tests.helpers import ROOT, gunicorn_server
from training.fsutil import atomic_path


@pytest.mark.slow
def test_every_worker_serves_the_new_model_within_10_s(trained_run, logged_run, demo_data, tmp_path):
    live, (new, _) = tmp_path / "live", logged_run  # a second, separately trained run replaces the first
    shutil.copytree(trained_run, live)
    old_sha = hashlib.sha256((live / "export.pkl").read_bytes()).hexdigest()
    new_sha = hashlib.sha256((new / "export.pkl").read_bytes()).hexdigest()
    assert old_sha != new_sha
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    failures, stop = [], threading.Event()

    with gunicorn_server(str(live), ROOT, tmp_path / "gunicorn.log") as (url, _):
        def keep_asking():
            while not stop.is_set():
                try:
                    response = requests.post(url + "/api/v1/predict", files={"file": ("p.jpg", photo)}, timeout=30)
                    if response.status_code != 200:
                        failures.append(response.status_code)
                except requests.RequestException as exc:
                    failures.append(repr(exc))

        client = threading.Thread(target=keep_asking)
        client.start()
        try:
            # Install the new run in the order training writes it, with a pause in between that every worker's
            # check (every 2 s) falls into: the model first, then the report that vouches for it.
            with atomic_path(live / "export.pkl") as tmp:
                shutil.copyfile(new / "export.pkl", tmp)
            time.sleep(3)
            assert requests.get(url + "/readyz", timeout=30).json()["model_sha256"] == old_sha  # mismatch refused
            with atomic_path(live / "report.json") as tmp:
                shutil.copyfile(new / "report.json", tmp)
            installed = time.monotonic()
            served = {}
            while time.monotonic() - installed < 10:
                ready = requests.get(url + "/readyz", timeout=30).json()
                served[ready["worker"]] = ready["model_sha256"]
                if len(served) == 2 and set(served.values()) == {new_sha}:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - installed
        finally:
            stop.set()
            client.join()
    assert set(served.values()) == {new_sha} and len(served) == 2, f"after {elapsed:.1f} s workers serve {served}"
    assert not failures, failures
