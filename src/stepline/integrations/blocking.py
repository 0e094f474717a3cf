"""A ``Connection`` for sync code (Flask, Django's sync views, management commands): its
coroutines run on an event loop of its own in a background thread, so an embedded engine
(and its worker) lives as long as the process, whatever thread calls it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from stepline.integrations import jobs as jobs_mod
from stepline.integrations.core import Connection, Events

T = TypeVar("T")


class BlockingConnection:
    def __init__(self, connection: Connection, *, timeout: float = 30.0) -> None:
        self.connection = connection
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stepline-loop", daemon=True)
        self._thread.start()
        self.call(connection.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def send(self, events: Events) -> list[str]:
        return self.call(self.connection.send(events))

    def close(self) -> None:
        if self._loop.is_running():
            self.call(self.connection.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def job_updates(self, jobs: jobs_mod.Jobs, job_id: str, token: str | None, *, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """``Jobs.updates`` for a sync response body (a generator a WSGI server drains)."""
        jobs.check(job_id, token)
        last = None
        while True:
            job = self.call(jobs.status(job_id, token))
            if job != last:
                yield job
                last = job
            if job["status"] in jobs_mod.FINAL:
                return
            threading.Event().wait(poll)
