"""A real uvicorn server on a loopback port over an Engine, in its own thread and event
loop, so sync clients (a browser, schemathesis) and async ones can both call it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from stepline.app import App
from stepline.engine import Engine
from stepline.server import create_app
from stepline.server.common import ServerOptions
from stepline.store import open_store
from tests.conftest import TEST_SETTINGS
from tests.helpers import wait_for

T = TypeVar("T")


class LiveServer:
    def __init__(self, db_url: str, apps: list[App], options: ServerOptions, run_worker: bool, settings: dict[str, Any]) -> None:
        self.db_url = db_url
        self.apps = apps
        self.options = options
        self.run_worker = run_worker
        self.settings = TEST_SETTINGS.replace(db=db_url, **settings)
        self.engine: Engine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="live-server", daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"the test server did not start: {self._error!r}")
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = Engine(open_store(self.db_url, migrate_now=False), self.settings, self.apps)
        await self.engine.start(run_worker=self.run_worker)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.engine, self.options), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        serving = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        try:
            await serving
        finally:
            await self.engine.stop(grace=1.0)

    def call(self, make: Callable[[Engine], Awaitable[T]], timeout: float = 30) -> T:
        """Run ``make(engine)`` on the server's loop and return its result."""
        assert self.loop is not None and self.engine is not None
        engine = self.engine

        async def run() -> T:
            return await make(engine)

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # open streams must not hold the test up
        self._thread.join(30)


ServeFactory = Callable[..., LiveServer]


@pytest.fixture
def serve(db_url: str) -> Iterator[ServeFactory]:
    """``serve(*apps, options=ServerOptions(...), run_worker=True, **settings)`` → a started LiveServer."""
    servers: list[LiveServer] = []

    def factory(*apps: App, options: ServerOptions | None = None, run_worker: bool = True, **settings: Any) -> LiveServer:
        server = LiveServer(db_url, list(apps), options or ServerOptions(), run_worker, settings).start()
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        server.stop()


def run_of_event(client: httpx.Client, event_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (client.get(f"/api/v1/events/{event_id}").json().get("runs") or [None])[0],
        what=f"a run for event {event_id}",
    )


def run_status(client: httpx.Client, run_id: str, *statuses: str) -> dict[str, Any]:
    wanted = statuses or ("completed", "failed", "cancelled")

    def check() -> dict[str, Any] | None:
        run = client.get(f"/api/v1/runs/{run_id}").json()
        return run if run.get("status") in wanted else None

    return wait_for(check, what=f"run {run_id} to be {wanted}")
