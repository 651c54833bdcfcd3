"""Feedback: the schema and its migration, answer ids, verdicts through the API and the form, the consented photo
store, and every abuse refused without changing anything (real Flask client, real images, SQLite on disk)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from webapp import db


def schema_diff(engine) -> list:
    """What Alembic's autogenerate would change to make the database match the models (types included)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, db.Base.metadata)


def test_the_migration_creates_exactly_the_models_schema(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'guitars.db'}")
    db.upgrade(engine)
    assert schema_diff(engine) == []
    tables = inspect(engine).get_table_names()
    assert set(tables) == {"alembic_version", "answers", "verdicts"}
    db.upgrade(engine)  # a second worker starting finds nothing to do
    assert schema_diff(engine) == []


def test_sqlite_is_opened_in_wal_with_a_busy_timeout_and_foreign_keys(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'guitars.db'}")
    with engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert (pragma("journal_mode"), pragma("busy_timeout"), pragma("foreign_keys")) == ("wal", 10000, 1)


def test_times_come_back_as_utc_whatever_zone_they_went_in(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'guitars.db'}")
    db.upgrade(engine)
    sessions = db.sessionmaker(engine)
    local = datetime(2026, 12, 2, 3, 0, tzinfo=UTC).astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    with sessions.begin() as session:
        session.add(db.Answer(id="a", created_at=local, model_sha256="s", label="x", probability=0.5,
                              uncertain=False, in_scope=True, scores=[{"label": "x", "probability": 0.5}]))
    with sessions() as session:
        stored = session.scalar(select(db.Answer.created_at))
        assert stored == datetime(2026, 12, 2, 3, 0, tzinfo=UTC) and stored.tzinfo == UTC
        with pytest.raises(Exception, match="naive"):
            session.add(db.Answer(id="b", created_at=datetime(2026, 1, 1), model_sha256="s", label="x",
                                  probability=0.5, uncertain=False, in_scope=True, scores=[]))
            session.flush()
    assert sessions().scalar(select(func.count()).select_from(db.Answer)) == 1
