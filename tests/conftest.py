"""Shared fixtures: a small drawn dataset, one real smoke training run, and the Flask app around it."""
from __future__ import annotations

import contextlib
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
        wait_ready(url, time.monotonic() + 120)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def server(trained_run, tmp_path):
    """gunicorn with the smoke model on a free loopback port; yields (url, master process, its TMPDIR)."""
    tmpdir = tmp_path / "server-tmp"
    tmpdir.mkdir()
    with gunicorn_server(str(trained_run), ROOT, tmp_path / "gunicorn.log", TMPDIR=str(tmpdir)) as (url, proc):
        yield url, proc, tmpdir


@pytest.fixture
def make_run_server(trained_run, tmp_path):
    """gunicorn started the way `make run` starts it: a model path relative to the operator's working directory.

    With GUITARS_SCREENSHOTS set it serves `make run`'s own demo model from the checkout, for the README's pictures.
    """
    if os.environ.get("GUITARS_SCREENSHOTS"):
        if not (ROOT / "runs" / "demo" / "export.pkl").is_file():
            pytest.fail("GUITARS_SCREENSHOTS needs make run's model: run `make demo` first")
        site = ROOT
    else:
        site = tmp_path / "site"
        (site / "runs").mkdir(parents=True)
        (site / "runs" / "demo").symlink_to(trained_run, target_is_directory=True)
    with gunicorn_server("runs/demo", site, tmp_path / "gunicorn.log") as (url, _):
        yield url
