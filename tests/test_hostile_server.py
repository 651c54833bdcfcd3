"""Hostile uploads against a real gunicorn whose workers are capped in memory: each file (and each request of
several) gets its status within 5 s, the next photo its answer, and the workers stay alive and within 1 GB of idle."""
import io
import json
import resource
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.helpers import proc_kb, without_ids, worker_pids
from tests.hostile_uploads import ROWS, animated_webp_big_canvas, sixteen_bit
from tests.make_bad_corpus import container_with_png, many_scan_jpeg

BAD = Path(__file__).parent / "data" / "bad"
HEADROOM = 2 * 1024**3  # address space a worker may add while serving; a 40 GB canvas can't hide in it
GROWTH = 1024**3  # what a worker's peak memory may be above its idle
ANSWER_WITHIN = 5.0


def generated() -> list[tuple[list[tuple[str, bytes]], int]]:
    """The large hostile files and requests, made here rather than committed: ([(name, bytes)], status)."""
    tall = io.BytesIO()
    Image.new("L", (1, 200000), 9).save(tall, format="TIFF")  # 1.4 MB, uncompressed
    deep, canvas = sixteen_bit("PNG"), animated_webp_big_canvas()
    single = [("tall_1x200000.tif", tall.getvalue(), 200),
              ("scans_1000_6000x6000.jpg", many_scan_jpeg(1000, side=6000), 415),
              ("ico_12000x12000.ico", container_with_png("ico", (BAD / "bomb_12000x12000.png").read_bytes()), 415)]
    single += [(name, make(), status) for name, make, status, _ in ROWS]
    requests_of_eight = [  # row 9 of #27: eight large valid images in one request
        ([(f"deep-{k}.png", deep) for k in range(8)], 422),  # past the request's pixel budget at the third
        ([(f"canvas-{k}.webp", canvas) for k in range(8)], 422),  # past the request's deadline or its pixel budget
    ]
    return [([(name, data)], status) for name, data, status in single] + requests_of_eight


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

    reference = [without_ids(post("ok.jpg", photo).json()["results"]) for _ in range(4)][-1]  # both workers warm
    idle = {pid: proc_kb(pid, "VmRSS") * 1024 for pid in workers}
    for pid in workers:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    manifest = json.loads((BAD / "manifest.json").read_text())
    corpus = [([(name, (BAD / name).read_bytes())], e["status"]) for name, e in sorted(manifest.items())] + generated()
    slowest = (0.0, "")
    for files, status in corpus:
        names = ", ".join(name for name, _ in files)
        started = time.monotonic()
        response = requests.post(url + "/api/v1/predict", files=[("file", f) for f in files], timeout=60)
        slowest = max(slowest, (time.monotonic() - started, names))
        assert response.status_code == status, (names, response.status_code, response.text[:200])
        again = post("ok.jpg", photo)
        assert again.status_code == 200 and without_ids(again.json()["results"]) == reference, names
    assert worker_pids(proc.pid) == workers, "a worker died"
    for pid in workers:
        peak = proc_kb(pid, "VmHWM") * 1024
        assert peak - idle[pid] < GROWTH, f"worker {pid}: peak RSS {peak >> 20} MB, idle {idle[pid] >> 20} MB"
    assert slowest[0] < ANSWER_WITHIN, f"{slowest[1]} held a worker thread for {slowest[0]:.1f} s"
