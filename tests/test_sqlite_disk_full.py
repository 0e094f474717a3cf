"""SQLite on a file system that fills up: a small tmpfs mounted for each test (the tests
run as root, as CI does), the database on it, and a file that takes the space left.

What is promised: nothing acknowledged is lost, the log says once what is wrong and what
to do (no traceback), and the process goes on by itself once there is room again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline import errors
from stepline import event as event_mod
from stepline.store import open_store
from stepline.store import sqlite as sqlite_backend


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
