"""What the HTTP benchmarks share: a ``stepline start`` server, the floor server, and wrk.

The load generator is ``wrk`` (C, epoll; Debian's ``wrk`` package, installed here when
missing), one thread, so that it takes as little of the two cores as it can. Each
server runs in its own process; its CPU time is read from ``/proc`` around each load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENT_KEY = "bench-event-key"
API_TOKEN = "bench-api-token"
TICKS = os.sysconf("SC_CLK_TCK")


def ensure_wrk() -> str:
    """The path of ``wrk``, installed from the distribution's packages when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    installed = subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True, text=True)
    if installed.returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, capture_output=True)
        installed = subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True, text=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit(f"wrk is needed for the HTTP benchmarks and could not be installed: {installed.stderr[-500:]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it listened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    url: str  # the base URL
    pid: int


def migrate(db_url: str) -> None:
    subprocess.run([sys.executable, "-m", "stepline.cli", "migrate", "--db", db_url], check=True, capture_output=True, cwd=ROOT)


@contextlib.contextmanager
def stepline_server(app_spec: str, db_url: str, **env: str) -> Iterator[Server]:
    """``stepline start <app_spec>`` (server and worker in one process) on a migrated ``db_url``."""
    migrate(db_url)
    port = free_port()
    environment = dict(os.environ, STEPLINE_EVENT_KEY=EVENT_KEY, STEPLINE_API_TOKEN=API_TOKEN, STEPLINE_LOG_LEVEL="WARNING", **env)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "start", app_spec, "--db", db_url, "--port", str(port)],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(port, proc, "stepline start")
        yield Server(f"http://127.0.0.1:{port}", proc.pid)
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read()[-3000:].decode(errors="replace"))
        raise
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def floor_server(http: str = "auto") -> Iterator[Server]:
    """The empty endpoint (``bench.http_floor``) in its own process, on uvicorn's ``http`` implementation."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.http_floor", "--http", http], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the floor server did not start: {line!r}")
        port = int(line.split()[1])
        _wait_listening(port, proc, "the floor server")  # type: ignore[arg-type]
        yield Server(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        _stop(proc)  # type: ignore[arg-type]


_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass
class Load:
    requests: int
    seconds: float
    per_s: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_request: float


def wrk(server: Server, path: str, body: str, connections: int, seconds: float) -> Load:
    """POST ``body`` to ``path`` from ``connections`` keep-alive connections for ``seconds``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_SCRIPT % body)
    try:
        cpu0 = cpu_seconds_of(server.pid)
        out = subprocess.run(
            [ensure_wrk(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", script.name, server.url + path],
            check=True, capture_output=True, text=True,
        ).stdout
        cpu = cpu_seconds_of(server.pid) - cpu0
    finally:
        os.unlink(script.name)
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    requests, micros, non_2xx, socket_errors, p50, p99, _mean = (float(v) for v in line.split()[1:])
    return Load(
        requests=int(requests), seconds=micros / 1e6, per_s=requests / (micros / 1e6), non_2xx=int(non_2xx),
        socket_errors=int(socket_errors), p50_ms=p50 / 1000, p99_ms=p99 / 1000,
        server_cpu_us_per_request=cpu * 1e6 / max(1.0, requests),
    )


def post(server: Server, path: str, body: bytes) -> bytes:
    request = urllib.request.Request(server.url + path, data=body, method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return bytes(reply.read())
