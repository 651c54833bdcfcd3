"""Model versions: the models folder, its pointer and history, rollback, the log; the server serving the promoted
run, and every gunicorn worker following a promotion and a rollback."""
from __future__ import annotations

import hashlib
import shutil
import time

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, gunicorn_server, worker_pids
from tests.model_versions import add_run, swapped_run
from training.cli import main
from training.runfiles import EXPORT, REPORT
from training.versions import read_log, read_pointer
from webapp import create_app
from webapp.model import EXTENSION


def models_cli(*args, env=None):
    return CliRunner().invoke(main, ["models", *map(str, args)], env=env)


def sha(run) -> str:
    return hashlib.sha256((run / EXPORT).read_bytes()).hexdigest()


def test_promote_keeps_a_history_that_rollback_walks_back(trained_run, tmp_path):
    models = tmp_path / "models"
    for name in ("a", "b", "c"):
        add_run(models, name, trained_run)
    env = {"GUITARS_MODELS": str(models)}  # the same folder the server reads
    assert "No run is promoted yet" in models_cli("list", env=env).output
    assert models_cli("promote", "a", env=env).exit_code == 0  # the first: nothing to compare with
    unchecked = models_cli("promote", "b", env=env)
    assert unchecked.exit_code == 1 and "--against DATA" in unchecked.output  # a served run is never replaced blindly
    assert models_cli("promote", "b", "--force", "hotfix", env=env).exit_code == 0
    assert models_cli("promote", "c", "--force", "hotfix 2", env=env).exit_code == 0
    assert models_cli("promote", "c", "--force", "again", env=env).exit_code == 1  # already served
    listing = models_cli("list", env=env).output
    assert "* c" in listing and "  a" in listing and "rollback restores b <- a" in listing
    assert models_cli("rollback", env=env).output.strip() == "Rolled back from c to b"
    assert models_cli("rollback", env=env).output.strip() == "Rolled back from b to a"
    last = models_cli("rollback", env=env)
    assert last.exit_code == 1 and "nothing to roll back to" in last.output
    assert read_pointer(models).current.run == "a"
    log = read_log(models)
    assert [(e["action"], e["run"], e["decision"]) for e in log] == [
        ("promote", "a", "promoted"), ("promote", "b", "forced"), ("promote", "c", "forced"),
        ("rollback", "b", "rolled back"), ("rollback", "a", "rolled back")]
    assert log[1]["forced"] == {"reason": "hotfix", "overrode": ["not compared: no --against folder"]}
    assert all(e["operator"] for e in log)


def test_only_a_whole_run_of_the_folder_is_promoted(trained_run, tmp_path):
    models = tmp_path / "models"
    run = add_run(models, "half", trained_run)
    outside = models_cli("promote", trained_run, "--models", models)
    assert outside.exit_code == 1 and "is not a run of" in outside.output
    missing = models_cli("promote", "nothing", "--models", models)
    assert missing.exit_code == 1 and "the runs of" in missing.output and "half" in missing.output
    (run / REPORT).write_text((run / REPORT).read_text().replace('"model_sha256": "', '"model_sha256": "0'))
    torn = models_cli("promote", "half", "--models", models)  # the report vouches for another model
    assert torn.exit_code == 1 and "does not match the SHA-256" in torn.output
    assert read_pointer(models) is None and read_log(models) == []


def served_series(metrics_text: str) -> list[tuple[dict, float]]:
    """Every guitars_model series of a /metrics answer: (labels, value)."""
    return [(s.labels, s.value) for f in text_string_to_metric_families(metrics_text) for s in f.samples
            if s.name == "guitars_model"]


def settled(holder):
    """The holder's model once a reload this check starts has finished."""
    holder.get()
    holder.wait_for_reload(timeout=120)
    return holder.get()


