"""The same feedback code on a real PostgreSQL server that the tests start: the migration, the app's flow, and a
two-worker gunicorn writing verdicts at once."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import InternalError

from tests import postgres
from tests.feedback_flow import api_flow, concurrent_verdicts, photo_with_gps, schema_diff
from tests.helpers import ROOT, gunicorn_server, upload
from webapp import create_app, db
from webapp.model import EXTENSION as MODEL
from webapp.model import ModelHolder
from webapp.photostore import EXTENSION as PHOTOS

pytestmark = pytest.mark.skipif(not postgres.available(),
                                reason=f"the PostgreSQL server is not installed in {postgres.PG_BIN} (make postgres)")


@pytest.fixture(scope="module")
def new_database():
    with postgres.postgres_server() as make:
        yield make


def test_the_migration_creates_exactly_the_models_schema_and_hosts_starting_together_take_turns(new_database):
    url = new_database()
    engines = [db.make_engine(url) for _ in range(4)]
    errors = []

    def start(engine):
        try:
            db.upgrade(engine)
        except Exception as exc:  # noqa: BLE001 - what a racing start would raise is the finding
            errors.append(exc)

    # Daemons with a deadline: racing migrations without the lock wait on each other for good.
    threads = [threading.Thread(target=start, args=(engine,), daemon=True) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "the migrations waited on each other"
    assert errors == []
    assert schema_diff(engines[0]) == []
    for engine in engines:
        engine.dispose()


def test_the_app_flow_on_postgresql(new_database, trained_run, demo_data, tmp_path, monkeypatch):
    monkeypatch.setattr(db, "PRUNE_EVERY", 1)
    app = create_app({"TESTING": True, "MODEL_PATH": str(trained_run), "RUNTIME": "torch", "WTF_CSRF_ENABLED": False,
                      "DATABASE_URL": new_database(), "FEEDBACK_DIR": str(tmp_path / "feedback"),
                      "ANSWER_LOG_MAX_ROWS": 3})
    app.extensions[MODEL] = ModelHolder(trained_run, "torch")
    client = app.test_client()
    photo = photo_with_gps(next(demo_data.rglob("*.jpg")))

    def predict(**form):
        response = client.post("/api/v1/predict", data={"file": [upload(photo)], **form},
                               content_type="multipart/form-data")
        assert response.status_code == 200, response.json
        return response.json["results"][0]["id"]

    shared, judged = predict(share="true"), predict()
    assert client.post("/api/v1/feedback", json={"id": judged, "label": "les_paul"}).status_code == 201
    assert client.post("/api/v1/feedback", json={"id": judged, "correct": True}).status_code == 409
    assert client.post("/api/v1/feedback", json={"id": "nope", "correct": True}).status_code == 404
    later = [predict() for _ in range(3)]  # the log keeps 3: the oldest with no verdict and no photo go
    with db.database(app).sessions() as session:
        answers = {a.id: a for a in session.scalars(select(db.Answer))}
        (verdict,) = session.scalars(select(db.Verdict))
    assert set(answers) == {shared, judged, later[-1]}
    assert answers[shared].created_at.tzinfo == UTC and verdict.created_at.tzinfo == UTC
    assert verdict.answer_id == judged and verdict.label == "les_paul" and not verdict.correct
    store = app.extensions[PHOTOS]
    assert len(list(store.folder.glob("*.jpg"))) == 1
    store.clock = lambda: datetime.now(UTC) + timedelta(days=91)
    predict()  # every answer written purges what is past the retention (on this cadence)
    with db.database(app).sessions() as session:
        assert session.get(db.Answer, shared).photo is None
    assert list(store.folder.glob("*.jpg")) == []


def test_reading_sessions_are_read_only_and_leave_the_pooled_connection_writable(new_database, tmp_path):
    app = create_app({"TESTING": True, "DATABASE_URL": new_database(), "FEEDBACK_DIR": str(tmp_path / "feedback")})
    database = db.database(app)

    def answer():
        return db.Answer(model_sha256="s", label="les_paul", probability=0.5, uncertain=False, in_scope=True, scores=[])

    for _ in range(2):  # the second round gets the pool's connection back from a reading session
        with database.reads() as session:
            assert session.scalar(text("SHOW transaction_read_only")) == "on"
            session.add(answer())
            with pytest.raises(InternalError, match="read-only transaction"):
                session.commit()
        with database.sessions() as session:
            assert session.scalar(text("SHOW transaction_read_only")) == "off"
            session.add(answer())
            session.commit()
    with database.reads() as session:
        assert session.scalar(select(func.count()).select_from(db.Answer)) == 2


@pytest.mark.slow
def test_two_gunicorn_workers_on_postgresql_end_to_end_and_concurrent_verdicts(new_database, trained_run, demo_data,
                                                                               tmp_path):
    url_db, photo_dir, log_path = new_database(), tmp_path / "feedback", tmp_path / "gunicorn.log"
    photos = [photo_with_gps(p) for p in sorted(demo_data.rglob("*.jpg"))[:3]]
    with gunicorn_server(str(trained_run), ROOT, log_path, GUITARS_DATABASE_URL=url_db,
                         GUITARS_FEEDBACK_DIR=str(photo_dir), GUITARS_LOG_FORMAT="json") as (url, _):
        api_flow(url, url_db, photo_dir, photos)
        concurrent_verdicts(url, url_db, photos[0], log_path)
