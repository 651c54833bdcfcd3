"""The feedback database: answers and verdicts, one SQLAlchemy engine per app, migrated by Alembic at start."""
from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from flask import Flask, current_app, g
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    types,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import StaticPool

EXTENSION = "guitars_db"  # the app's Database in app.extensions; read it through database() or get_db()
MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x67756974  # "guit": PostgreSQL advisory lock key, so hosts starting together migrate one at a time
PRUNE_EVERY = 100  # answers written by one process between two prunes of the answer log


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_answer_id() -> str:
    return secrets.token_urlsafe(16)


class UTCDateTime(types.TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone, so it is stored as UTC and given back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the database keeps UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    # Named constraints: a later migration can drop or alter them by name on every backend (SQLite included).
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"})


class Answer(Base):
    """One photo's answer as it was served; the photo's stored file only when its sender agreed."""

    __tablename__ = "answers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_answer_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True, default=utcnow)
    model_sha256: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(Text)  # the top class id
    probability: Mapped[float] = mapped_column(Float)
    uncertain: Mapped[bool] = mapped_column(Boolean)
    in_scope: Mapped[bool] = mapped_column(Boolean)
    scope: Mapped[str | None] = mapped_column(Text, nullable=True)
    group_label: Mapped[str | None] = mapped_column(Text, nullable=True)
    scores: Mapped[list] = mapped_column(JSON)  # the top-k as served: [{"label", "probability"}]
    photo: Mapped[str | None] = mapped_column(Text, nullable=True)  # file name in the photo store

    verdict: Mapped[Verdict | None] = relationship(back_populates="answer", uselist=False)


class Verdict(Base):
    """What the person said about an answer: right, another class, or none of these; at most one per answer."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    answer_id: Mapped[str] = mapped_column(ForeignKey("answers.id"), unique=True)
    correct: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str | None] = mapped_column(Text, nullable=True)  # the class the person says; NULL: none of these
    none_of_these: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    review_decision: Mapped[str | None] = mapped_column(Text, nullable=True)

    answer: Mapped[Answer] = relationship(back_populates="verdict")


def database_url(raw: str) -> str:
    """A URL as SQLAlchemy should open it: a plain postgresql:// means psycopg 3, the driver we install."""
    for prefix in ("postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Several gunicorn workers write at once: WAL lets readers run beside the writer, busy_timeout makes a writer
    # wait for the lock instead of failing, and SQLite checks foreign keys only when asked to.
    dbapi_connection.isolation_level = None  # transactions are begun by _begin_immediate, not by the driver
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 10000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _begin_immediate(connection) -> None:
    # A deferred transaction that reads and then writes fails at once (SQLITE_BUSY, no waiting) when another
    # worker wrote in between; one that takes the write lock when it begins waits its turn under busy_timeout.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and write-locking transactions."""
    url = database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # One shared connection, or every connection would see an empty database of its own.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 10})
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def alembic_config(connection=None) -> Config:
    """Alembic's configuration for our migrations, with no alembic.ini: `connection` is the one to migrate."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration; processes starting together take turns (a write lock on SQLite,
    an advisory lock on PostgreSQL), and the later ones find nothing to do."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), "head")


class Database:
    """One app's engine and session factory, and the answer log's bound (pruned every PRUNE_EVERY answers)."""

    def __init__(self, url: str, max_answers: int):
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.max_answers = max_answers
        self._written = 0
        self._lock = threading.Lock()

    def answers_written(self, n: int) -> bool:
        """Count `n` new answers; True when the log is due a prune."""
        with self._lock:
            before, self._written = self._written, self._written + n
        return before // PRUNE_EVERY != self._written // PRUNE_EVERY


def prune_answers(session: Session, max_rows: int) -> int:
    """Delete the oldest answers past `max_rows` that nobody gave a verdict on and that keep no photo."""
    excess = session.scalar(select(func.count()).select_from(Answer)) - max_rows
    if excess <= 0:
        return 0
    has_verdict = select(Verdict.id).where(Verdict.answer_id == Answer.id).exists()
    oldest = (select(Answer.id).where(Answer.photo.is_(None), ~has_verdict)
              .order_by(Answer.created_at).limit(excess))
    ids = list(session.scalars(oldest))
    if ids:
        session.query(Answer).filter(Answer.id.in_(ids)).delete(synchronize_session=False)
    return len(ids)


def database(app: Flask | None = None) -> Database:
    """The app's Database (the current app's by default)."""
    return (app or current_app).extensions[EXTENSION]


def get_db() -> Session:
    """This request's session (flaskr's get_db), closed when the app context ends."""
    if "db" not in g:
        g.db = database().sessions()
    return g.db


def close_db(_exc=None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def init_app(app: Flask) -> None:
    """Open the configured database, migrate it to the newest schema, and close each request's session."""
    db = Database(app.config["DATABASE_URL"], app.config["ANSWER_LOG_MAX_ROWS"])
    upgrade(db.engine)
    if db.engine.dialect.name != "sqlite" or make_url(db.engine.url).database not in (None, "", ":memory:"):
        db.engine.dispose()  # no connection is left open from the start; each worker opens its own when it needs one
    app.extensions[EXTENSION] = db
    app.teardown_appcontext(close_db)
