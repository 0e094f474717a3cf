"""SQLite's write lock held by another process (a ``sqlite3`` shell after ``BEGIN
IMMEDIATE``, a process stopped mid-write). An ingest waited for it as long as it lasted
(30 s measured, the web request hanging); it now gives up after
``store.INGEST_WRITE_LOCK_WAIT_MS`` with ``BusyError`` (503 with Retry-After), and nothing
of it is stored, then or later. Other writes (checkpoints) still wait and are not lost.
Each test holds the lock from a real second connection on the same file."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

import stepline
from stepline import errors
from stepline.server import api_metrics, create_app
from stepline.server.common import ServerOptions
from stepline.store import db
from stepline.store import sqlite as sqlite_backend
from stepline.store import store as store_mod
from tests.cli_server import API_TOKEN, EVENT_KEY, cli_server  # noqa: F401 - fixture
from tests.helpers import runs_for_event, wait_run
from tests.test_handoff import query

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
REFUSED = "write lock.*nothing of this request was stored: send it again"


@contextmanager
def write_lock_held(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        other.execute("COMMIT")
        other.close()


def count(db_url: str, name: str) -> int:
    return int(query(db_url, "SELECT COUNT(*) FROM events WHERE name = ?", (name,))[0][0])


def bound_ingests(monkeypatch: pytest.MonkeyPatch, wait_ms: int) -> None:
    """A shorter wait for the lock than the 2 s default (for stores opened after), so the tests run quickly."""
    monkeypatch.setattr(store_mod, "INGEST_WRITE_LOCK_WAIT_MS", wait_ms, raising=False)


async def test_an_ingest_is_refused_while_the_lock_is_held_and_a_retry_stores_it_once(make_engine, db_url, monkeypatch) -> None:
    bound_ingests(monkeypatch, 300)
    engine = await make_engine(run_worker=False)
    event = {"name": "lock/refused", "data": {"n": 1}}
    with write_lock_held(db_url) as other:
        with pytest.raises(errors.BusyError, match=REFUSED):
            await asyncio.wait_for(engine.send(event), 10)  # before the fix: waited for the COMMIT below
        assert other.in_transaction  # refused while the lock was still held
    await engine.store.db.write(lambda conn: None)  # the writer is done with everything queued before
    assert count(db_url, "lock/refused") == 0
    await engine.send(event)  # sending it again stores it, once
    assert count(db_url, "lock/refused") == 1


async def test_a_caller_giving_up_as_the_writer_takes_the_lock_leaves_nothing_stored(make_engine, db_url, monkeypatch) -> None:
    """The writer has just taken the lock after a long wait when the caller gives up: the
    item is withdrawn before any transaction took it, so the caller's BusyError is true."""
    bound_ingests(monkeypatch, 300)
    engine = await make_engine(run_worker=False)
    database = engine.store.db
    got, go = threading.Event(), threading.Event()
    begin_now = database._begin_now

    def begin_now_then_pause(conn: sqlite3.Connection) -> bool:
        began = bool(begin_now(conn))
        if began and getattr(database, "_write_lock_wait_since", None) is not None:  # taken after waiting for it
            got.set()
            go.wait(10)
        return began

    database._begin_now = begin_now_then_pause  # type: ignore[method-assign]
    try:
        with write_lock_held(db_url):
            sending = asyncio.ensure_future(engine.send({"name": "lock/withdrawn"}))
            await asyncio.sleep(0.1)
        await asyncio.get_running_loop().run_in_executor(None, got.wait, 10)  # the writer holds the lock now
        with pytest.raises(errors.BusyError, match=REFUSED):
            await asyncio.wait_for(sending, 5)
    finally:
        go.set()
    await database.write(lambda conn: None)
    assert count(db_url, "lock/withdrawn") == 0
    await engine.send({"name": "lock/withdrawn"})
    assert count(db_url, "lock/withdrawn") == 1


async def test_an_ingest_the_writer_took_as_the_lock_freed_commits_once(make_engine, db_url, monkeypatch) -> None:
    """Of two ingests waiting for the same lock, the one that waited past the bound is
    refused; the one the writer took once the lock freed is answered, and stored once, even
    though its transaction outlasted the bound."""
    bound_ingests(monkeypatch, 500)
    engine = await make_engine(run_worker=False)
    store = engine.store
    shared = store._ingests.fn
    in_transaction = threading.Event()

    def slow(conn: db.Conn, items: list[Any]) -> list[Any]:
        in_transaction.set()
        threading.Event().wait(0.8)  # longer than the bound, the writer holding the lock
        return shared(conn, items)

    with write_lock_held(db_url):
        with pytest.raises(errors.BusyError, match=REFUSED):
            await asyncio.wait_for(engine.send({"name": "lock/first"}), 10)
        store._ingests.fn = slow
        taken = asyncio.ensure_future(engine.send({"name": "lock/taken"}))
        await asyncio.sleep(0.2)  # less than the bound: the lock frees while it waits
    event_id = await asyncio.wait_for(taken, 10)
    assert in_transaction.is_set() and event_id
    assert count(db_url, "lock/first") == 0
    assert count(db_url, "lock/taken") == 1


