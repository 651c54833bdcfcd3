"""Shared fixtures: a small drawn dataset, one real smoke training run, and the Flask app around it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from training.demo import make_demo_dataset

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "guitars"
SMOKE_CLASSES = ["stratocaster", "flying_v", "les_paul"]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep fingerprint caches out of the user's home."""
    os.environ["GUITARS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """Three classes of drawn guitars, 14 photos each."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=14, size=96, classes=SMOKE_CLASSES,
                             progress=False)


@pytest.fixture(scope="session")
def trained_run(demo_data, tmp_path_factory) -> Path:
    """A real `flask train --recipe smoke` run, shared by the tests that only read its outputs."""
    from webapp import create_app

    out = tmp_path_factory.mktemp("runs") / "smoke"
    runner = create_app({"TESTING": True}).test_cli_runner()
    result = runner.invoke(args=["train", "--data", str(demo_data), "--recipe", "smoke", "--out", str(out),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def app(trained_run):
    from webapp import create_app

    return create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "WTF_CSRF_ENABLED": False})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=10).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still loading the model
            pass
        time.sleep(0.3)
    raise AssertionError("gunicorn did not become ready in time")


@pytest.fixture
def server(trained_run, tmp_path):
    """gunicorn with the smoke model on a free loopback port; yields (url, master process, its TMPDIR)."""
    port = free_port()
    tmpdir = tmp_path / "server-tmp"
    tmpdir.mkdir()
    env = {**os.environ, "GUITARS_MODEL": str(trained_run), "GUITARS_BIND": f"127.0.0.1:{port}",
           "GUITARS_WORKERS": "2", "GUITARS_SECRET_KEY": "test-secret", "TMPDIR": str(tmpdir)}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, time.monotonic() + 120)
        yield url, proc, tmpdir
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
