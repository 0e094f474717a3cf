"""For ``stepline dev``: a log line for each run as it ends (completed, failed with its
error, cancelled with the reason), whichever process ended it, beside the engine's lines
about retries."""

from __future__ import annotations

import asyncio
import logging

from stepline import cli_show
from stepline.store import RunView, Store
from stepline.store.records import RunStatus

log = logging.getLogger("stepline.runs")


def end_line(run: RunView) -> str:
    took = f" in {cli_show.duration(run['duration_ms'])}" if run.get("duration_ms") is not None else ""
    line = f"run {run['id']} {run['function_id']} {run['status']}{took}"
    if run["status"] != RunStatus.COMPLETED and run.get("error"):
        line += f": {cli_show.error_text(run['error'])}"
    return line


async def follow_run_ends(store: Store, interval: float = 0.25) -> None:
    """Log the runs that end from now on, in the order they end, until cancelled."""
    after: tuple[int, str] = (store.now_ms(), "")
    while True:
        try:
            for run in await store.runs_ended_since(after):
                (log.warning if run["status"] == "failed" else log.info)(end_line(run))
                after = (int(run["ended_ms"]), str(run["id"]))
        except Exception:  # noqa: BLE001 - a lost database is reported by the engine; keep following
            log.debug("reading ended runs failed", exc_info=True)
        await asyncio.sleep(interval)
