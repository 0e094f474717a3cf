"""A worker's loops while the database refuses writes: one line when the outage begins,
reminders at most every 30 s, one line when it ends. They used to log a traceback on every
retry (every half second on SQLite) for as long as a disk stayed full."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import stepline
from stepline import errors, outage
from tests.helpers import runs_for_event, wait_run


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_claims_failing_on_a_read_only_database_are_logged_once_then_once_recovered(
    make_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = stepline.App("outage")

    @app.function(id="later", trigger=stepline.TriggerEvent("o/later"))
    async def later(ctx: stepline.Context) -> str:
        return "done"

    engine = await make_engine(app)
    event_id = await engine.send({"name": "o/later", "ts": int(time.time() * 1000) + 400})  # queued, due in 0.4 s
    # The writer's connection refuses writes from now on: the claim of the run, once due, fails.
    await engine.store.db.write(lambda conn: conn.execute("PRAGMA query_only = 1"))
    caplog.set_level(logging.WARNING, logger="stepline")
    await asyncio.sleep(2.0)  # several claims, every half second
    failed = [r for r in caplog.records if "claiming runs failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in caplog.records]
    assert failed[0].exc_info is None and "readonly" in failed[0].getMessage().replace(" ", "").lower()
    db = engine.store.db
    with db._commit_lock:  # a write cannot lift it: its BEGIN IMMEDIATE is refused
        db._writer_conn.execute("PRAGMA query_only = 0")
    (run,) = await runs_for_event(engine, event_id)
    await wait_run(engine, run["id"], "completed", timeout=10)
    await asyncio.sleep(outage.SETTLE + 0.5)  # an outage ends with a success that long after the last failure
    again = [r for r in caplog.records if "claiming runs works again" in r.getMessage()]
    assert len(again) == 1, [r.getMessage() for r in caplog.records]
    # The store's own line about failed commits, once too (not once per retry).
    assert len([r for r in caplog.records if r.getMessage().startswith("writing to the database failed")]) == 1


def test_an_outage_is_reminded_of_every_30_s_and_a_bug_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(outage.time, "monotonic", lambda: now[0])
    log = logging.getLogger("stepline.test-outage")
    caplog.set_level(logging.WARNING, logger=log.name)
    told = outage.OutageLog(log, "the chore")
    for _ in range(60):  # 60 failures half a second apart: 30 s
        told.failed(errors.StoreError("the database could not be written (disk full)"))
        now[0] += 0.5
    told.failed(errors.StoreError("disk full"))
    told.worked()  # a success between failures (a small write on a full disk) ends nothing
    now[0] += outage.SETTLE
    told.worked()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "the chore failed: the database could not be written (disk full); retrying"
    assert lines[1].startswith("the chore has failed for 30 s (61 attempts)")
    assert lines[2] == f"the chore works again after {30 + outage.SETTLE:.0f} s (61 failed attempts)"
    assert len(lines) == 3
    caplog.clear()
    told.failed(ValueError("a bug"))
    assert caplog.records[0].exc_info is not None and caplog.records[0].levelno == logging.ERROR
