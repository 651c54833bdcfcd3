"""Model versions: the models folder, its pointer and history, rollback, the log; the server serving the promoted
run, and every gunicorn worker following a promotion and a rollback."""
from __future__ import annotations

import hashlib
import shutil
import time

import pytest
import requests
from click.testing import CliRunner

from tests.helpers import ROOT, gunicorn_server
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
    assert models_cli("promote", "smoke", "--models", models).exit_code == 0
    assert settled(holder).sha256 == sha(smoke)
    assert client.get("/api/v1/model").json["version"] == "smoke"
    assert models_cli("promote", "swapped", "--models", models, "--force", "test").exit_code == 0
    assert settled(holder).sha256 == sha(swapped)
    assert client.get("/api/v1/model").json["version"] == "swapped"
    assert models_cli("rollback", "--models", models).exit_code == 0
    assert settled(holder).sha256 == sha(smoke)
    assert client.get("/api/v1/model").json["version"] == "smoke"
    plain = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch"}).test_client()
    assert plain.get("/api/v1/model").json["version"] is None  # GUITARS_MODEL alone: a file, no versions


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


def served_by_every_worker(url: str, expected: str, deadline: float) -> dict:
    """{worker: sha256} from /readyz until both workers report `expected` or the deadline passes."""
    served = {}
    while time.monotonic() < deadline:
        ready = requests.get(url + "/readyz", timeout=30).json()  # a new connection: either worker may answer
        served[ready["worker"]] = ready.get("model_sha256")
        if len(served) == 2 and set(served.values()) == {expected}:
            break
        time.sleep(0.2)
    return served


@pytest.mark.slow
def test_every_gunicorn_worker_follows_promote_and_rollback(trained_run, tmp_path):
    models = tmp_path / "models"
    smoke = add_run(models, "smoke", trained_run)
    swapped = swapped_run(models, "swapped", trained_run)
    assert models_cli("promote", "smoke", "--models", models).exit_code == 0
    with gunicorn_server(str(tmp_path / "ignored"), ROOT, tmp_path / "gunicorn.log",
                         GUITARS_MODELS=str(models)) as (url, _):
        before = served_by_every_worker(url, sha(smoke), time.monotonic() + 60)
        assert models_cli("promote", "swapped", "--models", models, "--force", "test").exit_code == 0
        after_promote = served_by_every_worker(url, sha(swapped), time.monotonic() + 60)
        version = requests.get(url + "/api/v1/model", timeout=30).json()["version"]
        assert models_cli("rollback", "--models", models).exit_code == 0
        after_rollback = served_by_every_worker(url, sha(smoke), time.monotonic() + 60)
    assert len(before) == 2 and set(before.values()) == {sha(smoke)}, before
    assert len(after_promote) == 2 and set(after_promote.values()) == {sha(swapped)}, after_promote
    assert version == "swapped"
    assert len(after_rollback) == 2 and set(after_rollback.values()) == {sha(smoke)}, after_rollback
