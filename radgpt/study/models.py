"""Database schema and engine for a reader study: one study per database.

SQLite file by default (a path), PostgreSQL by URL (`postgresql+psycopg://...`) for multi-site studies.
Reader-facing URLs carry only random tokens (`Assignment.token`, `Slot.token`); integer ids and model
codes never leave the admin side, so neither page order nor ids can hint at which model wrote a text.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from radgpt.study.criteria import NAMES as CRITERIA


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
    reference: Mapped[str] = mapped_column(Text)
    stratum: Mapped[str] = mapped_column(String(20))  # "normal" | "abnormal"


class Candidate(Base):
    __tablename__ = "candidate"
    __table_args__ = (UniqueConstraint("case_id", "system_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"))
    system_id: Mapped[int] = mapped_column(ForeignKey("system.id"))
    text: Mapped[str] = mapped_column(Text)


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
    """A reader's rating of one slot. Unique per slot, so a re-submission updates instead of duplicating."""

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
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


assert all(hasattr(Rating, c) for c in CRITERIA), "Rating needs one column per criterion"


def database_url(db: str | Path) -> str:
    """A bare path means a SQLite file; anything with '://' is an SQLAlchemy URL."""
    db = str(db)
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


def open_db(db: str | Path, create: bool = False, sqlite_sync: str = "full") -> tuple[Engine, sessionmaker]:
    engine = make_engine(db, sqlite_sync)
    if create:
        Base.metadata.create_all(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
