"""Scale-out on PostgreSQL: real worker processes (and an API server) sharing one database.

- 4 workers run 2,000 multi-step runs; every committed step ran exactly once, and a
  concurrency cap holds across the processes.
- A worker SIGKILLed mid-step: a surviving worker finishes its run once the lease expires.
- A worker SIGTERMed mid-step: it releases the run, which another worker resumes at once.
- PostgreSQL restarted mid-load: workers and two API replicas reconnect by themselves,
  every acknowledged event gets its run (once, though each was sent to both replicas),
  and no run is left stuck.

Step executions are counted with one file each (see ``tests/apps_scaleout.py``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import stepline
from stepline import errors
from stepline.engine import Engine
from stepline.store import open_store
from tests.apps_scaleout import CAP
from tests.chaos.proxy import CuttingProxy
from tests.helpers import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = "tests.apps_scaleout:app"
PIPELINE_STEPS = ("fetch", "transform", "store")
CAPPED_RUNS = 60
EVENT_KEY = "scale-key"
API_TOKEN = "scale-token"


class Cluster:
    """Stepline processes on one database; each logs to its own file under ``logs``."""

    def __init__(self, db_url: str, steps_dir: Path, logs: Path, **env: str) -> None:
        self.db_url = db_url  # what the test reads through
        self.process_url = db_url  # what the processes connect to (a proxy, to break it)
        self.steps_dir = steps_dir
        self.logs = logs
        self.env = {
            **os.environ,
            "PYTHONPATH": REPO,
            "PYTHONUNBUFFERED": "1",
            "STEPLINE_SCALE_DIR": str(steps_dir),
            "STEPLINE_LOG_LEVEL": "WARNING",
            **env,
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _spawn(self, name: str, args: list[str], ready: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stepline.cli", *args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append((proc, log))
        deadline = time.monotonic() + 30
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        return proc

    def worker(self, concurrency: int = 50) -> subprocess.Popen[bytes]:
        return self._spawn(
            "worker", ["worker", APP, "--db", self.process_url, "--concurrency", str(concurrency)], "stepline worker"
        )

    def api(self, port: int) -> str:
        env_args = ["start", "--no-worker", "--db", self.process_url, "--port", str(port)]
        self._spawn("api", env_args, "stepline start")
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """SIGTERM everything still alive (a graceful stop), then make sure it is gone."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for _, log in self.procs)


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    steps_dir, logs = tmp_path / "steps", tmp_path / "logs"
    steps_dir.mkdir()
    logs.mkdir()
    running = Cluster(postgres_url, steps_dir, logs, STEPLINE_LEASE="3")
    yield running
    running.stop()


# --- reading the outcome -----------------------------------------------------------


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def status_counts(url: str, function_id: str) -> dict[str, int]:
    rows = query(url, "SELECT status, count(*) FROM runs WHERE function_id = %s GROUP BY status", (function_id,))
    return {status: count for status, count in rows}


def wait_until(check: Any, *, timeout: float, what: str, cluster: Cluster) -> Any:
    return wait_for(check, timeout=timeout, interval=0.2, what=what, diagnose=cluster.log_tails)


def all_completed(url: str, function_id: str, total: int) -> Any:
    counts = status_counts(url, function_id)
    return counts if counts.get("completed") == total else None


def executions(steps_dir: Path) -> dict[tuple[str, str], list[int]]:
    """(run id, step) → the pids of every process that executed it."""
    found: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for path in steps_dir.iterdir():
        parts = path.name.split(".")
        if len(parts) == 4:
            found[(parts[0], parts[1])].append(int(parts[2]))
    return found


