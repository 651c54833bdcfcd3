"""Prometheus metrics at /metrics, counted across every gunicorn worker (prometheus_client's multiprocess mode)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from training.fsutil import atomic_path

bp = Blueprint("metrics", __name__)
# Request phases of a CPU model server: a photo decodes in milliseconds and runs the model in tens of them.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("guitars_requests", "Requests answered, by route and status.", ["route", "status"])
REQUEST_SECONDS = Histogram("guitars_request_seconds", "Time to answer a request, by route.", ["route"], buckets=SECONDS)
PHASE_SECONDS = Histogram("guitars_phase_seconds", "Time of a classifying request's phases (decode, model).",
                          ["phase"], buckets=SECONDS)
PREDICTIONS = Counter("guitars_predictions", "Photos answered, by top class.", ["label"])
UNSURE = Counter("guitars_unsure_answers", "Photos whose answer was shown as not sure.")
OUT_OF_SCOPE = Counter("guitars_out_of_scope_answers", "Photos answered as none of the model's classes.")
# One series per worker (a pid label): how long its model took to load. A worker has it from its first load until
# gunicorn.conf.py's child_exit marks it dead, so its pids are the live workers that serve a model.
LOAD_SECONDS = "guitars_model_load_seconds"
MODEL_LOAD_SECONDS = Gauge(LOAD_SECONDS, "Seconds the served model took to load.", multiprocess_mode="liveall")
# guitars_model is no Gauge: multiprocess mode can't remove a series, so each reload would leave the previous model's
# behind. Each worker writes what it serves to a file of its own instead, and the scrape reads the live workers' files.
MODEL = "guitars_model"
MODEL_HELP = ("The served model (1), by worker, SHA-256, version (the promoted run's name; empty without a models "
              "folder) and runtime.")
SERVED_FILE = "served_model_{pid}.json"
STALE_SECONDS = 60  # a file this old whose worker is not live is a dead worker's: deleted
_served: dict[str, str] = {}  # this worker's model: sha256, version, runtime


def multiprocess_dir() -> str | None:
    """The folder every worker writes its counts to, when gunicorn.conf.py has set one up."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


@bp.get("/metrics")
def metrics():
    folder = multiprocess_dir()
    counts = multiprocess.MultiProcessCollector(None) if folder else REGISTRY  # None: not registered anywhere
    return Response(generate_latest(ServedModels(counts, folder)), mimetype=CONTENT_TYPE_LATEST)


class ServedModels:
    """The metrics of `counts`, and guitars_model: one series for each live worker, the model it serves now."""

    def __init__(self, counts, folder: str | None):
        self.counts, self.folder = counts, folder

    def collect(self):
        families = list(self.counts.collect())
        yield from families
        if self.folder:
            live = {s.labels["pid"] for f in families if f.name == LOAD_SECONDS for s in f.samples}
            served = served_models(Path(self.folder), live)
        else:  # one process (flask run, the test client)
            served = {str(os.getpid()): dict(_served)} if _served else {}
        family = GaugeMetricFamily(MODEL, MODEL_HELP, labels=["pid", "sha256", "version", "runtime"])
        for pid, model in sorted(served.items()):
            family.add_metric([pid, model["sha256"], model["version"], model["runtime"]], 1)
        yield family


def served_models(folder: Path, live: set[str]) -> dict[str, dict]:
    """{pid: the model it serves} of the live workers' files in `folder`; dead workers' old files are deleted."""
    served = {}
    for path in folder.glob(SERVED_FILE.format(pid="*")):
        pid = path.stem.rpartition("_")[2]
        try:
            if pid in live:
                served[pid] = json.loads(path.read_text())
            elif time.time() - path.stat().st_mtime > STALE_SECONDS:
                # Not at once: a worker may write its file between this scrape's reading of the live pids and now.
                path.unlink(missing_ok=True)
        except (OSError, ValueError):  # deleted meanwhile (files are replaced whole, never seen half-written)
            continue
    return served


def record_model(sha256: str, version: str | None, runtime: str, load_seconds: float) -> None:
    """Make the model this worker now serves its only guitars_model series (version None: no models folder)."""
    MODEL_LOAD_SECONDS.set(load_seconds)  # first: it makes the worker live before its file names a model
    _served.clear()
    _served.update(sha256=sha256, version=version or "", runtime=runtime)
    folder = multiprocess_dir()
    if folder:
        # atomic_path's temporary name starts with a dot, so no scrape reads the file half-written
        with atomic_path(Path(folder) / SERVED_FILE.format(pid=os.getpid())) as tmp:
            tmp.write_text(json.dumps(_served))


def record_results(results: list[dict]) -> None:
    """Count one classifying request's answers."""
    for result in results:
        PREDICTIONS.labels(result["predictions"][0]["label"]).inc()
        UNSURE.inc(bool(result.get("uncertain")))
        OUT_OF_SCOPE.inc(not result.get("in_scope", True))


def _start_timer():
    g.metrics_started = time.perf_counter()


def _count(response):
    route = request.url_rule.rule if request.url_rule else "unmatched"  # never the raw path: bounded labels
    if route != "/metrics":
        REQUESTS.labels(route, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(route).observe(time.perf_counter() - g.get("metrics_started", time.perf_counter()))
        for phase, seconds in (g.get("server_timing") or {}).items():
            PHASE_SECONDS.labels(phase).observe(seconds)
    return response


def init_app(app: Flask) -> None:
    """Time and count every request, and serve /metrics (deploy/nginx.conf keeps it off the public side)."""
    app.before_request(_start_timer)
    app.after_request(_count)
    app.register_blueprint(bp)
