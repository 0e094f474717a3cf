"""SQLite on a file system that fills up: a small tmpfs mounted for each test (the tests
run as root, as CI does), the database on it, and a file that takes the space left; and
on one mounted read-only.

What is promised: nothing acknowledged is lost, the log says once what is wrong and what
to do (no traceback), and the process goes on by itself once there is room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepline
from stepline import errors, outage
from stepline import event as event_mod
from stepline.engine import Engine
from stepline.store import migrate, open_store
from stepline.store import sqlite as sqlite_backend
from tests.conftest import TEST_SETTINGS
from tests.helpers import eventually, runs_for_event, wait_run


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of this test's own, unmounted after it."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every byte left on ``directory``'s file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def thread_failures(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    seen: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


async def test_closing_on_a_full_disk_logs_one_line_not_a_checkpointer_traceback(
    small_fs: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    thread_failures: list[threading.ExceptHookArgs],
) -> None:
    """The checkpointer's last checkpoint, as the store closes, needs room for the file to
    take the log's pages back: on a full disk it died with a traceback. It now says so on
    one line, and what to do; the log keeps every commit for the next start."""
    monkeypatch.setattr(sqlite_backend._Checkpointer, "INTERVAL", 3600.0)  # the log is copied back only at the end
    path = str(small_fs / "stepline.db")
    store = open_store(path)
    await store.start()
    pad = "x" * 4000
    ids: list[str] = []
    for n in range(100):  # about 400 KiB, all of it in the log
        ids += await store.ingest([event_mod.Event(name="full/kept", data={"pad": pad, "n": n})])
    filler = fill(small_fs)
    caplog.set_level(logging.WARNING, logger="stepline")
    await store.close()
    assert not thread_failures, [f.exc_value for f in thread_failures]
    lines = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "is full: free space there" in lines[0] and "nothing is lost" in lines[0], lines
    filler.unlink()
    store = open_store(path)
    await store.start()
    try:
        kept = await store.db.read(lambda conn: conn.scalar("SELECT COUNT(*) FROM events WHERE name = 'full/kept'"))
        assert kept == len(ids) == 100
    finally:
        await store.close()


async def test_a_write_refused_on_a_full_disk_says_what_to_do(small_fs: Path) -> None:
    """An ingest on a full disk was refused with SQLite's words alone ("database or disk is
    full"): the refusal (and the 503 carrying it) now names the file system and the remedy."""
    path = str(small_fs / "stepline.db")
    store = open_store(path)
    await store.start()
    filler = fill(small_fs)
    try:
        pad = "x" * 4000
        with pytest.raises(errors.StoreError) as refused:
            for n in range(400):
                await store.ingest([event_mod.Event(name="full/refused", data={"pad": pad, "n": n})])
        assert f"The file system holding {small_fs} is full: free space there" in str(refused.value), refused.value
        filler.unlink()
        assert await store.ingest([event_mod.Event(name="full/after", data={})])
    finally:
        with contextlib.suppress(OSError):
            filler.unlink()
        await store.close()


def _stalled_app(gate: asyncio.Event, executions: list[str]) -> stepline.App:
    app = stepline.App("disk-full")

    @app.function(id="big-steps", trigger=stepline.TriggerEvent("full/job"))
    async def big_steps(ctx: stepline.Context) -> int:
        async def first() -> str:
            executions.append("first")
            await gate.wait()  # the disk fills meanwhile: its checkpoint finds no room
            return "y" * 200_000

        async def second() -> str:
            executions.append("second")
            return "z" * 1000

        return len(await ctx.step.run("first", first)) + len(await ctx.step.run("second", second))

    return app


async def test_a_full_disk_is_logged_once_and_its_runs_go_on_once_there_is_room(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the disk was full the log said "writing to the database works again" after
    every commit that only read (a claim finding nothing), and "claiming runs failed" /
    "works again" twice a second, as each reclaim of an expired lease was refused and the
    plain claims between them read nothing; events refused inside a commit that went
    through were never logged. Now each outage has one line when it begins and one when
    writes go through again; the run its checkpoint could not save goes on by itself."""
    path = str(small_fs / "stepline.db")
    gate, executions = asyncio.Event(), []
    engine = Engine(open_store(path), TEST_SETTINGS.replace(db=path, lease=1.0), [_stalled_app(gate, executions)])
    await engine.start()
    filler: Path | None = None
    try:
        caplog.set_level(logging.WARNING, logger="stepline")
        event_id = await engine.send({"name": "full/job", "data": {}})
        run = (await runs_for_event(engine, event_id))[0]
        await eventually(lambda: executions or None, what="the first step to start")
        filler = fill(small_fs)
        gate.set()
        for n in range(5):
            with pytest.raises(errors.StoreError, match="is full: free space there"):
                await engine.send({"name": "full/refused", "data": {"pad": "x" * 100_000, "n": n}})
            await asyncio.sleep(0.6)  # past the lease: the worker tries to reclaim the stopped run
        while_full = [r.getMessage() for r in caplog.records]
        assert sum("writing to the database failed" in m for m in while_full) == 1, while_full
        assert not [m for m in while_full if "works again" in m], while_full
        filler.unlink()
        filler = None
        done = await wait_run(engine, run["id"], "completed", timeout=30)
        assert done["output"] == 201_000
        assert executions.count("second") == 1

        async def writes_said_to_work() -> bool | None:  # said of a write, SETTLE s after the last failure
            await engine.send({"name": "full/after", "data": {}})
            return any("writing to the database works again" in r.getMessage() for r in caplog.records) or None

        await eventually(writes_said_to_work, timeout=outage.SETTLE + 10, interval=0.3, what="the end of the outage to be logged")
        lines = [r.getMessage() for r in caplog.records]
        assert sum("writing to the database failed" in m for m in lines) == 1, lines
    finally:
        if filler is not None:
            filler.unlink()
        await engine.stop(grace=1.0)


async def test_a_database_on_a_read_only_mount_is_refused_saying_what_to_check(small_fs: Path, tmp_path: Path) -> None:
    """A database on a file system mounted read-only (a volume attached read-only, a
    remount after errors) was refused with SQLite's "unable to open database file" alone,
    which says neither what could not be opened nor why: WAL mode creates two files beside
    the database. The refusal now names them, the directory and what to check."""
    path = small_fs / "stepline.db"
    migrate.apply(str(path))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "--bind", str(small_fs), str(read_only)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(read_only)], check=True)
        with pytest.raises(errors.StoreError) as refused:
            migrate.pending(str(read_only / "stepline.db"))
        assert f"create stepline.db-wal and stepline.db-shm in {read_only}" in str(refused.value), refused.value
        assert "not mounted read-only" in str(refused.value)
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert migrate.pending(str(path)) == []  # the same file, writable, opens
