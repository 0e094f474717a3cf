"""Stopping `stepline start` and `stepline dev` with SIGTERM, as a process manager does:
the worker inside drains (runs reach a step boundary or are released), then the process
exits 0. uvicorn hands the signal back to the process after serving, and SIGTERM's
default action once ended it there, before the engine could stop: its runs stayed leased
until the lease ran out, and the steps in flight ran again elsewhere."""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
import pytest

from tests.cli_server import EVENT_KEY, cli_server  # noqa: F401 - fixture
from tests.server_live import wait_for
from tests.test_handoff import query, run_ids_of


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["start", "dev"])
def test_sigterm_drains_the_worker_and_exits_0(cli_server: Any, db_url: str, tmp_path: Any, mode: str) -> None:  # noqa: F811
    log, marker = str(tmp_path / "steps.log"), str(tmp_path / "marker")
    # A lease far longer than the test: only a release frees the run.
    server = cli_server(mode=mode, app="tests.apps_crash:app", env={"STEPLINE_LEASE": "600"})
    key = EVENT_KEY if mode == "start" else "dev"
    reply = httpx.post(f"{server.url}/e/{key}", json={"name": "crash/go", "data": {"log": log, "marker": marker}}, timeout=10)
    (event_id,) = reply.json()["ids"]
    (run_id,) = run_ids_of(db_url, event_id)
    wait_for(lambda: os.path.exists(log) and "s3" in open(log).read(), timeout=30, what="step s3 to start")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, server.log()[-3000:]
    # s1 and s2 committed; s3 outlasted the grace, so its run was handed back, not left leased.
    ((owner, status),) = query(db_url, "SELECT q.lease_owner, r.status FROM queue q JOIN runs r ON r.id = q.run_id WHERE q.run_id = ?", (run_id,))
    assert owner is None and status in ("queued", "running"), (owner, status)
    done = query(db_url, "SELECT key FROM steps WHERE run_id = ? AND status = 'completed' ORDER BY seq", (run_id,))
    assert len(done) == 2
