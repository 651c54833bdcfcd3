"""Feedback on a real gunicorn with two workers on SQLite: the API flow end to end, and concurrent verdicts."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tests.feedback_flow import api_flow, concurrent_verdicts, photo_with_gps
from tests.helpers import ROOT, gunicorn_server
from webapp import db

pytestmark = pytest.mark.slow


@pytest.fixture
def feedback_server(trained_run, tmp_path):
    """gunicorn (2 workers, JSON logs) whose answers go to a SQLite file and shared photos to a folder of tmp_path."""
    database_url, photo_dir = f"sqlite:///{tmp_path / 'guitars.db'}", tmp_path / "feedback"
    log_path = tmp_path / "gunicorn.log"
    with gunicorn_server(str(trained_run), ROOT, log_path, GUITARS_DATABASE_URL=database_url,
                         GUITARS_FEEDBACK_DIR=str(photo_dir), GUITARS_LOG_FORMAT="json") as (url, _):
        yield url, database_url, photo_dir, log_path


def test_the_feedback_api_end_to_end_on_two_workers(feedback_server, demo_data):
    url, database_url, photo_dir, _ = feedback_server
    engine = db.make_engine(database_url)
    try:  # the workers are up and have answered /readyz, which opens no database: they migrated as they started
        assert set(inspect(db.read_only(engine)).get_table_names()) == {"alembic_version", "answers", "verdicts"}
    finally:
        engine.dispose()
    api_flow(url, database_url, photo_dir, [photo_with_gps(p) for p in sorted(demo_data.rglob("*.jpg"))[:3]])


def test_concurrent_clients_writing_verdicts_on_two_workers_lose_none(feedback_server, demo_data):
    url, database_url, _, log_path = feedback_server
    concurrent_verdicts(url, database_url, next(demo_data.rglob("*.jpg")).read_bytes(), log_path)
