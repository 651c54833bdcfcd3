"""The feedback database: answers and verdicts, one SQLAlchemy engine per app, migrated by Alembic on first use."""
from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from flask import Flask, current_app, g, has_request_context, request
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
READ_ONLY = "guitars_read_only"  # execution option of the read sessions' engine: see _sqlite_begin
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # requests that change nothing (RFC 9110): get_db() reads


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
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin, not by the driver
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 10000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(connection) -> None:
    # SQLAlchemy's pysqlite recipe (the driver begins nothing; we emit BEGIN), choosing the kind per transaction.
    # A deferred transaction that reads and then writes fails at once (SQLITE_BUSY, no waiting) when another worker
    # wrote in between, so a transaction takes the write lock when it begins and waits its turn under busy_timeout.
    # A read session's (READ_ONLY) is deferred: in WAL it never waits for a writer, and query_only makes a write it
    # tries fail at once rather than race the writers.
    read_only = bool(connection.get_execution_options().get(READ_ONLY))
    connection.exec_driver_sql(f"PRAGMA query_only = {int(read_only)}")
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and write-locking transactions (see read_only)."""
    url = database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # One shared connection, or every connection would see an empty database of its own.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(url, connect_args={"timeout": 10})
        folder = Path(parsed.database).parent

        @event.listens_for(engine, "do_connect")
        def make_folder(*_):
            # When a connection opens, not when the engine is made: a command that never opens the database
            # (flask predict) must work where its folder cannot be created.
            folder.mkdir(parents=True, exist_ok=True)
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def read_only(engine: Engine) -> Engine:
    """The same engine and pool, for transactions that only read: deferred on SQLite, READ ONLY on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{READ_ONLY: True})
    if engine.dialect.name == "postgresql":
        return engine.execution_options(postgresql_readonly=True)
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
    """One app's engine, its writing and reading sessions (migrated on first use) and the answer log's bound."""

    def __init__(self, url: str, max_answers: int):
        self.url = url
        self.engine = make_engine(url)
        self._writes = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(read_only(self.engine), expire_on_commit=False)
        self.max_answers = max_answers
        self._written = 0
        self._lock = threading.Lock()
        self._migrated = False
        self._migrate_lock = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema to the newest migration, once per process: the first caller migrates, the others wait."""
        if self._migrated:
            return
        with self._migrate_lock:
            if self._migrated:
                return
            upgrade(self.engine)
            if self.engine.dialect.name != "sqlite" or self.engine.url.database not in (None, "", ":memory:"):
                self.engine.dispose()  # a connection open across a fork would be shared by two processes
            self._migrated = True

    def sessions(self) -> Session:
        """A new session that may write: on SQLite each of its transactions takes the write lock when it begins."""
        self.migrate()
        return self._writes()

    def reads(self) -> Session:
        """A new session that only reads: it never waits for a writer on SQLite, and cannot write."""
        self.migrate()
        return self._reads()

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


def get_db(write: bool | None = None) -> Session:
    """This context's session (flaskr's get_db): a reading one in a GET/HEAD/OPTIONS request, else a writing one."""
    if write is None:
        write = not (has_request_context() and request.method in SAFE_METHODS)
    if not write and "db" in g:  # a context that writes reads what it wrote: through the same session
        return g.db
    key = "db" if write else "db_reads"
    if key not in g:
        setattr(g, key, database().sessions() if write else database().reads())
    return g.get(key)


def close_db(_exc=None) -> None:
    for key in ("db", "db_reads"):
        session = g.pop(key, None)
        if session is not None:
            session.close()


def init_app(app: Flask) -> None:
    """Attach the configured database, opened and migrated on first use, and close each context's sessions."""
    app.extensions[EXTENSION] = Database(app.config["DATABASE_URL"], app.config["ANSWER_LOG_MAX_ROWS"])
    app.teardown_appcontext(close_db)
