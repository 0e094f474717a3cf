"""`stepline dev` / `stepline start` as real processes on loopback, for tests that need the
whole serving stack (uvicorn, Stepline's connection protocol, the HTTP guard) or a
process of its own (an open-file limit, its memory)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server_live import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENT_KEY = "event-key-1"
API_TOKEN = "api-token-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CliServer:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        """What the process wrote so far (stdout and stderr)."""
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def rss_peak_kib(self) -> int:
        """The process's peak resident memory so far (VmHWM), in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)


def _limit_open_files(count: int) -> Any:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return apply


@pytest.fixture
def cli_server(db_url: str, tmp_path: Any) -> Iterator[Any]:
    """``cli_server(mode="start"|"dev", env={...}, open_files=N, app="module:app")`` → a healthy CliServer."""
    servers: list[CliServer] = []

    def start(mode: str = "start", env: dict[str, str] | None = None, open_files: int | None = None,
              app: str = "tests.server_apps:app", extra_args: tuple[str, ...] = ()) -> CliServer:
        port = free_port()
        full_env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LOG_LEVEL": "WARNING",
                    "STEPLINE_EVENT_KEY": EVENT_KEY, "STEPLINE_API_TOKEN": API_TOKEN, **(env or {})}
        log_path = str(tmp_path / f"stepline-{mode}-{port}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stepline.cli", mode, app, "--db", db_url, "--port", str(port), *extra_args],
                cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_limit_open_files(open_files) if open_files else None,
            )
        server = CliServer(proc, port, log_path)
        servers.append(server)

        def healthy() -> bool:
            assert proc.poll() is None, f"stepline {mode} exited with {proc.returncode}: {server.log()[-2000:]}"
            try:
                return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what=f"stepline {mode} to answer /health")
        return server

    yield start
    for server in servers:
        server.stop()


def read_until_closed(sock: socket.socket, *, timeout: float = 30.0, trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes the connection, sending ``trickle`` a byte
    at a time meanwhile (a slow client); fails if the server has not closed within ``timeout``."""
    sock.settimeout(0.2)
    received = b""
    sent = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent:sent + 1])
                sent += 1
            except OSError:
                sent = len(trickle)  # the server stopped reading; keep reading its answer
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open for {timeout}s (received {received[:200]!r})")
