"""A worker process SIGKILLed between a call's reservation and its settle: the reservation
stops counting once the dead worker's lease expires, and another worker finishes the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from stepline.testing import FakeProvider, Reply
from tests.helpers import eventually, runs_for_event, wait_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_worker(db_url: str, fake: FakeProvider) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "PYTHONPATH": REPO, "STEPLINE_LEASE": "1.5", "STEPLINE_POLL_INTERVAL": "0.05",
        "STEPLINE_LOG_LEVEL": "WARNING", "BUDGET_FAKE_URL": fake.openai_base_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.apps_budget_crash:app", "--db", db_url],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


@pytest.mark.timeout(90)
async def test_a_worker_killed_between_reserve_and_settle_leaves_no_reservation(make_engine, db_url, fake: FakeProvider) -> None:
    from tests.apps_budget_crash import BUDGET, app

    fake.script(Reply(text="never sent", delay=60))  # the first call is in flight when its worker dies
    sender = await make_engine(app, run_worker=False)
    first = start_worker(db_url, fake)
    second = None
    try:
        run = (await runs_for_event(sender, await sender.send({"name": "budget/ask", "data": {"user_id": "u1"}})))[0]
        await eventually(lambda: len(fake.requests) == 1, timeout=30, what="the first call to be in flight")
        held = await sender.store.budget_key(BUDGET, "u1")
        assert held["reserved_usd"] > 0 and held["reserved_tokens"] > 0
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        async def released() -> bool:
            return (await sender.store.budget_key(BUDGET, "u1"))["reserved_usd"] == 0

        await eventually(released, timeout=30, what="the dead worker's reservation to stop counting")
        second = start_worker(db_url, fake)
        done = await wait_run(sender, run["id"], timeout=45)
        assert done["status"] == "completed" and done["output"] != "never sent"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    state = await sender.store.budget_key(BUDGET, "u1")
    assert (state["calls"], state["reserved_usd"]) == (1, 0)  # the settled call; nothing left reserved
    assert state["spent_usd"] > 0 and len(fake.requests) == 2
