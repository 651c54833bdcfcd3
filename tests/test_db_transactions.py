"""SQLite transactions: reads never wait for a writer, writes take the lock when they begin, a read cannot write
(real SQLite files, a second real connection as the other worker, the app's own pages and commands)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from tests.feedback_seed import add, feedback_app
from webapp import db

TOKEN = "test-review-token"
QUICK = 2.0  # seconds: far below the busy timeout (10 s) a read waited out when it took the write lock


@pytest.fixture
def seeded(tmp_path):
    """An app on a SQLite file with the review page on, and one shared photo with a verdict waiting for review."""
    (tmp_path / "data" / "les_paul").mkdir(parents=True)
    app = feedback_app(tmp_path, REVIEW_DATA=str(tmp_path / "data"), REVIEW_TOKEN=TOKEN)
    kept = add(app, "les_paul", "stratocaster", Image.new("RGB", (64, 48), "red"))
    return app, tmp_path / "guitars.db", kept


@contextmanager
def writer_in_the_middle(path):
    """Another worker inside a write transaction: it holds the write lock and has an answer written, not committed."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO answers (id, created_at, model_sha256, label, probability, uncertain, in_scope, "
                       "scores, photo) VALUES ('uncommitted', '2026-12-01 00:00:00', 's', 'les_paul', 0.5, 0, 1, "
                       "'[]', 'uncommitted.jpg')")
    connection.execute("INSERT INTO verdicts (answer_id, correct, label, none_of_these, created_at) "
                       "VALUES ('uncommitted', 0, 'stratocaster', 0, '2026-12-01 00:00:30')")
    try:
        yield connection
    finally:
        if connection.in_transaction:  # a test may have let it commit
            connection.execute("ROLLBACK")
        connection.close()


def can_write(path) -> bool:
    """Whether another connection could take the write lock right now (no waiting)."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def answer_count(session) -> int:
    return session.scalar(select(func.count()).select_from(db.Answer))


def test_a_page_that_reads_answers_at_once_while_a_worker_is_writing(seeded):
    app, path, kept = seeded
    client = app.test_client()
    assert client.get(f"/review/feedback/?token={TOKEN}").status_code == 200  # the operator's session
    with writer_in_the_middle(path):
        start = time.monotonic()
        page = client.get("/review/feedback/")
        took = time.monotonic() - start
    assert page.status_code == 200 and took < QUICK, (page.status_code, took)
    html = page.data.decode()
    assert f"/review/feedback/photo/{kept}" in html and "uncommitted" not in html  # the last committed state


def test_flask_feedback_stats_answers_at_once_while_a_worker_is_writing(seeded):
    app, path, _ = seeded
    with writer_in_the_middle(path):
        start = time.monotonic()
        result = app.test_cli_runner().invoke(args=["feedback", "stats", "--json"])
        took = time.monotonic() - start
    assert result.exit_code == 0 and took < QUICK, (result.output, took)
    assert json.loads(result.output)["overall"]["verdicts"] == 1  # the committed verdict, not the one in flight


def test_a_session_that_may_write_holds_the_lock_from_its_first_read_and_a_reading_one_never_takes_it(seeded):
    app, path, _ = seeded
    for method in ("POST", "PUT", "DELETE"):  # a read, then a write: the lock must be held before the read
        with app.test_request_context("/", method=method):
            assert answer_count(db.get_db()) == 1 and not can_write(path), method
            assert db.get_db(write=False) is db.get_db()  # what it reads after writing includes what it wrote
        assert can_write(path)  # the context's end closed the session, and the lock went with it
    with app.app_context():  # a command, or code outside any request: may write
        assert answer_count(db.get_db()) == 1 and not can_write(path)
    for method in ("GET", "HEAD", "OPTIONS"):
        with app.test_request_context("/", method=method):
            assert answer_count(db.get_db()) == 1 and can_write(path), method
            assert answer_count(db.get_db(write=True)) == 1 and not can_write(path), method  # asked for
    with app.app_context(), db.database(app).reads() as session:
        assert answer_count(session) == 1 and can_write(path)


def test_a_reading_session_cannot_write(seeded):
    app, path, _ = seeded
    with app.test_request_context("/", method="GET"):
        session = db.get_db()
        session.add(db.Answer(model_sha256="s", label="les_paul", probability=0.5, uncertain=False, in_scope=True,
                              scores=[]))
        with pytest.raises(OperationalError, match="readonly"):
            session.commit()
        session.rollback()
    with db.database(app).sessions() as session:
        assert answer_count(session) == 1
        session.add(db.Answer(model_sha256="s", label="les_paul", probability=0.5, uncertain=False, in_scope=True,
                              scores=[]))
        session.commit()  # the same pooled connection, reset to write again
        assert answer_count(session) == 2


def test_a_writer_waits_for_the_lock_instead_of_failing(seeded):
    app, path, _ = seeded
    with writer_in_the_middle(path) as other:
        finishes = threading.Timer(0.5, other.execute, ["COMMIT"])  # the other worker commits half a second later
        finishes.start()
        start = time.monotonic()
        try:
            with db.database(app).sessions() as session:
                session.add(db.Answer(model_sha256="s", label="les_paul", probability=0.5, uncertain=False,
                                      in_scope=True, scores=[]))
                session.commit()
                took = time.monotonic() - start
                assert answer_count(session) == 3  # ours, the other worker's and the seeded one
        finally:
            finishes.join()
    assert 0.4 < took < QUICK + 0.5, took
