"""/health answers anyone, without credentials, as often as they ask: what it reads of the
database must not grow with the data. Counting the queue there made each call scan every
queued run, a number any sender of events decides (300,000 throttled runs: 0.23 s a call,
on SQLite's two reader threads that every API read and run stream shares)."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import httpx
import pytest

import stepline
from stepline.store import sqlite as sqlite_store
from tests.server_live import serve  # noqa: F401 - fixture

app = stepline.App("health-cost")


@app.function(id="queued", trigger=stepline.TriggerEvent("h/queued"))
async def queued(ctx: stepline.Context) -> str:
    return "ran"


class VmSteps:
    """SQLite virtual-machine instructions run on the store's connections while ``counting``."""

    def __init__(self) -> None:
        self.counting = False
        self.steps = 0
        self._lock = threading.Lock()

    def connect(self, real: Any) -> Any:
        def connect(path: str) -> sqlite3.Connection:
            conn = real(path)
            conn.set_progress_handler(self._step, 10)
            return conn

        return connect

    def _step(self) -> int:
        if self.counting:
            with self._lock:
                self.steps += 10
        return 0  # go on

    def of(self, call: Any) -> int:
        self.steps, self.counting = 0, True
        try:
            call()
        finally:
            self.counting = False
        return self.steps


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_health_reads_as_little_with_a_long_queue_as_with_an_empty_one(
    serve: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    vm = VmSteps()
    monkeypatch.setattr(sqlite_store, "connect", vm.connect(sqlite_store.connect))
    server = serve(app, run_worker=False)  # the runs stay queued
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def health() -> None:
            assert client.get("/health").status_code == 200

        health()  # the reader connection is opened
        empty = vm.of(health)
        for _ in range(4):
            sent = client.post("/api/v1/events", json=[{"name": "h/queued", "data": {}}] * 1000)
            assert sent.status_code == 200, sent.text
        assert client.get("/api/v1/metrics").json()["queue"][0]["ready"] == 4000
        long = vm.of(health)
    assert long <= empty + 200, (empty, long)
