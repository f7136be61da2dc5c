"""pytest fixtures that run the study's tests on each storage backend: SQLite and PostgreSQL.

A test module imports them (`from radgpt.study.testing import backend, new_db  # noqa: F401`) and asks for
`new_db`: a factory of fresh, empty study databases on the backend under test, a SQLite file path or a
PostgreSQL URL. Every test that takes it runs twice, `[sqlite]` and `[postgresql]`.

PostgreSQL needs a server: RADGPT_TEST_POSTGRES_URL names one (`postgresql+psycopg://user@host:port/db`; the
user may create databases). Each test gets a database of its own there, dropped afterwards. `.ci/run` starts
a throwaway server (radgpt/study/pgserver.py) and sets the variable; `make postgres` does the same for a
developer. Without it the PostgreSQL runs are skipped, saying so — except under CI=true, where they fail:
CI must not pass without having run them.
"""

from __future__ import annotations

import os
import secrets

import pytest

POSTGRES_ENV = "RADGPT_TEST_POSTGRES_URL"
NO_SERVER = (f"PostgreSQL tests need a server: set {POSTGRES_ENV} (`make postgres` starts a throwaway one "
             f"and prints the line to paste)")


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    if request.param == "postgresql" and postgres_url() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {POSTGRES_ENV} is not set: .ci/run starts PostgreSQL and sets it")
        pytest.skip(NO_SERVER)
    return request.param


class PostgresDatabases:
    """CREATE DATABASE / DROP DATABASE on the test server, one database per call."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.base = make_url(url)
        self.admin = create_engine(self.base, isolation_level="AUTOCOMMIT", poolclass=_null_pool())
        self.names: list[str] = []

    def create(self) -> str:
        from sqlalchemy import text

        name = f"radgpt_test_{secrets.token_hex(6)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            for name in self.names:  # FORCE: a test's server or engine may still hold connections
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.names.clear()
        self.admin.dispose()


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool


@pytest.fixture
def new_db(backend, tmp_path):
    """new_db(name="study") -> a new empty study database (a path or a URL) on the backend under test."""
    pg = PostgresDatabases(postgres_url()) if backend == "postgresql" else None
    counter = iter(range(1_000_000))

    def make(name: str = "study") -> str:
        if pg is None:
            return str(tmp_path / f"{name}-{next(counter)}.db")
        return pg.create()

    yield make
    if pg is not None:
        pg.drop_all()
