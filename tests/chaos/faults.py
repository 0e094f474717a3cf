"""Fault injectors. Each one acts now and returns the ``Fault`` it caused (or None when
there was nothing to hit). They touch only what the chaos run started: its own
processes (by pid), its own SQLite file, its own PostgreSQL database and proxy."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psycopg

from tests.chaos.auditor import Fault
from tests.chaos.cluster import Cluster
from tests.chaos.proxy import CuttingProxy

# Tables every write path of Stepline goes through; a stall on one of them holds up claims,
# heartbeats, checkpoints or finishes (and the API's reads of it).
PG_TABLES = ("queue", "runs", "steps", "events")

_SQLITE_LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print(time.time(), flush=True)
time.sleep(float(sys.argv[2]))
released = time.time()
conn.execute("ROLLBACK")
print(released, flush=True)
"""


# After a stall under CPU load, the load goes on this long: the writes the stall held up
# commit, and the workers act on them, on a busy machine.
LOAD_AFTER_STALL = 1.5


@contextlib.contextmanager
def cpu_load() -> Iterator[None]:
    """One busy process per core while the block runs (stopped by pid): the workers get
    their turns late, as on a busy machine, where a claim that committed as a stall lifted
    once left a worker starting steps on a lease nearly spent."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def loaded(stall: Callable[[], Fault | None]) -> Fault | None:
    """``stall`` with every core busy during it and ``LOAD_AFTER_STALL`` seconds after."""
    with cpu_load():
        fault = stall()
        time.sleep(LOAD_AFTER_STALL)
    if fault is None:
        return None
    return dataclasses.replace(fault, target=f"{fault.target}, under CPU load")


def kill(cluster: Cluster, rng: random.Random) -> Fault | None:
    """SIGKILL one of the cluster's processes (a worker or an API server) and start another in its place."""
    slot = rng.choice(cluster.slots)
    killed = cluster.kill(slot)
    cluster.spawn(slot)
    if killed is None:
        return None
    pid, at = killed
    return Fault("kill", slot.name, at, at, pid=pid)


def sqlite_stall(path: str, seconds: float) -> Fault | None:
    """Another process holds SQLite's write lock (``BEGIN EXCLUSIVE``) for ``seconds``."""
    locker = subprocess.run(
        [sys.executable, "-c", _SQLITE_LOCKER, path, str(seconds)], capture_output=True, text=True, timeout=seconds + 90
    )
    times = locker.stdout.split()
    if locker.returncode != 0 or len(times) != 2:
        return None  # could not take the lock within a minute: nothing was stalled by us
    return Fault("stall", f"sqlite BEGIN EXCLUSIVE {seconds:.1f} s", float(times[0]), float(times[1]))


def pg_lock_stall(direct_url: str, table: str, seconds: float) -> Fault | None:
    """``LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE`` in an open transaction for ``seconds``."""
    with psycopg.connect(direct_url, application_name="chaos-locker") as conn:
        conn.execute("SET lock_timeout = '20s'")
        try:
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        except psycopg.errors.LockNotAvailable:
            return None
        locked = time.time()
        time.sleep(seconds)  # the stall itself: the lock is held this long
        released = time.time()
        conn.rollback()
    return Fault("stall", f"LOCK TABLE {table} {seconds:.1f} s", locked, released)


def pg_terminate(direct_url: str, dbname: str) -> Fault | None:
    """``pg_terminate_backend`` on Stepline's backends of the test database, and no other."""
    with psycopg.connect(direct_url, autocommit=True, application_name="chaos-terminator") as conn:
        started = time.time()
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'stepline' AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
        ended = time.time()
    if not rows:
        return None
    return Fault("terminate", f"{len(rows)} backends of {dbname}", started, ended)


def proxy_cut(proxy: CuttingProxy) -> Fault:
    """Cut every connection through the proxy right after a client sent something."""
    at = proxy.cut_mid_write()
    return Fault("cut", "every proxied connection", at, at)
