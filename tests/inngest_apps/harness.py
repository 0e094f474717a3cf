"""A Stepline server on loopback with the SDK-app runtime attached, and helpers
to run SDK apps beside it (a uvicorn thread for Python, a Node process for TS)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import httpx
import uvicorn

from stepline.app import App
from stepline.engine import Engine
from stepline.inngest import InngestOptions, InngestRuntime, attach
from stepline.server import create_app
from stepline.server.common import ServerOptions
from stepline.store import open_store
from tests.conftest import TEST_SETTINGS
from tests.helpers import eventually

TERMINAL = ("completed", "failed", "cancelled")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this process: two picked before either is
    bound (an SDK app's and the server's) could otherwise be the same one."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclasses.dataclass
class Server:
    engine: Engine
    runtime: InngestRuntime
    url: str
    options: ServerOptions

    async def send(self, name: str, data: dict[str, Any] | None = None, key: str = "dev", **extra: Any) -> str:
        async with httpx.AsyncClient() as client:
            reply = await client.post(f"{self.url}/e/{key}", json={"name": name, "data": data or {}, **extra})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["ids"][0])

    async def runs_of(self, function_id: str) -> list[dict[str, Any]]:
        return await self.engine.list_runs(function_id=function_id, limit=100)

    async def run_for(self, event_id: str, function_id: str, timeout: float = 20.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            runs = (await self.engine.store.get_event(event_id))["runs"]
            return next((r for r in runs if r["function_id"] == function_id), None)

        return await eventually(check, timeout=timeout, what=f"a run of {function_id} for event {event_id}")

    async def finished(self, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run = await self.engine.get_run(run_id)
            return run if run["status"] in TERMINAL else None

        return await eventually(check, timeout=timeout, what=f"run {run_id} to finish")

    async def status(self, run_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run = await self.engine.get_run(run_id)
            return run if run["status"] in statuses else None

        return await eventually(check, timeout=timeout, what=f"run {run_id} to be {statuses}")

    async def sync(self, app_url: str) -> None:
        status = await self.runtime.sync(app_url)
        assert status.error is None, status.error
        await eventually(lambda: _done(self.runtime.apps.get(status.url)), timeout=10, what=f"{app_url} to register")


async def _done(status: Any) -> bool:
    return bool(status and status.synced_at and not status.error)


@contextlib.asynccontextmanager
async def stepline_server(
    db_url: str,
    *,
    dev: bool = True,
    signing_key: str = "",
    event_key: str = "",
    run_worker: bool = True,
    apps: Sequence[App] = (),
    **overrides: Any,
) -> AsyncIterator[Server]:
    port = free_port()
    settings = TEST_SETTINGS.replace(db=db_url, port=port, **overrides)
    engine = Engine(open_store(db_url, migrate_now=False), settings, list(apps))
    options = ServerOptions(dev=dev, event_key=event_key, api_token="token" if not dev else "")
    runtime = attach(engine, InngestOptions(dev=dev, signing_key=signing_key, reload_interval=0.5))
    await engine.start(run_worker=run_worker)
    await runtime.start()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, options), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _up(server), timeout=10, what="the Stepline server to listen")
    try:
        yield Server(engine, runtime, f"http://127.0.0.1:{port}", options)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await runtime.stop()
        await engine.stop(grace=1.0)


async def _up(server: uvicorn.Server) -> bool:
    return bool(server.started)


class ThreadServer:
    """An ASGI app served by uvicorn in its own thread and event loop (like a separate app)."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the SDK app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


TS_DIR = pathlib.Path(__file__).with_name("ts")
TS_PACKAGES = ("inngest", "inngest-v3", "express")  # as pinned in ts/package.json
# The TypeScript SDK majors the suite runs: 4.x on node:http, 3.x (most production apps) on Express.
TS_SDKS = ("v4", "v3")
_install_lock = threading.Lock()


def ensure_ts_sdk() -> None:
    """Install the pinned TypeScript SDKs with the machine's npm (once; node_modules is not in git)."""
    with _install_lock:
        if all((TS_DIR / "node_modules" / name / "package.json").exists() for name in TS_PACKAGES):
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the TypeScript SDK tests need Node.js and npm on PATH (apt-get install nodejs npm)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True, timeout=600)


class NodeApp:
    """The TS test app in its own Node process, configured only by environment variables;
    ``sdk`` picks the SDK major (``v4``, or ``v3`` on Express)."""

    def __init__(self, env: dict[str, str], sdk: str = "v4") -> None:
        self.port = free_port()
        self.sdk = sdk
        self.url = f"http://127.0.0.1:{self.port}/api/inngest"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
        self.env = {**clean, **env, "PORT": str(self.port), "STEPLINE_TEST_SDK": sdk}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        ensure_ts_sdk()
        node = shutil.which("node") or "node"
        self.proc = subprocess.Popen([node, "app.mjs"], cwd=TS_DIR, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise RuntimeError(f"the Node test app did not start: {out}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def counts(self) -> dict[str, Any]:
        return await AppControl(self.port).counts()

    async def open_gate(self, name: str) -> None:
        await AppControl(self.port).open_gate(name)


@dataclasses.dataclass(frozen=True)
class AppControl:
    """The test apps' own routes (TS and Python alike): what their functions did, and gates."""

    port: int

    async def counts(self) -> dict[str, Any]:
        """``{"counts": {name: n}, "seen": {name: value}}``."""
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{self.port}/counts")).json()  # type: ignore[no-any-return]

    async def open_gate(self, name: str) -> None:
        """Let the steps waiting on gate ``name`` finish."""
        async with httpx.AsyncClient() as client:
            (await client.post(f"http://127.0.0.1:{self.port}/gate/{name}")).raise_for_status()


# --- the Python SDK, in this interpreter or in a venv of its own ----------------------

REPO = pathlib.Path(__file__).resolve().parents[2]
PY_SDK_HERE = importlib.metadata.version("inngest")  # pinned by the dev extra (pyproject.toml)
PY_SDK_NEWEST = "0.5.20a0"  # the newest release on PyPI; it cannot share a venv with the pinned one
PY_SDKS = (PY_SDK_HERE, PY_SDK_NEWEST)
SDK_VENVS = REPO / ".venv-sdk"


def python_with_sdk(version: str) -> str:
    """An interpreter whose ``inngest`` is ``version``: a venv under .venv-sdk/, made from
    the package registry on first use and kept (with this venv's FastAPI and uvicorn)."""
    venv = SDK_VENVS / f"inngest-{version}"
    python = venv / "bin" / "python"
    with _install_lock:
        done = venv / ".ready"
        if done.exists():
            return str(python)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        pins = [f"inngest=={version}"] + [f"{name}=={importlib.metadata.version(name)}" for name in ("fastapi", "uvicorn")]
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins], check=True, timeout=900)
        done.write_text(version)
        return str(python)


class PyAppProcess:
    """The Python test app in its own process, under ``python`` (configured by ``env``);
    ``counts`` and ``seen`` read what its functions did, like ``py_app.Recorder``."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/inngest"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
        self.env = {**clean, **env, "PORT": str(self.port)}
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        script = str(pathlib.Path(__file__).with_name("py_serve.py"))
        self.proc = subprocess.Popen([self.python, script], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/counts", timeout=0.5)
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise RuntimeError(f"the Python test app did not start: {out}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _read(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/counts", timeout=5).json()  # type: ignore[no-any-return]

    @property
    def counts(self) -> Counter[str]:
        return Counter(self._read()["counts"])

    @property
    def seen(self) -> dict[str, Any]:
        return self._read()["seen"]  # type: ignore[no-any-return]