async def test_checkpoints_wait_out_the_lock_while_events_are_refused(make_engine, db_url, monkeypatch) -> None:
    app = stepline.App("lock")
    ran: dict[str, int] = {}
    step_one_done = asyncio.Event()
    go_on = asyncio.Event()

    def counted(name: str) -> str:
        ran[name] = ran.get(name, 0) + 1
        return name

    @app.function(id="steps", trigger=stepline.TriggerEvent("lock/run"))
    async def steps(ctx: stepline.Context) -> str:
        await ctx.step.run("one", lambda: counted("one"))
        step_one_done.set()
        await go_on.wait()
        await ctx.step.run("two", lambda: counted("two"))
        return await ctx.step.run("three", lambda: counted("three"))

    bound_ingests(monkeypatch, 300)
    engine = await make_engine(app)
    event_id = await engine.send({"name": "lock/run"})
    (run,) = await runs_for_event(engine, event_id)
    await asyncio.wait_for(step_one_done.wait(), 10)
    with write_lock_held(db_url) as other:
        go_on.set()  # the run goes on; its checkpoints wait for the lock
        with pytest.raises(errors.BusyError, match=REFUSED):
            await asyncio.wait_for(engine.send({"name": "lock/refused-too"}), 10)
        assert other.in_transaction
        assert "three" not in ran  # a checkpoint waits for the lock: the run does not go on past it
    done = await wait_run(engine, run["id"], "completed", timeout=15)
    assert done["output"] == "three"
    assert ran == {"one": 1, "two": 1, "three": 1}
    assert count(db_url, "lock/refused-too") == 0


async def test_the_first_warning_comes_early_and_names_what_to_look_for(make_engine, db_url, monkeypatch, caplog) -> None:
    monkeypatch.setattr(sqlite_backend, "LOCK_WARN_FIRST", 0.2, raising=False)
    monkeypatch.setattr(sqlite_backend, "LOCK_WARN_EVERY", 3600.0)  # the first warning alone
    engine = await make_engine(run_worker=False)
    with write_lock_held(db_url):
        write = asyncio.ensure_future(engine.store.db.write(lambda conn: conn.execute("DELETE FROM events WHERE 0")))
        await asyncio.sleep(0.6)
        assert not write.done()
    await asyncio.wait_for(write, 10)
    said = [r.getMessage() for r in caplog.records if r.name == "stepline.store.sqlite"]
    assert any("has held the write lock" in m and "another process with this database open in a write transaction" in m
               for m in said), said
    assert any("is free again" in m for m in said), said


async def test_health_answers_503_while_the_lock_is_held_and_200_after(make_engine, db_url, monkeypatch) -> None:
    monkeypatch.setattr(api_metrics, "WRITES_FAILING", 0.3)
    engine = await make_engine(run_worker=False)
    app = create_app(engine, ServerOptions(dev=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        assert (await client.get("/health")).status_code == 200
        with write_lock_held(db_url):
            write = asyncio.ensure_future(engine.store.db.write(lambda conn: None))
            await asyncio.sleep(0.5)
            reply = await client.get("/health")
            assert reply.status_code == 503, reply.text
            assert "another process holds the write lock" in reply.json()["error"], reply.text
        await asyncio.wait_for(write, 10)
        assert (await client.get("/health")).status_code == 200


def test_the_server_answers_503_with_retry_after_while_another_process_holds_the_lock(cli_server, db_url) -> None:  # noqa: F811
    """A real `stepline start` (its default 2 s wait): both ingest routes refuse while the lock
    is held, then the same request is stored once (a refused one committed later would make two)."""
    server = cli_server("start")
    body = {"name": "lock/http", "data": {"n": 1}}
    with write_lock_held(db_url) as other:
        reply = httpx.post(f"{server.url}/e/{EVENT_KEY}", json=body, timeout=20)
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text
        assert "write lock" in reply.json()["error"] and "send it again" in reply.json()["error"]
        api = httpx.post(f"{server.url}/api/v1/events", json=body, timeout=20,
                         headers={"authorization": f"Bearer {API_TOKEN}"})
        assert api.status_code == 503 and api.headers["retry-after"] == "1", api.text
        assert other.in_transaction
    again = httpx.post(f"{server.url}/e/{EVENT_KEY}", json=body, timeout=20)
    assert again.status_code == 200, again.text
    assert count(db_url, "lock/http") == 1


async def test_an_answered_ingest_is_not_held_while_it_could_have_been_refused(make_engine, db_url) -> None:
    """Ingests that may give up are kept by the database only until the writer takes them: a
    timer per ingest held each one (its future, its events) for the whole bound after it was
    answered, ten thousand live at 5,000 a second, which cost a quarter of the server's
    throughput in collector time."""

    class Item:
        pass

    engine = await make_engine(run_worker=False)
    database = engine.store.db
    kind = db.Batched("test-ingest", lambda conn, items: [None for _ in items], write_lock_wait_ms=2000, write_lock_message="x")
    item = Item()
    future = database.submit_item(kind, item)
    await future
    answered, held = weakref.ref(future), weakref.ref(item)
    del future, item
    await database.write(lambda conn: None)  # the writer has moved on from that batch
    gc.collect()
    assert answered() is None and held() is None
    assert not database._withdrawable
