"""Where the database is migrated: a served app at start, the feedback commands on first use, and commands that need
no database never open it (real SQLite files, an unreachable PostgreSQL address, the real flask CLI and wsgi.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from sqlalchemy import inspect

from tests.feedback_seed import feedback_app
from tests.helpers import ROOT
from webapp import create_app, db

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/x"  # port 1: nothing listens, the connection is refused at once
TABLES = {"alembic_version", "answers", "verdicts"}


def tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(db.read_only(engine)).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def unusable(request, tmp_path) -> str:
    """A database URL that cannot be opened: a PostgreSQL nobody serves, or a SQLite file under a regular file."""
    if request.param == "postgresql":
        return UNREACHABLE
    (tmp_path / "a-file").write_text("not a folder")
    return f"sqlite:///{tmp_path / 'a-file' / 'guitars.db'}"


def test_flask_predict_works_when_the_database_cannot_be_opened(unusable, trained_run, demo_data):
    photo = sorted(demo_data.rglob("*.jpg"))[0]
    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "DATABASE_URL": unusable})
    result = app.test_cli_runner().invoke(args=["predict", "--model", str(trained_run), "--json", str(photo)])
    assert result.exit_code == 0, result.output
    (answer,) = json.loads(result.output[result.output.index("{"):])["results"]
    assert answer["filename"] == str(photo) and answer["predictions"]


def run(tmp_path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in the checkout, as an operator's shell runs it, with the app's database at `database_url`."""
    env = {**os.environ, "GUITARS_DATABASE_URL": database_url, "GUITARS_SECRET_KEY": "test-secret",
           "GUITARS_FEEDBACK_DIR": str(tmp_path / "feedback"), "PYTHONPATH": str(ROOT)}
    env.pop("FLASK_RUN_FROM_CLI", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_flask_cli_opens_no_database_for_a_command_that_needs_none(tmp_path):
    result = run(tmp_path, UNREACHABLE, "-m", "flask", "--app", "wsgi", "train", "--help")
    assert result.returncode == 0 and "--data" in result.stdout, result.stderr[-2000:]


def test_a_served_app_is_migrated_at_start_and_refuses_to_start_on_a_database_it_cannot_open(tmp_path):
    url = f"sqlite:///{tmp_path / 'served' / 'guitars.db'}"
    served = run(tmp_path, url, "-c", "import wsgi")  # what gunicorn does in each worker, before any request
    assert served.returncode == 0, served.stderr[-2000:]
    assert tables(url) == TABLES
    refused = run(tmp_path, UNREACHABLE, "-c", "import wsgi")
    assert refused.returncode != 0 and "OperationalError" in refused.stderr, refused.stderr[-2000:]


def test_the_feedback_commands_migrate_a_new_database_on_first_use(tmp_path):
    app = feedback_app(tmp_path)
    path = tmp_path / "guitars.db"
    assert not path.exists()  # creating the app opened nothing
    result = app.test_cli_runner().invoke(args=["feedback", "stats", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["overall"]["verdicts"] == 0
    assert tables(f"sqlite:///{path}") == TABLES


def test_processes_starting_together_on_one_new_sqlite_file_take_turns(tmp_path):
    url = f"sqlite:///{tmp_path / 'guitars.db'}"
    engines = [db.make_engine(url) for _ in range(6)]
    errors, ready = [], threading.Barrier(len(engines))

    def start(engine):
        ready.wait()
        try:
            db.upgrade(engine)
        except Exception as exc:  # noqa: BLE001 - what a racing start would raise is the finding
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for engine in engines:
        engine.dispose()
    assert errors == [] and tables(url) == TABLES


def test_a_database_that_cannot_be_opened_costs_an_answer_only_its_id(unusable, trained_run, demo_data):
    """Under `flask run` the first answer opens the database: one that is down must not turn the answer into a 500."""
    from tests.helpers import upload

    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "DATABASE_URL": unusable,
                      "WTF_CSRF_ENABLED": False})
    photo = sorted(demo_data.rglob("*.jpg"))[0].read_bytes()
    response = app.test_client().post("/api/v1/predict", data={"file": upload(photo)}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    (answer,) = response.json["results"]
    assert answer["id"] is None and answer["predictions"]
