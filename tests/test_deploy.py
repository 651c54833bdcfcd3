"""The deployment we tell people to run (deploy/serve.sh: nginx in front of gunicorn) holds against slow clients."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, free_port, wait_ready

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists(),
                       reason="nginx is not installed (make proxy)"),
]
SLOW_CLIENTS, DRIP_SECONDS, ANSWER_WITHIN = 50, 1.0, 2.0


@contextlib.contextmanager
def deployed(trained_run, tmp_path, **settings):
    """deploy/serve.sh with the smoke model; yields nginx's URL and gunicorn's."""
    public, private = free_port(), free_port()
    env = {**os.environ, "GUITARS_MODEL": str(trained_run), "GUITARS_PUBLIC_BIND": f"127.0.0.1:{public}",
           "GUITARS_BIND": f"127.0.0.1:{private}", "GUITARS_WORKERS": "2", "GUITARS_THREADS": "2",
           "GUITARS_SECRET_KEY": "test-secret", "GUITARS_NGINX_DIR": str(tmp_path / "nginx"),
           "GUNICORN": str(Path(sys.executable).with_name("gunicorn")),
           "PATH": f"/usr/sbin:{os.environ.get('PATH', '')}", **settings}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(["bash", str(ROOT / "deploy" / "serve.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{public}", time.monotonic() + 120)
        yield f"http://127.0.0.1:{public}", f"http://127.0.0.1:{private}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def drip(port: int, stop: threading.Event, slow_body: bool) -> None:
    """One slowloris client: a request that never finishes, one byte at a time."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n"
        if slow_body:
            head += "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
        sock.sendall(head.encode())
        while not stop.wait(DRIP_SECONDS):
            try:
                sock.sendall(b"X")
            except OSError:  # the server gave up on us: that is its right
                return


@pytest.fixture(scope="module")
def deployment(trained_run, tmp_path_factory):
    """One deployment for both fronts: nginx's URL and gunicorn's own."""
    with deployed(trained_run, tmp_path_factory.mktemp("deploy")) as urls:
        yield urls


@pytest.mark.parametrize("front", ["nginx", pytest.param("bare gunicorn", marks=pytest.mark.xfail(
    strict=True, reason="without nginx, each dripping client holds a gunicorn thread: why deploy/ exists"))])
def test_a_real_photo_is_answered_within_2_s_while_50_clients_drip(deployment, demo_data, front):
    public, private = deployment
    assert_answered_while_dripping(public if front == "nginx" else private, demo_data)


def assert_answered_while_dripping(url, demo_data):
    port = int(url.rsplit(":", 1)[1])
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    stop = threading.Event()
    clients = [threading.Thread(target=drip, args=(port, stop, k % 5 == 0), daemon=True) for k in range(SLOW_CLIENTS)]
    for client in clients:
        client.start()
    try:
        time.sleep(3 * DRIP_SECONDS)  # every slow client connected and dripping
        timings = []
        for _ in range(3):
            started = time.monotonic()
            response = requests.post(url + "/api/v1/predict", files={"file": ("p.jpg", photo)}, timeout=ANSWER_WITHIN)
            timings.append(time.monotonic() - started)
            assert response.status_code == 200
            assert requests.get(url + "/readyz", timeout=ANSWER_WITHIN).status_code == 200
    finally:
        stop.set()
    assert max(timings) < ANSWER_WITHIN, timings


def test_a_forged_forwarded_for_does_not_escape_the_rate_limit(trained_run, tmp_path, demo_data):
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    with deployed(trained_run, tmp_path, GUITARS_RATE_LIMIT="2", GUITARS_WORKERS="1") as (url, _):
        statuses = [requests.post(url + "/api/v1/predict", files={"file": ("p.jpg", photo)}, timeout=30,
                                  headers={"X-Forwarded-For": f"10.0.0.{k}"}).status_code for k in range(3)]
        server = requests.get(url + "/", timeout=10).headers.get("Server", "")
        assert requests.get(url + "/metrics", timeout=10).status_code == 404  # scraped on loopback only
    assert statuses == [200, 200, 429]  # the app counts nginx's view of the client, not the client's claim
    assert server == "nginx"  # no version on show


def gunicorn_workers(private_url: str) -> list[int]:
    """The workers of the gunicorn serving `private_url` (found by the bind address in the master's environment)."""
    bind = f"GUITARS_BIND={private_url.removeprefix('http://')}".encode()
    found = [int(pid) for pid in subprocess.run(["pgrep", "-f", "bin/gunicorn"], capture_output=True,
                                                     text=True).stdout.split()]
    parents = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in found}
    for master in (pid for pid in found if parents[pid] not in found):  # a worker's parent is a gunicorn too
        with contextlib.suppress(OSError):
            if bind in Path(f"/proc/{master}/environ").read_bytes().split(b"\0"):
                children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
                if children:
                    return [int(pid) for pid in children]
    return []


def open_slow_uploads(port: int, count: int) -> list[socket.socket]:
    """`count` connections from this address, each with a whole upload header and a body that has not come yet."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")
        sockets.append(sock)
    return sockets


def test_one_client_gets_its_share_of_connections_and_uploads(trained_run, tmp_path, demo_data):
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    with deployed(trained_run, tmp_path) as (url, private):
        port = int(url.rsplit(":", 1)[1])
        held = open_slow_uploads(port, 24)
        time.sleep(1)
        refused = 0
        for sock in held:
            sock.settimeout(0.2)
            with contextlib.suppress(OSError):
                refused += sock.recv(64).startswith(b"HTTP/1.1 429")
            sock.close()
        statuses = [requests.post(url + "/api/v1/predict", files={"file": ("p.jpg", photo)}, timeout=30).status_code
                    for _ in range(40)]
        limits = [Path(f"/proc/{pid}/limits").read_text() for pid in gunicorn_workers(private)]
    assert refused == 24 - 16, f"{refused} of 24 held uploads refused; nginx allows 16 per client"
    assert statuses[:21] == [200] * 21 and 429 in statuses, statuses  # a burst of 20 passes, then 5 a second
    assert limits and all("Max address space" in text and "unlimited" not in text.split("Max address space")[1]
                          .splitlines()[0] for text in limits), "deploy/serve.sh must cap each worker's memory"
