"""What every benchmark shares: databases per run, timing, statistics, result lines.

Each workload runs in its own process and prints one JSON line prefixed with
``RESULT `` so ``bench.run_all`` can collect figures from the project's
environment and from the peers' environment alike. This module imports nothing
from Stepline, so the peers' benchmarks can use it too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

PG_ADMIN_URL = os.environ.get("STEPLINE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN_URL.rsplit("/", 1)[0]
RESULT_PREFIX = "RESULT "


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    return p


def emit(workload: str, system: str, backend: str, **figures: Any) -> None:
    """Print one result line for ``run_all`` (and a readable one for a person)."""
    record = {"workload": workload, "system": system, "backend": backend, **figures}
    print(RESULT_PREFIX + json.dumps(record), flush=True)


# --- databases ---------------------------------------------------------------------


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@contextmanager
def fresh_postgres(prefix: str = "bench") -> Iterator[str]:
    """A new, empty PostgreSQL database for one benchmark, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield f"{PG_BASE}/{name}"
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def fresh_sqlite(prefix: str = "bench") -> Iterator[str]:
    """A path for a new SQLite database in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as directory:
        yield os.path.join(directory, "bench.db")


@contextmanager
def fresh_db(backend: str, prefix: str = "bench") -> Iterator[str]:
    with (fresh_postgres(prefix) if backend == "postgres" else fresh_sqlite(prefix)) as url:
        yield url


# --- measuring ---------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process, all threads, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mib(pid: int | None = None) -> float:
    """Resident set size now, from /proc (MiB)."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def median_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over repeated trials (non-numeric fields from the first)."""
    out = dict(records[0])
    for key, value in records[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = median([r[key] for r in records])
    out["trials"] = len(records)
    return out


class Clock:
    """Wall and CPU time between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = cpu_seconds()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.t0, cpu_seconds() - self.c0


# --- the fake model ----------------------------------------------------------------


@contextmanager
def fake_model(delay: float = 1.0) -> Iterator[str]:
    """Start ``bench.fake_model`` in its own process; yields its base URL."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_model", "--delay", str(delay)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the fake model did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def model_stats(base_url: str, reset: bool = False) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/{'reset' if reset else 'stats'}", timeout=10) as reply:
        return dict(json.loads(reply.read()))
