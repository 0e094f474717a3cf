"""A run whose step ends every worker that takes it (it exhausts memory, the process exits)
is failed after ``STEPLINE_MAX_LEASE_LOSSES`` losses in a row, instead of crash-looping every
worker for ever; a run that crashes workers but saves steps in between goes on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import runs_for_event

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSSES = 3


def _worker(db_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "PYTHONPATH": REPO, "STEPLINE_LEASE": "1", "STEPLINE_POLL_INTERVAL": "0.05",
        "STEPLINE_LOG_LEVEL": "WARNING", "STEPLINE_MAX_LEASE_LOSSES": str(LOSSES),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.apps_crash_loop:app", "--db", db_url],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def _run_with_workers(sender: Any, db_url: str, run_id: str, most: int) -> tuple[dict[str, Any], int]:
    """Start a worker, and another each time one dies, until the run ends: (run, deaths)."""
    deaths = 0
    worker = _worker(db_url)
    try:
        for _ in range(600):
            run = await sender.get_run(run_id)
            if run["status"] in ("completed", "failed", "cancelled"):
                return run, deaths
            if worker.poll() is not None:
                assert worker.returncode == 17, worker.returncode  # died in the step, not of something else
                deaths += 1
                assert deaths <= most, f"{deaths} workers died for run {run_id}"
                worker = _worker(db_url)
            await asyncio.sleep(0.1)
        raise AssertionError(f"run {run_id} did not end: {await sender.get_run(run_id)}")
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(10)


@pytest.mark.timeout(120)
async def test_a_step_that_ends_every_worker_fails_its_run_after_the_losses_in_a_row(make_engine: Any, db_url: str) -> None:
    from tests.apps_crash_loop import app

    sender = await make_engine(app, run_worker=False)
    event_id = await sender.send({"name": "loop/poison"})
    (run,) = await runs_for_event(sender, event_id)
    ended, deaths = await _run_with_workers(sender, db_url, run["id"], most=LOSSES + 1)
    assert ended["status"] == "failed", ended
    assert deaths == LOSSES  # the first worker's claim, then one per loss until the last
    assert ended["error"]["name"] == "WorkerLost"
    assert f"lost its worker {LOSSES} times in a row without saving a step" in ended["error"]["message"]
    assert "STEPLINE_MAX_LEASE_LOSSES" in ended["error"]["message"]
    assert [s["id"] for s in ended["steps"]] == ["fine"]  # what it saved stays


@pytest.mark.timeout(120)
async def test_crashes_with_steps_saved_between_them_never_fail_the_run(make_engine: Any, db_url: str, tmp_path: Any) -> None:
    """Five crashes, more than the limit, but each after the step before it was saved: a
    rolling deploy's kills, not a crash loop."""
    from tests.apps_crash_loop import app

    sender = await make_engine(app, run_worker=False)
    event_id = await sender.send({"name": "loop/bumpy", "data": {"dir": str(tmp_path)}})
    (run,) = await runs_for_event(sender, event_id)
    ended, deaths = await _run_with_workers(sender, db_url, run["id"], most=5)
    assert ended["status"] == "completed", ended["error"]
    assert deaths == 5
    assert len(ended["output"]) == 5
