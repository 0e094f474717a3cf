"""One chaos run, start to audit.

Set up a database (a SQLite file, or a PostgreSQL database of its own behind a cutting
proxy), start API servers and workers, send a steady load while faults hit at random
moments, then stop the faults and the load, let every run finish, stop the processes
gracefully and hand everything the run observed to the auditor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from stepline.store import migrate, ops_run_counts
from tests.chaos import app as chaos_app
from tests.chaos import auditlog, auditor, faults
from tests.chaos.auditor import Fault, Observed, Report, RunRow
from tests.chaos.cluster import EVENT_KEY, Cluster
from tests.chaos.load import Load
from tests.chaos.proxy import CuttingProxy

SECONDS_VAR = "STEPLINE_CHAOS_SECONDS"
SEED_VAR = "STEPLINE_CHAOS_SEED"
DEFAULT_SECONDS = 40.0
PG_ADMIN_URL = os.environ.get("STEPLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TERMINAL = ("completed", "failed", "cancelled")

SQLITE_FAULTS = ("kill", "stall")
POSTGRES_FAULTS = ("kill", "stall", "terminate", "cut")


def chaos_seconds() -> float:
    """How long faults hit the cluster (``STEPLINE_CHAOS_SECONDS``; ``make chaos`` sets it higher)."""
    return float(os.environ.get(SECONDS_VAR) or DEFAULT_SECONDS)


def timeout_for_run() -> int:
    """A pytest timeout that leaves room for start-up, settling and the audit."""
    return int(chaos_seconds() * 1.5) + 480


@dataclasses.dataclass
class Plan:
    backend: str  # "sqlite" or "postgres"
    seconds: float
    faults: tuple[str, ...]
    lease: float = 2.0
    workers: int = 2
    rate: float = 8.0  # events per second
    gap: tuple[float, float] = (0.5, 3.0)  # seconds between faults
    stall_extra: tuple[float, float] = (1.0, 3.0)  # a stall outlasts the lease by this much
    fencing: bool | None = None  # None: leave STEPLINE_FENCING unset (the default)
    hold: tuple[float, float] | None = None  # seconds of the async function's s2, to outlast a stall
    seed: int = dataclasses.field(default_factory=lambda: int(os.environ.get(SEED_VAR) or random.randrange(1 << 30)))


@dataclasses.dataclass
class Outcome:
    plan: Plan
    report: Report
    load_errors: int
    unacknowledged: list[str]
    settled: bool  # every run reached a terminal status before the deadline
    directory: Path  # audit log, processes' logs, observed.json (to audit again), report.txt

    def tracebacks(self) -> int:
        """Errors the processes logged (not a check: the auditor judges; a lead when it fails)."""
        return sum(log.read_text(errors="replace").count("Traceback (most recent call last)") for log in (self.directory / "logs").glob("*.log"))

    def text(self, limit: int = 20) -> str:
        head = (
            f"chaos {self.plan.backend}: {self.plan.seconds:.0f} s of {', '.join(self.plan.faults) or 'no faults'}, lease {self.plan.lease} s, "
            f"fencing {'default' if self.plan.fencing is None else int(self.plan.fencing)}, "
            f"{f'async s2 held {self.plan.hold[0]:g}-{self.plan.hold[1]:g} s, ' if self.plan.hold else ''}seed {self.plan.seed}; "
            f"load errors {self.load_errors}, never acknowledged {len(self.unacknowledged)}, settled {self.settled}, "
            f"tracebacks in the processes' logs {self.tracebacks()}\n"
            f"  files: {self.directory}"
        )
        return head + "\n" + self.report.text(limit)


# --- databases ------------------------------------------------------------------------


@dataclasses.dataclass
class Database:
    url: str  # what Stepline's processes use (through the proxy on PostgreSQL)
    direct_url: str  # what the runner and the auditor use
    name: str
    proxy: CuttingProxy | None = None

    def query(self, sql: str) -> list[dict[str, Any]]:
        if self.proxy is None:
            conn = sqlite3.connect(self.direct_url, timeout=60)
            try:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        with psycopg.connect(self.direct_url, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(sql).fetchall()


@contextmanager
def database(backend: str, directory: Path) -> Iterator[Database]:
    if backend == "sqlite":
        path = str(directory / "chaos.db")
        migrate.apply(path)
        yield Database(path, path, path)
        return
    name = f"stepline_chaos_{uuid.uuid4().hex[:10]}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    host, port = _host_port(PG_ADMIN_URL)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    proxy = CuttingProxy(host, port).start()
    try:
        migrate.apply(f"{base}/{name}")
        proxied = f"{base.replace(f'{host}:{port}', f'127.0.0.1:{proxy.port}')}/{name}"
        yield Database(proxied, f"{base}/{name}", name, proxy)
    finally:
        proxy.stop()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _host_port(url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)


# --- faults at random moments -----------------------------------------------------------


class Chaos:
    """A thread that injects one fault at a time, at random moments, until stopped."""

    def __init__(self, plan: Plan, cluster: Cluster, db: Database, rng: random.Random) -> None:
        self.plan, self.cluster, self.db, self.rng = plan, cluster, db, rng
        self.faults: list[Fault] = []
        self.failures: list[str] = []  # an injector that raised, a process that cannot start: the run stops
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos-faults", daemon=True)

    def start(self) -> Chaos:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _injectors(self) -> dict[str, Callable[[], Fault | None]]:
        lease, extra = self.plan.lease, self.plan.stall_extra
        stall_for = lambda: lease + self.rng.uniform(*extra)  # noqa: E731
        if self.db.proxy is None:
            stall = lambda: faults.sqlite_stall(self.db.direct_url, stall_for())  # noqa: E731
        else:
            stall = lambda: faults.pg_lock_stall(self.db.direct_url, self.rng.choice(faults.PG_TABLES), stall_for())  # noqa: E731
        proxy = self.db.proxy
        plain_stall = stall
        # Every other stall (at random) on a machine whose cores are all busy.
        stall = lambda: faults.loaded(plain_stall) if self.rng.random() < 0.5 else plain_stall()  # noqa: E731
        return {
            "kill": lambda: faults.kill(self.cluster, self.rng),
            "stall": stall,
            "terminate": lambda: faults.pg_terminate(self.db.direct_url, self.db.name),
            "cut": lambda: faults.proxy_cut(proxy) if proxy is not None else None,
        }

    def _main(self) -> None:
        injectors = self._injectors()
        bag: list[str] = []  # each kind once per round, in a random order: none is left out
        while not self._stop.wait(self.rng.uniform(*self.plan.gap)):  # a random moment
            try:
                for slot, pid in self.cluster.reap():  # died by itself: note it, start another
                    self.faults.append(Fault("exit", slot.name, self.cluster.process_ends[pid], self.cluster.process_ends[pid], pid=pid))
                    self.cluster.spawn(slot)
            except AssertionError as exc:  # a process that cannot start: the run is over
                self.failures.append(str(exc))
                return
            if not self.plan.faults:
                continue
            if not bag:
                bag = self.rng.sample(self.plan.faults, len(self.plan.faults))
            kind = bag.pop()
            try:
                fault = injectors[kind]()
            except Exception as exc:  # noqa: BLE001 - reported with the outcome
                self.failures.append(f"{kind}: {exc!r}")
                continue
            if fault is not None:
                self.faults.append(fault)


# --- the run -------------------------------------------------------------------------------


def run(plan: Plan, directory: Path) -> Outcome:
    rng = random.Random(plan.seed)
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    audit_log = directory / "audit.jsonl"
    env = {auditlog.AUDIT_LOG_VAR: str(audit_log), "STEPLINE_LEASE": str(plan.lease)}
    if plan.fencing is not None:
        env["STEPLINE_FENCING"] = "1" if plan.fencing else "0"
    with database(plan.backend, directory) as db:
        cluster = Cluster(db.url, logs, env)
        cluster.add_api(with_worker=True)
        cluster.add_api(with_worker=False)
        for _ in range(plan.workers):
            cluster.add_worker()
        try:
            cluster.start_all()
            load = Load(cluster.api_urls, EVENT_KEY, rate=plan.rate, seed=rng.randrange(1 << 30), hold=plan.hold).start()
            chaos = Chaos(plan, cluster, db, rng).start()
            deadline = time.monotonic() + plan.seconds
            while time.monotonic() < deadline and not chaos.failures:
                time.sleep(0.2)  # the length of the chaos phase, not a wait for a state
            chaos.stop()
            load.stop()
            cluster.wait_ready(timeout=120)
            settled = _wait_terminal(db, timeout=180 + 10 * plan.lease)
        finally:
            cluster.stop()
        for slot, pid in cluster.reap():
            chaos.faults.append(Fault("exit", slot.name, cluster.process_ends[pid], cluster.process_ends[pid], pid=pid))
        if chaos.failures:
            raise AssertionError(f"the chaos run stopped early: {chaos.failures}\n{cluster.log_tails()}")
        seen = _observe(db, plan, load, chaos.faults, cluster.process_ends, audit_log)
    auditor.save(seen, directory / auditor.OBSERVED_FILE)
    outcome = Outcome(plan, auditor.audit(seen), load.errors, load.unacknowledged, settled, directory)
    (directory / "report.txt").write_text(outcome.text(limit=1000))
    return outcome


def _wait_terminal(db: Database, timeout: float) -> bool:
    """Every run terminal (checked by the auditor's B); False when the deadline passed first."""
    deadline = time.monotonic() + timeout
    marks = ", ".join(f"'{s}'" for s in TERMINAL)
    while time.monotonic() < deadline:
        if db.query(f"SELECT count(*) AS n FROM runs WHERE status NOT IN ({marks})")[0]["n"] == 0:
            return True
        time.sleep(0.5)
    return False


def _observe(db: Database, plan: Plan, load: Load, injected: list[Fault], process_ends: dict[int, float], audit_log: Path) -> Observed:
    runs = [
        RunRow(
            row["id"], row["function_id"], row["event_id"], row["status"],
            json.loads(row["output"]) if row["output"] is not None else None,
            row["ended_at"] / 1000 if row["ended_at"] is not None else None,
        )
        for row in db.query("SELECT id, function_id, event_id, status, output, ended_at FROM runs")
    ]
    committed = {
        (row["run_id"], row["key"]): json.loads(row["output"]) if row["output"] is not None else None
        for row in db.query("SELECT run_id, key, output FROM steps WHERE kind = 'run' AND status = 'completed'")
    }
    numbers = {row["id"]: json.loads(row["body"]).get("data", {}).get("n") for row in db.query("SELECT id, body FROM events")}
    executions, unreadable = auditlog.read(audit_log)
    counts = [(r["function_id"], r["status"], int(r["n"])) for r in db.query(ops_run_counts.STATUS_COUNTS)]
    return Observed(
        acknowledged=list(load.acknowledged),
        event_numbers=numbers,
        runs=runs,
        committed=committed,
        executions=executions,
        unreadable_lines=unreadable,
        faults=sorted(injected, key=lambda f: f.start),
        process_ends=dict(process_ends),
        lease=plan.lease,
        functions=chaos_app.FUNCTIONS,
        steps=chaos_app.STEPS,
        status_counts=counts,
    )