def test_the_app_serves_the_promoted_run_and_follows_the_pointer(trained_run, tmp_path):
    models = tmp_path / "models"
    smoke = add_run(models, "smoke", trained_run)
    swapped = swapped_run(models, "swapped", trained_run)
    app = create_app({"TESTING": True, "MODEL_PATH": str(tmp_path / "ignored"), "MODELS_DIR": str(models),
                      "RUNTIME": "torch"})
    holder = app.extensions[EXTENSION]
    holder.check_every = 0
    client = app.test_client()
    nothing = client.get("/readyz")
    assert nothing.status_code == 503 and "no run is promoted in models" in nothing.json["reason"]
    assert str(tmp_path) not in nothing.json["reason"]  # server folders cut to the folder's name
    for step, run in ((("promote", "smoke"), smoke), (("promote", "swapped", "--force", "test"), swapped),
                      (("rollback",), smoke)):
        assert models_cli(*step, "--models", models).exit_code == 0
        assert settled(holder).sha256 == sha(run)
        assert client.get("/api/v1/model").json["version"] == run.name
        ready = client.get("/readyz").json
        assert (ready["model_sha256"], ready["version"]) == (sha(run), run.name), step
        # One series, the model served now: the one served before is gone, not left at 0.
        assert [(labels["sha256"], labels["version"], value) for labels, value in
                served_series(client.get("/metrics").get_data(as_text=True))] == [(sha(run), run.name, 1.0)], step
    plain = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch"}).test_client()
    assert plain.get("/api/v1/model").json["version"] is None  # GUITARS_MODEL alone: a file, no versions
    assert plain.get("/readyz").json["version"] is None
    assert [labels["version"] for labels, _ in served_series(plain.get("/metrics").get_data(as_text=True))] == [""]


def test_a_promoted_run_changed_in_place_is_not_served(trained_run, tmp_path):
    models = tmp_path / "models"
    smoke = add_run(models, "smoke", trained_run)
    swapped = swapped_run(models, "swapped", trained_run)
    assert models_cli("promote", "smoke", "--models", models).exit_code == 0
    app = create_app({"TESTING": True, "MODELS_DIR": str(models), "RUNTIME": "torch"})
    holder = app.extensions[EXTENSION]
    holder.check_every = 0
    first = settled(holder)
    for file in (EXPORT, REPORT):  # a consistent pair, but not the one the gate passed
        shutil.copy(swapped / file, smoke / file)
    time.sleep(0.01)
    assert settled(holder) is first and "promote it again" in holder.error
    back = models_cli("rollback", "--models", models)
    assert back.exit_code == 1 and "only run ever promoted" in back.output


def served_by_every_worker(url: str, expected: tuple[str, str], deadline: float) -> dict:
    """{worker: (sha256, version)} from /readyz until both workers report `expected` or the deadline passes."""
    served = {}
    while time.monotonic() < deadline:
        ready = requests.get(url + "/readyz", timeout=30).json()  # a new connection: either worker may answer
        served[ready["worker"]] = (ready.get("model_sha256"), ready.get("version"))
        if len(served) == 2 and set(served.values()) == {expected}:
            break
        time.sleep(0.2)
    return served


def metrics_of_every_worker(url: str, expected: tuple[str, str], deadline: float) -> list[tuple]:
    """guitars_model's series as (pid, sha256, version, value), once each worker's one series is `expected`."""
    while True:
        series = sorted((labels["pid"], labels["sha256"], labels["version"], value)
                        for labels, value in served_series(requests.get(url + "/metrics", timeout=30).text))
        if {s[1:] for s in series} == {(*expected, 1.0)} or time.monotonic() > deadline:
            return series
        time.sleep(0.2)  # a worker answers /readyz with its new model a moment before it records it


@pytest.mark.slow
def test_every_gunicorn_worker_follows_promote_and_rollback(trained_run, tmp_path):
    models = tmp_path / "models"
    smoke = add_run(models, "smoke", trained_run)
    swapped = swapped_run(models, "swapped", trained_run)
    assert models_cli("promote", "smoke", "--models", models).exit_code == 0
    steps = [(None, smoke), (("promote", "swapped", "--force", "test"), swapped), (("rollback",), smoke)]
    seen = []
    with gunicorn_server(str(tmp_path / "ignored"), ROOT, tmp_path / "gunicorn.log",
                         GUITARS_MODELS=str(models)) as (url, proc):
        for step, run in steps:
            if step:
                assert models_cli(*step, "--models", models).exit_code == 0
            expected = (sha(run), run.name)
            seen.append((served_by_every_worker(url, expected, time.monotonic() + 60),
                         metrics_of_every_worker(url, expected, time.monotonic() + 10),
                         {str(pid) for pid in worker_pids(proc.pid)},
                         requests.get(url + "/api/v1/model", timeout=30).json()["version"]))
    for (step, run), (served, series, workers, version) in zip(steps, seen):
        assert len(served) == 2 and set(served.values()) == {(sha(run), run.name)}, (step, served)
        assert {str(pid) for pid in served} == workers and version == run.name
        # Exactly one series a worker, at 1, naming the run it serves: the run served before left no series behind.
        assert series == sorted((pid, sha(run), run.name, 1.0) for pid in workers), (step, series)
