"""Prometheus metrics counted across gunicorn's workers, request ids on answers and log lines, JSON logs."""
import io
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, gunicorn_server, worker_pids
from webapp.logs import JsonFormatter, RequestIdFilter
from webapp.metrics import served_models


def samples(text: str, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_requests_and_answers_are_counted(client, demo_data):
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        assert client.post("/api/v1/predict", data={"file": [(io.BytesIO(photo), "p.jpg")]}).status_code == 200
    assert client.get("/nowhere").status_code == 404
    after = client.get("/metrics").get_data(as_text=True)
    predict = {"route": "/api/v1/predict", "status": "200"}
    assert samples(after, "guitars_requests_total", **predict) - samples(before, "guitars_requests_total", **predict) == 3
    assert samples(after, "guitars_predictions_total") - samples(before, "guitars_predictions_total") == 3
    assert samples(after, "guitars_phase_seconds_count", phase="decode") - \
        samples(before, "guitars_phase_seconds_count", phase="decode") == 3
    assert samples(after, "guitars_requests_total", route="unmatched", status="404") >= 1  # never the raw path
    assert samples(after, "guitars_model", runtime=client.get("/api/v1/model").json["runtime"]) >= 1


def test_a_plain_request_id_is_kept_and_any_other_replaced(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    for hostile in ("a" * 65, "two words", "x\r\nInjected: 1", ""):
        given = client.get("/healthz", headers={"X-Request-ID": hostile} if hostile.isprintable() else {})
        assert re.fullmatch(r"[0-9a-f]{32}", given.headers["X-Request-ID"]), hostile


def test_log_records_carry_the_request_id_as_json(app):
    record = logging.LogRecord("webapp.model", logging.INFO, __file__, 1, "loaded %s", ("x",), None)
    with app.test_request_context("/", headers={"X-Request-ID": "req-7"}):
        app.preprocess_request()
        RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-7" and line["message"] == "loaded x" and line["level"] == "INFO"


@pytest.mark.slow
def test_two_workers_counts_add_up_and_every_log_line_is_json(trained_run, demo_data, tmp_path):
    photo = next(demo_data.rglob("*.jpg")).read_bytes()
    log_path = tmp_path / "gunicorn.log"
    with gunicorn_server(str(trained_run), ROOT, log_path, GUITARS_LOG_FORMAT="json") as (url, proc):
        answered, ids = {}, []  # which worker answered each predict: /readyz on the same connection says
        while len(set(answered.values())) < 2 and len(ids) < 200:
            with requests.Session() as session:  # a new connection, which either worker may accept
                rid = f"count-{len(ids)}"
                response = session.post(url + "/api/v1/predict", files={"file": ("p.jpg", photo)},
                                        headers={"X-Request-ID": rid}, timeout=60)
                assert response.status_code == 200 and response.headers["X-Request-ID"] == rid
                ids.append(rid)
                answered[rid] = session.get(url + "/readyz", timeout=30).json()["worker"]
        text = requests.get(url + "/metrics", timeout=30).text
        workers = worker_pids(proc.pid)
    assert len(set(answered.values())) == 2, "both workers should have answered"
    assert samples(text, "guitars_requests_total", route="/api/v1/predict", status="200") == len(ids)
    assert samples(text, "guitars_predictions_total") == len(ids)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's own included, is one JSON object
    access = {e["request_id"]: e["worker"] for e in entries if e.get("logger") == "gunicorn.access"}
    assert all(access[rid] == worker for rid, worker in answered.items())  # the id on the right worker's line
    # One series a worker, for the model it serves; a plain GUITARS_MODEL has no version: an empty label.
    assert sorted((s.labels["pid"], s.labels["version"], s.value) for f in text_string_to_metric_families(text)
                  for s in f.samples if s.name == "guitars_model") == sorted((str(pid), "", 1.0) for pid in workers)


def test_only_live_workers_name_a_model_and_dead_workers_files_go(tmp_path):
    """served_models reads the files of the workers gunicorn still has; a dead one's goes once it is a minute old."""
    def served_file(pid: int, sha: str, age: float) -> Path:
        path = tmp_path / f"served_model_{pid}.json"
        path.write_text(json.dumps({"sha256": sha, "version": "v", "runtime": "torch"}))
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    live, just_gone, long_gone = served_file(11, "a", 3600), served_file(12, "b", 5), served_file(13, "c", 120)
    (tmp_path / "served_model_14.partial").write_text("{")  # a file being written: never read
    assert served_models(tmp_path, {"11", "14"}) == {"11": {"sha256": "a", "version": "v", "runtime": "torch"}}
    assert live.exists() and just_gone.exists() and not long_gone.exists()
