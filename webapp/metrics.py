"""Prometheus metrics at /metrics, counted across every gunicorn worker (prometheus_client's multiprocess mode)."""
from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

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
# Gauges keep one series per worker (a pid label): which model each serves, and how long it took to load.
MODEL = Gauge("guitars_model", "The served model (1), by SHA-256 and runtime.", ["sha256", "runtime"],
              multiprocess_mode="liveall")
_served: list[tuple[str, str]] = []  # this worker's model, as (sha256, runtime)
MODEL_LOAD_SECONDS = Gauge("guitars_model_load_seconds", "Seconds the served model took to load.",
                           multiprocess_mode="liveall")


def multiprocess_dir() -> str | None:
    """The folder every worker writes its counts to, when gunicorn.conf.py has set one up."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


@bp.get("/metrics")
def metrics():
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def record_model(sha256: str, runtime: str, load_seconds: float) -> None:
    """Label this worker's series with the model it now serves (an earlier model's series drops to 0)."""
    for labels in _served:  # multiprocess mode can't remove a series, only set it
        MODEL.labels(*labels).set(0)
    _served[:] = [(sha256, runtime)]
    MODEL.labels(sha256, runtime).set(1)
    MODEL_LOAD_SECONDS.set(load_seconds)


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
