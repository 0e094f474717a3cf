"""A real worker process is SIGKILLed mid-run; another finishes it, losing nothing."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import eventually, runs_for_event, wait_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_worker(db_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LEASE": "1.5", "STEPLINE_POLL_INTERVAL": "0.05", "STEPLINE_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.apps_crash:app", "--db", db_url],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.timeout(90)
async def test_sigkill_mid_step_loses_no_committed_step(make_engine, db_url, tmp_path) -> None:
    from tests.apps_crash import app

    log, marker = str(tmp_path / "steps.log"), str(tmp_path / "marker")
    sender = await make_engine(app, run_worker=False)
    first = start_worker(db_url)
    second = None
    try:
        event_id = await sender.send({"name": "crash/go", "data": {"log": log, "marker": marker}})
        run = (await runs_for_event(sender, event_id))[0]

        async def in_flight() -> bool:
            return os.path.exists(log) and "s3" in open(log).read()

        await eventually(in_flight, timeout=30, what="step s3 to start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_worker(db_url)
        done = await wait_run(sender, run["id"], timeout=45)
        assert done["status"] == "completed", done["error"]
        assert done["output"] == ["s1", "s2", "s3", "s4", "s5"]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    lines = [line.split() for line in open(log).read().splitlines()]
    counts = collections.Counter(name for name, _ in lines)
    assert counts == {"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1}  # committed once; in-flight twice
    pids = {name: pid for name, pid in lines}
    assert pids["s1"] == str(first.pid) and pids["s5"] == str(second.pid)