def peak_overlap(steps_dir: Path, keys: set[tuple[str, str]]) -> int:
    """The most step executions among ``keys`` that were in progress at one instant."""
    edges: list[tuple[float, int]] = []
    for path in steps_dir.iterdir():
        parts = path.name.split(".")
        if len(parts) == 4 and (parts[0], parts[1]) in keys:
            began, ended = map(float, path.read_text().split())
            edges += [(began, 1), (ended, -1)]
    peak = current = 0
    for _, delta in sorted(edges):  # an end sorts before a start at the same instant
        current += delta
        peak = max(peak, current)
    return peak


def committed_steps(url: str, function_id: str) -> set[tuple[str, str]]:
    rows = query(
        url,
        "SELECT s.run_id, s.key FROM steps s JOIN runs r ON r.id = s.run_id "
        "WHERE r.function_id = %s AND s.kind = 'run' AND s.status = 'completed'",
        (function_id,),
    )
    return {(run_id, key) for run_id, key in rows}


def assert_nothing_stuck(url: str) -> None:
    assert query(url, "SELECT run_id, lease_owner FROM queue") == [], "runs left in the queue"
    assert query(url, "SELECT id, status FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled')") == []


async def sender(url: str) -> Engine:
    engine = Engine(open_store(url, migrate_now=False))
    await engine.start(run_worker=False)
    return engine


# --- tests -------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_four_workers_run_2000_multistep_runs_each_committed_step_once(cluster: Cluster) -> None:
    total = 2000
    workers = [cluster.worker() for _ in range(4)]
    engine = await sender(cluster.db_url)
    try:
        await engine.send_many([{"name": "scale/capped", "data": {}} for _ in range(CAPPED_RUNS)])
        for start in range(0, total, 100):
            await engine.send_many([{"name": "scale/job", "data": {"n": n}} for n in range(start, start + 100)])
    finally:
        await engine.stop()

    wait_until(lambda: all_completed(cluster.db_url, "scale-pipeline", total), timeout=240, what="2,000 runs", cluster=cluster)
    wait_until(lambda: all_completed(cluster.db_url, "scale-capped", CAPPED_RUNS), timeout=120, what="capped runs", cluster=cluster)

    outputs = query(cluster.db_url, "SELECT output FROM runs WHERE function_id = 'scale-pipeline'")
    results = sorted(json.loads(out)["result"] for (out,) in outputs)
    assert results == sorted(n * 2 + 1 for n in range(total))

    committed = committed_steps(cluster.db_url, "scale-pipeline")
    ran = executions(cluster.steps_dir)
    assert len(committed) == total * len(PIPELINE_STEPS)
    twice = {key: pids for key, pids in ran.items() if len(pids) != 1}
    assert not twice, f"steps that ran more than once: {list(twice.items())[:5]}"
    capped = {key for key in ran if key[1].startswith("work-")}
    assert set(ran) - capped == committed, "every execution belongs to a committed step, and every committed step ran"
    assert {pid for pids in ran.values() for pid in pids} == {w.pid for w in workers}, "all four workers took part"

    # The concurrency cap held across the four processes, and more than one of them ran capped runs.
    assert capped == committed_steps(cluster.db_url, "scale-capped")
    assert len({ran[key][0] for key in capped}) > 1
    assert 1 <= peak_overlap(cluster.steps_dir, capped) <= CAP

    # Sleeps resumed wherever a slot was free: runs moved between processes.
    by_run: dict[str, set[int]] = collections.defaultdict(set)
    for (run_id, _), pids in ran.items():
        by_run[run_id].update(pids)
    assert any(len(pids) > 1 for pids in by_run.values()), "no run ever resumed on another worker"

    cluster.stop()  # SIGTERM: a graceful stop leaves no lease behind
    assert all(w.returncode == 0 for w in workers), cluster.log_tails()
    assert_nothing_stuck(cluster.db_url)


