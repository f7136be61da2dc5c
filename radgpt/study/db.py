"""Database schema and engine for a reader study: one study per database.

SQLite file by default (a path), PostgreSQL by URL (`postgresql+psycopg://...`) for multi-site studies; the
test suite runs on both (`radgpt.study.testing`). A database made by an older radgpt is brought up to this
schema when it is opened (`upgrade`): columns added, epoch-float `rating.updated_at` turned into a timestamp.
Reader-facing URLs carry only random tokens (`Assignment.token`, `Slot.token`); integer ids and model
codes never leave the admin side, so neither page order nor ids can hint at which model wrote a text.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from radgpt.study.criteria import NAMES as CRITERIA


class UTCDateTime(TypeDecorator):
    """A point in time, stored and read back timezone-aware in UTC: `timestamptz` on PostgreSQL; on SQLite
    (no time type) SQLAlchemy's ISO text, written in UTC. A naive datetime is refused rather than guessed."""

    impl = DateTime
    cache_ok = True

    def __init__(self):
        super().__init__(timezone=True)

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a timezone-aware datetime is required (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    """`seed` drives case choice, blinding codes, candidate ids and reader orders. It is secret (drawn with
    `secrets` unless the admin chose one): a reader who knew it could map every candidate to its model.
    Studies made before seeds were secret hold a small integer here (an INTEGER column): read back as an
    int, it reproduces their orders exactly."""

    __tablename__ = "study"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    seed: Mapped[str] = mapped_column(String(64))
    include_reference: Mapped[bool] = mapped_column(Boolean, default=False)
    pairwise: Mapped[bool] = mapped_column(Boolean, default=False)
    selection: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class System(Base):
    """A model (or the reference) behind a blinding code; `name` is the unblinding key."""

    __tablename__ = "system"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    is_reference: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(Text, default="")


class Case(Base):
    __tablename__ = "case"
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[str] = mapped_column(String(200), unique=True)
    findings: Mapped[str] = mapped_column(Text)
    # shown to readers above the findings when the references carry one (radgpt records do)
    indication: Mapped[str] = mapped_column(Text, default="", server_default="")
    reference: Mapped[str] = mapped_column(Text)
    stratum: Mapped[str] = mapped_column(String(20))  # "normal" | "abnormal"


class Candidate(Base):
    """One model's impression for one case. Models that wrote the same text for a case are shown once: the
    first of them (in the seeded candidate order) is the one readers rate, the others point at it with
    `same_as_id`, and each rating of it counts for all of them (`export.rating_rows`)."""

    __tablename__ = "candidate"
    __table_args__ = (UniqueConstraint("case_id", "system_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"))
    system_id: Mapped[int] = mapped_column(ForeignKey("system.id"))
    text: Mapped[str] = mapped_column(Text)
    same_as_id: Mapped[int | None] = mapped_column(ForeignKey("candidate.id"), nullable=True, default=None)


class User(Base):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))  # "admin" | "reader"
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class AuthSession(Base):
    """Server-side session: the cookie holds a random token, the database only its SHA-256."""

    __tablename__ = "auth_session"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)


class LoginThrottle(Base):
    """Consecutive failed sign-ins for one key, "user:NAME" or "addr:IP" (see `throttle`)."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[float] = mapped_column(Float)


class Assignment(Base):
    """One case in one reader's (shuffled) worklist."""

    __tablename__ = "assignment"
    __table_args__ = (UniqueConstraint("reader_id", "case_id"), UniqueConstraint("reader_id", "position"))
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"))
    position: Mapped[int] = mapped_column(Integer)


class Slot(Base):
    """One candidate impression as one reader sees it: 'Candidate <position>' on that reader's page."""

    __tablename__ = "slot"
    __table_args__ = (UniqueConstraint("assignment_id", "candidate_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignment.id"))
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidate.id"))
    position: Mapped[int] = mapped_column(Integer)


