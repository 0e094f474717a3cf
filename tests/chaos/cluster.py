"""Real Stepline processes for the chaos runs: API servers (``stepline start``, with and
without a worker) and ``stepline worker`` processes, each in a slot that can be killed and
restarted. Only processes started here are ever signalled, always by pid."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
APP = "tests.chaos.app:app"
EVENT_KEY = "chaos-event-key"
API_TOKEN = "chaos-api-token"
MAX_FAILED_STARTS = 3  # a slot whose processes keep dying while starting fails the run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Slot:
    """One role in the cluster; ``proc`` is its current process."""

    name: str
    args: list[str]
    ready_line: str
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    failed_starts: int = 0  # processes in a row that exited before they finished starting

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None


class Cluster:
    def __init__(self, db_url: str, logs: Path, env: dict[str, str]) -> None:
        self.db_url = db_url
        self.logs = logs
        self.env = {
            **os.environ,
            # the repository root for tests.chaos.app; an existing PYTHONPATH stays in front of
            # the installed stepline (e.g. a checkout of another revision under audit)
            "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), REPO) if p),
            "PYTHONUNBUFFERED": "1",
            "STEPLINE_LOG_LEVEL": "WARNING",
            "STEPLINE_EVENT_KEY": EVENT_KEY,
            "STEPLINE_API_TOKEN": API_TOKEN,
            **env,
        }
        self.slots: list[Slot] = []
        self.process_ends: dict[int, float] = {}  # pid -> when it was killed or seen to exit
        self.started = 0

    # --- set-up ------------------------------------------------------------------------

    def add_api(self, *, with_worker: bool) -> Slot:
        port = free_port()
        args = ["start", APP, "--db", self.db_url, "--port", str(port)] + ([] if with_worker else ["--no-worker"])
        return self._add(Slot("api+worker" if with_worker else "api", args, "stepline start", port=port))

    def add_worker(self) -> Slot:
        return self._add(Slot("worker", ["worker", APP, "--db", self.db_url], "stepline worker"))

    def _add(self, slot: Slot) -> Slot:
        slot.name = f"{slot.name}-{len(self.slots)}"
        self.slots.append(slot)
        return slot

    @property
    def api_urls(self) -> list[str]:
        return [slot.url for slot in self.slots if slot.url]

    # --- processes -----------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        if slot.failed_starts >= MAX_FAILED_STARTS:
            tail = slot.log.read_text(errors="replace")[-2000:] if slot.log else ""
            raise AssertionError(f"{slot.name}: {slot.failed_starts} processes in a row exited while starting:\n{tail}")
        self.started += 1
        slot.log = self.logs / f"{slot.name}.{self.started}.log"
        with open(slot.log, "wb") as out:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "stepline.cli", *slot.args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def is_ready(self, slot: Slot) -> bool:
        return slot.log is not None and slot.ready_line in slot.log.read_text(errors="replace")

    def start_all(self, timeout: float = 60.0) -> None:
        for slot in self.slots:
            self.spawn(slot)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Every slot has a live process that has finished starting (respawning any that died)."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            for slot in self.slots:
                if slot.proc is None or slot.proc.poll() is not None:
                    self.spawn(slot)
            if all(self.is_ready(slot) for slot in self.slots):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"processes did not start within {timeout} s:\n{self.log_tails()}")
            time.sleep(0.1)

    def kill(self, slot: Slot) -> tuple[int, float] | None:
        """SIGKILL the slot's process; its pid and the time of the kill."""
        proc = slot.proc
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        proc.wait(10)
        self.process_ends[proc.pid] = killed_at
        slot.failed_starts = 0  # killed, not failed: a kill during start-up says nothing
        return proc.pid, killed_at

    def reap(self) -> list[tuple[Slot, int]]:
        """Processes that exited on their own since the last look (a crash: worth reporting)."""
        exited = []
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.poll() is not None and proc.pid not in self.process_ends:
                self.process_ends[proc.pid] = time.time()
                slot.failed_starts = 0 if self.is_ready(slot) else slot.failed_starts + 1
                exited.append((slot, proc.pid))
        return exited

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every live process (a graceful stop) and wait; SIGKILL what outlasts ``grace``."""
        live = [slot.proc for slot in self.slots if slot.proc is not None and slot.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            self.process_ends.setdefault(proc.pid, time.time())

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}" for path in sorted(self.logs.glob("*.log"))
        )
