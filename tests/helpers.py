"""What several test files share: paths, image payloads, a real gunicorn, process facts, recipe files."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "guitars"
SMOKE_CLASSES = ["stratocaster", "flying_v", "les_paul"]
LITE0_STAGE = 'backbone = "efficientnet_lite0"\nsize = 64\nbs = 16\nfrozen = false\nlr = [1e-5, 1e-3]\n'


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    """An image as the bytes of a file in `fmt`."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def upload(data: bytes, name: str = "photo.jpg"):
    """A file for the Flask test client's multipart form."""
    return (io.BytesIO(data), name)


def elastic_recipe(path: Path, budget_minutes: float, fixed_epochs: int, elastic_epochs: str, elastic_size: int = 64) -> Path:
    """A two-stage Lite0 recipe whose last stage takes its epochs from the budget, written to `path`."""
    elastic_stage = LITE0_STAGE.replace("size = 64", f"size = {elastic_size}")
    path.write_text(f"budget_minutes = {budget_minutes}\nseed = 7\nvalid_pct = 0.25\n"
                    f"[[stages]]\nname = 'fixed'\nepochs = {fixed_epochs}\n{LITE0_STAGE}"
                    f"[[stages]]\nname = 'elastic'\nepochs = {elastic_epochs}\n{elastic_stage}")
    return path


def demo_frame(data: Path) -> tuple[pd.DataFrame, list[str]]:
    """A split frame (`path`, `is_valid`: every fourth photo) over a drawn dataset, and its classes."""
    frame = pd.DataFrame({"path": [str(p) for p in sorted(data.rglob("*.jpg"))]})
    frame["is_valid"] = np.arange(len(frame)) % 4 == 0
    return frame, sorted({Path(p).parent.name for p in frame["path"]})


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, deadline: float, path: str = "/readyz") -> None:
    """Wait until `url`/readyz (or another path) answers 200."""
    while time.monotonic() < deadline:
        try:
            if requests.get(url + path, timeout=10).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still loading the model
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not become ready in time")


def wait_workers_ready(url: str, workers: int, deadline: float) -> None:
    """Wait until `workers` distinct workers have answered /readyz 200: a worker still loading takes no connections,
    and a test that means two workers would otherwise run on one."""
    seen = set()
    while time.monotonic() < deadline:
        try:
            with requests.Session() as session:  # a new connection each time: any ready worker may accept it
                response = session.get(url + "/readyz", timeout=10)
            if response.status_code == 200:
                seen.add(response.json()["worker"])
                if len(seen) >= workers:
                    return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.05)
    raise AssertionError(f"only {len(seen)} of {workers} workers became ready in time")


@contextlib.contextmanager
def gunicorn_server(model: str, cwd: Path, log_path: Path, **env_extra):
    """A real gunicorn (the repo's gunicorn.conf.py, wsgi:app) started in `cwd`; yields (url, master process)."""
    port = free_port()
    env = {**os.environ, "GUITARS_MODEL": model, "GUITARS_BIND": f"127.0.0.1:{port}", "GUITARS_WORKERS": "2",
           "GUITARS_SECRET_KEY": "test-secret", "PYTHONPATH": str(ROOT), **env_extra}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(log_path, "w")
    proc = subprocess.Popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_workers_ready(url, int(env["GUITARS_WORKERS"]), time.monotonic() + 120)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)  # quick shutdown: a graceful one waits out the clients' keep-alive
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def worker_pids(master: int) -> list[int]:
    """gunicorn's worker processes."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def proc_kb(pid: int, field: str) -> int:
    """A /proc/PID/status figure in kB (VmRSS, VmHWM, VmSize...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))  # as the Makefile's `browser` target
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make browser)"),
]


class PageWatch:
    """Records what a page asked for that failed, and what it logged as an error."""

    def __init__(self, page):
        self.failed, self.console = [], []
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda r: self.failed.append(f"failed {r.url}"))
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.console.append(str(exc)))

    def assert_whole(self, page, expected_status: int = 200):
        """Every <img> decoded, no request got a 4xx/5xx (but the page itself, if expected), no console errors."""
        page.wait_for_load_state("networkidle")
        broken = page.evaluate(
            "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src)")
        assert not broken, f"images that did not load on {page.url}: {broken}"
        failed = [f for f in self.failed if f != f"{expected_status} {page.url}"]
        assert not failed, f"requests that failed on {page.url}: {failed}"
        console = [c for c in self.console if not (expected_status >= 400 and f"status of {expected_status}" in c)]
        assert not console, f"console errors on {page.url}: {console}"
        self.failed.clear()
        self.console.clear()


class FakeClock:
    """time.monotonic's stand-in that moves only when told: the test says what each step costs, not the machine."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def without_ids(results: list[dict]) -> list[dict]:
    """API results without their answer ids, which differ on every request: the answers themselves, to compare."""
    return [{key: value for key, value in result.items() if key != "id"} for result in results]


SCREENSHOTS = ROOT / "docs" / "screenshots"


def screenshot_target(tmp_path: Path, demo_data: Path) -> tuple[Path, Path]:
    """Where a browser test saves its screenshots, and the photos it uploads: with GUITARS_SCREENSHOTS set, the docs'
    folder and `make run`'s own demo data (the pictures show what a user gets), else the test's own."""
    refresh = bool(os.environ.get("GUITARS_SCREENSHOTS"))
    shots = SCREENSHOTS if refresh else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    return shots, ROOT / "demo_data" if refresh else demo_data