class Rating(Base):
    """A reader's rating of one slot. Unique per slot, so a re-submission updates instead of duplicating.
    `seconds`: time on the case's page from the case being shown to this rating's last save (visible time,
    summed over the visits that changed it; sent by the page). `updated_at`: when it was last saved (UTC)."""

    __tablename__ = "rating"
    id: Mapped[int] = mapped_column(primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slot.id"), unique=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    understandability: Mapped[int | None] = mapped_column(Integer, nullable=True)
    coherence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    relevance: Mapped[int | None] = mapped_column(Integer, nullable=True)
    conciseness: Mapped[int | None] = mapped_column(Integer, nullable=True)
    clinical_utility: Mapped[int | None] = mapped_column(Integer, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    preference: Mapped[str | None] = mapped_column(String(20), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


assert all(hasattr(Rating, c) for c in CRITERIA), "Rating needs one column per criterion"


def database_url(db: str | Path) -> str:
    """A bare path means a SQLite file; anything with '://' is an SQLAlchemy URL. A libpq-style
    postgresql:// (or postgres://) URL gets the installed driver, psycopg 3."""
    db = str(db)
    for scheme in ("postgresql://", "postgres://"):
        if db.startswith(scheme):
            return "postgresql+psycopg://" + db[len(scheme):]
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def make_engine(db: str | Path, sqlite_sync: str = "full") -> Engine:
    """`sqlite_sync`: "full" (default) fsyncs every commit — survives power loss; "normal" survives a killed
    server process (kill -9) but may lose the last commits on power loss or an OS crash; it is faster."""
    if sqlite_sync not in ("full", "normal"):
        raise ValueError(f"sqlite_sync must be full or normal, not {sqlite_sync!r}")
    url = database_url(db)
    # hide_parameters: a failed statement's message (logged with the traceback) would carry the values,
    # i.e. report text and reader comments.
    if url.startswith("sqlite"):
        # check_same_thread off: uvicorn's thread pool shares the pool's connections (one at a time).
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8,
                               hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer. synchronous=FULL: a commit is on disk before the
            # reply is sent, so neither kill -9 nor a power cut loses an acknowledged rating.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_sync.upper()}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, pool_pre_ping=True, hide_parameters=True)


def _columns(conn, table: str) -> dict[str, dict]:
    return {c["name"]: c for c in inspect(conn).get_columns(table)}


def upgrade(engine: Engine) -> list[str]:
    """Bring a study database made by an older radgpt up to this schema, in one transaction; returns what was
    changed (nothing for a new or current database). Existing values are kept: an epoch-float `updated_at`
    becomes the same instant as a UTC timestamp; new columns start empty (no indication, no merged
    candidates, no time per case)."""
    tables = set(inspect(engine).get_table_names())
    changes: list[str] = []
    if not {"case", "candidate", "rating"} <= tables:
        return changes
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        if "indication" not in _columns(conn, "case"):
            conn.execute(text("ALTER TABLE \"case\" ADD COLUMN indication TEXT NOT NULL DEFAULT ''"))
            changes.append("case.indication added")
        if "same_as_id" not in _columns(conn, "candidate"):
            conn.execute(text("ALTER TABLE candidate ADD COLUMN same_as_id INTEGER REFERENCES candidate (id)"))
            changes.append("candidate.same_as_id added")
        rating = _columns(conn, "rating")
        if "seconds" not in rating:
            conn.execute(text("ALTER TABLE rating ADD COLUMN seconds FLOAT"))
            changes.append("rating.seconds added")
        if not isinstance(rating["updated_at"]["type"], DateTime):  # FLOAT / DOUBLE PRECISION: epoch seconds
            if not sqlite:
                conn.execute(text("ALTER TABLE rating ALTER COLUMN updated_at TYPE TIMESTAMP WITH TIME ZONE "
                                  "USING to_timestamp(updated_at)"))
            else:
                if sqlite3.sqlite_version_info < (3, 35):
                    from radgpt.common.errors import FatalError

                    raise FatalError(f"this study database needs an upgrade (rating.updated_at to a timestamp) "
                                     f"that needs SQLite 3.35 or later; Python here has {sqlite3.sqlite_version}")
                # SQLite cannot change a column's type: a new column, filled from the old, then swapped in.
                # (pysqlite runs DDL outside a transaction: a half-done earlier attempt leaves this column.)
                if "updated_at_utc" in rating:
                    conn.execute(text("ALTER TABLE rating DROP COLUMN updated_at_utc"))
                conn.execute(text("ALTER TABLE rating ADD COLUMN updated_at_utc DATETIME"))
                # the text SQLAlchemy itself writes for a DateTime on SQLite ("2026-01-02 03:04:05.123456")
                rows = [{"id": i, "t": datetime.fromtimestamp(float(t), UTC).replace(tzinfo=None)
                         .isoformat(" ", "microseconds")}
                        for i, t in conn.execute(text("SELECT id, updated_at FROM rating")) if t is not None]
                if rows:
                    conn.execute(text("UPDATE rating SET updated_at_utc = :t WHERE id = :id"), rows)
                conn.execute(text("ALTER TABLE rating DROP COLUMN updated_at"))
                conn.execute(text("ALTER TABLE rating RENAME COLUMN updated_at_utc TO updated_at"))
            changes.append("rating.updated_at: epoch seconds -> UTC timestamp")
    return changes


def open_db(db: str | Path, create: bool = False, sqlite_sync: str = "full") -> tuple[Engine, sessionmaker]:
    """Engine and session factory; an older study database is upgraded in place first (said on stderr).
    `create` also creates whatever tables are missing."""
    from sqlalchemy import exc
    from sqlalchemy.engine import make_url

    from radgpt.common.errors import FatalError

    url = database_url(db)
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        raise FatalError(f"--db {db}: neither a file path nor a database URL "
                         f"(e.g. postgresql+psycopg://user@host:5432/dbname)") from None
    try:
        engine = make_engine(db, sqlite_sync)
        changes = upgrade(engine)
    except (exc.NoSuchModuleError, ModuleNotFoundError) as e:
        raise FatalError(f"--db {shown}: no driver for this URL ({e}); for PostgreSQL use "
                         f"postgresql+psycopg://... (psycopg is in requirements.txt)") from None
    except exc.OperationalError as e:
        why = " ".join(str(e.orig).split()) if e.orig is not None else str(e).splitlines()[0]
        raise FatalError(f"cannot open the study database {shown}: {why}") from None
    if changes:
        print(f"radgpt study: upgraded the study database to this version: {'; '.join(changes)}", file=sys.stderr)
    if create:
        Base.metadata.create_all(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