@pytest.mark.timeout(180)
async def test_sigkilled_worker_mid_step_its_run_is_finished_by_another_after_the_lease(cluster: Cluster) -> None:
    workers = [cluster.worker() for _ in range(4)]
    engine = await sender(cluster.db_url)
    try:
        await engine.send({"name": "scale/held", "data": {}})
        await engine.send_many([{"name": "scale/job", "data": {"n": n}} for n in range(200)])
    finally:
        await engine.stop()

    def held_started() -> int | None:
        found = [pids for (_, step), pids in executions(cluster.steps_dir).items() if step == "held"]
        return found[0][0] if found else None

    victim_pid = wait_until(held_started, timeout=60, what="the held step to start", cluster=cluster)
    victim = next(w for w in workers if w.pid == victim_pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    (cluster.steps_dir / "release").touch()

    wait_until(lambda: all_completed(cluster.db_url, "scale-held", 1), timeout=60, what="the held run", cluster=cluster)
    wait_until(lambda: all_completed(cluster.db_url, "scale-pipeline", 200), timeout=120, what="200 runs", cluster=cluster)

    ran = executions(cluster.steps_dir)
    (held_run,) = {run_id for run_id, step in ran if step == "held"}
    assert ran[(held_run, "before")] == [victim_pid], "a committed step never runs again"
    assert len(ran[(held_run, "held")]) == 2, "the step in flight at the kill ran again, once"
    finisher = [pid for pid in ran[(held_run, "held")] if pid != victim_pid]
    assert len(finisher) == 1 and finisher[0] in {w.pid for w in workers} - {victim_pid}
    assert ran[(held_run, "after")] == finisher

    # Pipeline steps: each committed one ran once, except those in flight on the killed worker.
    for key in committed_steps(cluster.db_url, "scale-pipeline"):
        pids = ran[key]
        survivors = [pid for pid in pids if pid != victim_pid]
        assert len(pids) - len(survivors) <= 1 and len(survivors) <= 1 and pids, (key, pids)

    cluster.stop()
    assert_nothing_stuck(cluster.db_url)


@pytest.mark.timeout(300)
def test_a_database_outage_mid_load_loses_no_acknowledged_event_and_strands_no_run(
    cluster: Cluster, unused_tcp_port_factory: Any
) -> None:
    """PostgreSQL goes away for a few seconds under load, as in a restart: every connection
    dies and new ones are refused. A proxy plays it, so the shared server is never touched."""
    # Leases outlast the outage: this test is about reconnecting, not about lease expiry.
    cluster.env.update(STEPLINE_EVENT_KEY=EVENT_KEY, STEPLINE_API_TOKEN=API_TOKEN, STEPLINE_LEASE="30")
    proxy = CuttingProxy("127.0.0.1", 5432).start()
    cluster.process_url = cluster.db_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    workers = [cluster.worker() for _ in range(4)]
    urls = [cluster.api(unused_tcp_port_factory()) for _ in range(2)]
    total, batch = 600, 20
    acknowledged: dict[str, str] = {}
    failures: list[str] = []
    disagreements: list[tuple[list[str], list[str]]] = []
    sent_enough = threading.Event()

    def send_batch(client: stepline.Client, jobs: list[dict[str, Any]]) -> list[str]:
        """Send until acknowledged: the stable ids make a repeat harmless."""
        deadline = time.monotonic() + 90
        while True:
            try:
                return client.send(jobs)
            except errors.SteplineError as exc:
                failures.append(str(exc))
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def send_all() -> None:
        """Each batch goes to both API replicas at once, as a client retrying through a
        load balancer might: de-duplication must keep one event and one run per id."""
        clients = [stepline.Client(url, EVENT_KEY, timeout=60) for url in urls]
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            for start in range(0, total, batch):
                jobs = [{"name": "scale/job", "id": f"job-{n}", "data": {"n": n}} for n in range(start, start + batch)]
                first, second = [f.result() for f in [pool.submit(send_batch, c, jobs) for c in clients]]
                if first != second:
                    disagreements.append((first, second))
                acknowledged.update({job["id"]: event_id for job, event_id in zip(jobs, first)})
                if len(acknowledged) >= total // 3:
                    sent_enough.set()
        for client in clients:
            client.close()
        sent_enough.set()

    thread = threading.Thread(target=send_all)
    thread.start()
    assert sent_enough.wait(120), cluster.log_tails()
    proxy.outage(3.0)
    thread.join(200)
    assert not thread.is_alive()
    assert len(acknowledged) == total, f"{len(acknowledged)} of {total} acknowledged; errors: {failures[:3]}"
    assert not disagreements, f"two replicas acknowledged one event id with different ids: {disagreements[:1]}"

    wait_until(lambda: all_completed(cluster.db_url, "scale-pipeline", total), timeout=200, what="every run", cluster=cluster)

    rows = query(cluster.db_url, "SELECT r.event_id, e.external_id FROM runs r JOIN events e ON e.id = r.event_id")
    runs_per_job = collections.Counter(external_id for _, external_id in rows)
    assert set(runs_per_job) == set(acknowledged), "every acknowledged event has its run"
    assert set(runs_per_job.values()) == {1}, "an event re-sent after an error started no second run"
    assert {event_id for event_id, _ in rows} == set(acknowledged.values())

    ran = executions(cluster.steps_dir)
    assert set(ran) == committed_steps(cluster.db_url, "scale-pipeline")
    twice = {key: pids for key, pids in ran.items() if len(pids) != 1}
    assert not twice, f"steps that ran more than once across the restart: {list(twice.items())[:5]}"

    # Every process survived the restart (none had to be started again), each went
    # through a reconnect of its writer, and the API still answers.
    assert all(w.poll() is None for w in workers), cluster.log_tails()
    for _, log in cluster.procs:
        assert "the writer's connection to PostgreSQL" in log.read_text(errors="replace"), cluster.log_tails()
    with contextlib.closing(httpx.Client(timeout=10)) as http:
        for url in urls:
            assert http.get(f"{url}/health").status_code == 200
    cluster.stop()
    proxy.stop()
    assert_nothing_stuck(cluster.db_url)


@pytest.mark.timeout(180)
async def test_sigterm_releases_the_run_in_flight_to_another_worker_without_waiting_for_the_lease(
    postgres_url: str, tmp_path: Path
) -> None:
    steps_dir, logs = tmp_path / "steps", tmp_path / "logs"
    steps_dir.mkdir()
    logs.mkdir()
    # A lease far longer than this test may take: only a release can move the run on.
    cluster = Cluster(postgres_url, steps_dir, logs, STEPLINE_LEASE="600")
    try:
        workers = [cluster.worker(), cluster.worker()]
        engine = await sender(postgres_url)
        try:
            await engine.send({"name": "scale/held", "data": {}})
        finally:
            await engine.stop()

        def held_by() -> list[int]:
            return next((pids for (_, step), pids in executions(steps_dir).items() if step == "held"), [])

        (victim_pid,) = wait_until(held_by, timeout=60, what="the held step to start", cluster=cluster)
        victim = next(w for w in workers if w.pid == victim_pid)
        victim.send_signal(signal.SIGTERM)  # the step outlasts the 10 s grace: the run is released

        pids = wait_until(lambda: len(held_by()) == 2 and held_by(), timeout=90, what="the released run to resume", cluster=cluster)
        (survivor,) = {w.pid for w in workers} - {victim_pid}
        assert sorted(pids) == sorted([victim_pid, survivor]), "the step cut off at the grace ran again elsewhere"
        (steps_dir / "release").touch()
        wait_until(lambda: all_completed(postgres_url, "scale-held", 1), timeout=60, what="the held run", cluster=cluster)
        assert victim.wait(30) == 0, cluster.log_tails()

        ran = executions(steps_dir)
        (run_id,) = {run for run, _ in ran}
        assert ran[(run_id, "before")] == [victim_pid]
        assert ran[(run_id, "after")] == [survivor]
    finally:
        cluster.stop()
    assert_nothing_stuck(postgres_url)
