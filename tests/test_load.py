"""16 concurrent clients against a real gunicorn: no 5xx, correct answers, stable worker memory, no temp files."""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import proc_kb, worker_pids
from training.imaging import open_image
from training.inference import Predictor

BAD = Path(__file__).parent / "data" / "bad"
CLIENTS, REQUESTS = 16, 240


@pytest.mark.slow
def test_concurrent_mixed_load(server, trained_run, demo_data):
    url, proc, tmpdir = server
    predictor = Predictor.load(trained_run)
    valid = sorted(demo_data.rglob("*.jpg"))[:12]
    expected = {p.name: predictor.predict([open_image(p)])[0] for p in valid}
    manifest = json.loads((BAD / "manifest.json").read_text())
    invalid = [(name, e["status"]) for name, e in manifest.items() if e["status"] != 200]
    big = ("big.jpg", b"\xff\xd8" + b"\0" * (21 * 1024 * 1024), 413)  # over the 20 MB default limit

    jobs = []
    for k in range(REQUESTS):
        if k % 3:
            path = valid[k % len(valid)]
            jobs.append((path.name, path.read_bytes(), 200))
        elif k % 47 == 0:
            jobs.append(big)
        else:
            name, status = invalid[k % len(invalid)]
            jobs.append((name, (BAD / name).read_bytes(), status))

    def send(job):
        name, data, status = job
        try:
            response = requests.post(url + "/api/v1/predict", files={"file": (name, data)}, timeout=120)
        except requests.ConnectionError:
            # gunicorn may close the connection while we are still sending a refused oversized body.
            return name, 413 if status == 413 else -1, None, status
        return name, response.status_code, response.json(), status

    send(jobs[1])  # warm both code paths before measuring memory
    before = {pid: proc_kb(pid, "VmRSS") / 1024 for pid in worker_pids(proc.pid)}
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(send, jobs))
    elapsed = time.monotonic() - started
    after = {pid: proc_kb(pid, "VmRSS") / 1024 for pid in worker_pids(proc.pid)}

    assert not [o for o in outcomes if o[1] >= 500 or o[1] < 0]
    for name, status, body, wanted in outcomes:
        assert status == wanted, (name, status, body)
        if status == 200:
            (result,) = body["results"]
            truth = expected[name]
            assert result["predictions"][0]["label"] == truth.labels[0]
            assert abs(result["predictions"][0]["probability"] - truth.probabilities[0]) < 1e-4
    assert set(before) == set(after), "a worker died under load"
    print(f"\n{REQUESTS} requests from {CLIENTS} clients in {elapsed:.1f}s; worker RSS MB before {before} after {after}")
    for pid in before:
        assert after[pid] < before[pid] * 1.25 + 40, f"worker {pid} grew from {before[pid]:.0f} to {after[pid]:.0f} MB"
    assert not list(tmpdir.iterdir()), "uploads left files in the temp dir"
