"""Hostile uploads against a real gunicorn whose workers are capped in memory: each file gets its status, the next
photo its answer, and the workers stay alive and small."""
import io
import json
import resource
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.helpers import proc_kb, worker_pids
from tests.make_bad_corpus import container_with_png, many_scan_jpeg

BAD = Path(__file__).parent / "data" / "bad"
HEADROOM = 2 * 1024**3  # address space a worker may add while serving; a 40 GB canvas can't hide in it


def generated() -> list[tuple[str, bytes, int]]:
    """The large hostile files, made here rather than committed."""
    tall = io.BytesIO()
    Image.new("L", (1, 200000), 9).save(tall, format="TIFF")  # 1.4 MB, uncompressed
    return [
        ("tall_1x200000.tif", tall.getvalue(), 200),
        ("scans_1000_6000x6000.jpg", many_scan_jpeg(1000, side=6000), 415),
        ("ico_12000x12000.ico", container_with_png("ico", (BAD / "bomb_12000x12000.png").read_bytes()), 415),
    ]


@pytest.mark.slow
def test_hostile_corpus_against_capped_workers(server, demo_data):
    url, proc, _ = server
    workers = worker_pids(proc.pid)
    for pid in workers:  # an allocation beyond the cap fails (MemoryError, a 500) instead of taking the machine down
        cap = proc_kb(pid, "VmSize") * 1024 + HEADROOM
        resource.prlimit(pid, resource.RLIMIT_AS, (cap, cap))
    photo = next((demo_data / "les_paul").glob("*.jpg")).read_bytes()

    def post(name, data):
        return requests.post(url + "/api/v1/predict", files={"file": (name, data)}, timeout=60)

    reference = [post("ok.jpg", photo).json()["results"] for _ in range(4)][-1]  # both workers warm
    idle = {pid: proc_kb(pid, "VmRSS") for pid in workers}
    for pid in workers:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    manifest = json.loads((BAD / "manifest.json").read_text())
    corpus = [(name, (BAD / name).read_bytes(), e["status"]) for name, e in sorted(manifest.items())] + generated()
    slowest = 0.0
    for name, data, status in corpus:
        started = time.monotonic()
        response = post(name, data)
        slowest = max(slowest, time.monotonic() - started)
        assert response.status_code == status, (name, response.status_code, response.text[:200])
        again = post("ok.jpg", photo)
        assert again.status_code == 200 and again.json()["results"] == reference, name
    assert worker_pids(proc.pid) == workers, "a worker died"
    for pid in workers:
        peak = proc_kb(pid, "VmHWM")
        assert peak < 2 * idle[pid], f"worker {pid}: peak RSS {peak // 1024} MB, idle {idle[pid] // 1024} MB"
    assert slowest < 5, f"one hostile file held a worker thread for {slowest:.1f} s"
