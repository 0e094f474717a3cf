"""Shared fixtures: every behavioural test runs on SQLite and on PostgreSQL.

Each test gets its own database: a copy of a migrated SQLite file, or a
PostgreSQL database cloned from a migrated template.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest

from stepline.app import App
from stepline.engine import Engine
from stepline.settings import Settings
from stepline.store import migrate, open_store
from stepline.testing import FakeProvider, TestClock

PG_ADMIN_URL = os.environ.get("STEPLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN_URL.rsplit("/", 1)[0]


def pg_url(dbname: str) -> str:
    return f"{PG_BASE}/{dbname}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("template") / "template.db")
    migrate.apply(path)
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"stepline_tpl_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {name}")
    migrate.apply(pg_url(name))
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def new_sqlite_db(template: str, directory: str) -> str:
    path = os.path.join(directory, f"stepline-{uuid.uuid4().hex[:8]}.db")
    shutil.copyfile(template, path)
    return path


@pytest.fixture
def sqlite_url(sqlite_template: str, tmp_path) -> str:  # type: ignore[no-untyped-def]
    return new_sqlite_db(sqlite_template, str(tmp_path))


@pytest.fixture
def postgres_url(pg_template: str) -> Iterator[str]:
    name = f"stepline_t_{uuid.uuid4().hex[:12]}"
    _pg_admin(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield pg_url(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database on each backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """A simulated LLM provider on loopback (both wire formats), for tests of model calls."""
    with FakeProvider() as server:
        yield server


TEST_SETTINGS = Settings(retry_base=0.02, retry_max=0.5, unreachable_backoff=(0.05,), lease=3.0, poll_interval=0.05)

EngineFactory = Callable[..., Awaitable[Engine]]


async def _engines(url: str, clock: TestClock | None = None, **defaults: object) -> AsyncIterator[EngineFactory]:
    engines: list[Engine] = []

    async def factory(*apps: App, run_worker: bool = True, **overrides: object) -> Engine:
        settings = TEST_SETTINGS.replace(db=url, **{**defaults, **overrides})
        engine = Engine(open_store(url, migrate_now=False, clock=clock), settings, list(apps))
        await engine.start(run_worker=run_worker)
        engines.append(engine)
        return engine

    yield factory
    for engine in reversed(engines):
        await engine.stop(grace=1.0)


@pytest.fixture
async def make_engine(db_url: str) -> AsyncIterator[EngineFactory]:
    """``await make_engine(app, ..., **settings)``: a started engine (worker included) on
    ``db_url``; call it again for another process's engine on the same database."""
    async for factory in _engines(db_url):
        yield factory


@pytest.fixture
async def clocked(db_url: str) -> AsyncIterator[tuple[TestClock, EngineFactory]]:
    """A test clock, and a factory of engines on ``db_url`` whose store reads it; no
    retention sweep runs by itself (``retention_interval=0``): each test sweeps when it
    means to."""
    clock = TestClock()
    async for factory in _engines(db_url, clock=clock, retention_interval=0.0):
        yield clock, factory


@pytest.fixture
async def make_sqlite_engine(sqlite_url: str) -> AsyncIterator[EngineFactory]:
    """``make_engine`` on SQLite alone, for what only it has (its planner's choices, its file)."""
    async for factory in _engines(sqlite_url):
        yield factory


@pytest.fixture
async def make_pg_engine(postgres_url: str) -> AsyncIterator[EngineFactory]:
    """``make_engine`` on PostgreSQL alone, for what only it has (several writers, NOTIFY, its faults)."""
    async for factory in _engines(postgres_url):
        yield factory
