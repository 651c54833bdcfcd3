"""A training run replaces the served model: every worker serves the new one within 45 s, no request fails, and
requests are answered in their usual time while the new model loads (off the request path, its graph export in a
child process)."""
import hashlib
import shutil
import threading
import time

import pytest
import requests

from tests.helpers import ROOT, gunicorn_server
from training.fsutil import atomic_path


@pytest.mark.slow
def test_every_worker_serves_the_new_model_within_45_s(trained_run, logged_run, demo_data, tmp_path):
    live, (new, _) = tmp_path / "live", logged_run  # a second, separately trained run replaces the first
    shutil.copytree(trained_run, live)
    old_sha = hashlib.sha256((live / "export.pkl").read_bytes()).hexdigest()
    new_sha = hashlib.sha256((new / "export.pkl").read_bytes()).hexdigest()
    assert old_sha != new_sha
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    failures, stop, timings = [], threading.Event(), []  # (when it started, how long it took)

    # Never recycled here: a worker restarting loads the new model afresh, which is not what is tested.
    with gunicorn_server(str(live), ROOT, tmp_path / "gunicorn.log", GUITARS_MAX_REQUESTS="1000000") as (url, _):
        def keep_asking():
            while not stop.is_set():
                try:
                    started = time.monotonic()
                    response = requests.post(url + "/api/v1/predict", files={"file": ("p.jpg", photo)}, timeout=30)
                    timings.append((started, time.monotonic() - started))
                    if response.status_code != 200:
                        failures.append(response.status_code)
                except requests.RequestException as exc:
                    failures.append(repr(exc))

        client = threading.Thread(target=keep_asking)
        client.start()
        time.sleep(3)  # the usual time of a request, before anything changes
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
            while time.monotonic() - installed < 45:
                ready = requests.get(url + "/readyz", timeout=30).json()
                served[ready["worker"]] = ready["model_sha256"]
                if len(served) == 2 and set(served.values()) == {new_sha}:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - installed
            time.sleep(1)
        finally:
            stop.set()
            client.join()
    assert set(served.values()) == {new_sha} and len(served) == 2, f"after {elapsed:.1f} s workers serve {served}"
    assert not failures, failures
    usual = sorted(took for started, took in timings if started < installed - 3)
    during = [took for started, took in timings if installed <= started <= installed + elapsed]
    typical = usual[len(usual) // 2]
    print(f"usual {typical * 1000:.0f} ms (slowest {usual[-1] * 1000:.0f}), during the {elapsed:.1f} s reload: "
          f"slowest {max(during) * 1000:.0f} ms of {len(during)}")
    # A load on the request path held every request for seconds (2.7-8.5 s in the attack round of #27).
    # The new model loads beside the requests (the GIL and two cores shared): slower, never stalled behind it.
    assert max(during) < max(1.5, 10 * typical), f"a request took {max(during):.2f} s while the model loaded"
