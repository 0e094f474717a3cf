"""SDK functions live in the store: a separate `stepline worker` process runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.inngest_apps.harness import NodeApp, stepline_server
from tests.test_inngest_production import EVENT_KEY, KEY, cloud_env


async def test_worker_process_runs_functions_synced_through_the_server(db_url: str) -> None:
    async with stepline_server(db_url, dev=False, signing_key=KEY, event_key=EVENT_KEY, run_worker=False) as server:
        assert server.engine.worker is None  # this process only serves the API
        with NodeApp(cloud_env(server, KEY)) as node:
            await server.sync(node.url)
            env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
            env.update({"STEPLINE_DB": db_url, "STEPLINE_INNGEST_SIGNING_KEY": KEY, "STEPLINE_POLL_INTERVAL": "0.05",
                        "STEPLINE_LOG_LEVEL": "WARNING"})
            worker = subprocess.Popen([sys.executable, "-m", "stepline.cli", "worker"], env=env)  # noqa: ASYNC220 - started once, not awaited
            try:
                event_id = await server.send("ts/sleep", key=EVENT_KEY)
                run = await server.finished((await server.run_for(event_id, "ts-app-sleeper"))["id"])
                assert run["status"] == "completed" and run["output"] == "1-1", run
            finally:
                worker.terminate()
                worker.wait(10)


async def test_run_survives_a_server_restart_mid_sleep(db_url: str) -> None:
    """The SDK functions and the run's memoized steps come back from the store after a restart."""
    async with stepline_server(db_url) as first:
        with NodeApp({"INNGEST_DEV": first.url}) as node:
            await first.sync(node.url)
            event_id = await first.send("ts/sleep")
            run_id = (await first.run_for(event_id, "ts-app-sleeper"))["id"]
            await first.status(run_id, "sleeping")
            async with stepline_server(db_url) as second:  # another process would do the same
                await first.engine.stop(grace=1.0)
                run = await second.finished(run_id)
                assert run["status"] == "completed" and run["output"] == "1-1", run
            counts = (await node.counts())["counts"]
            assert counts["sleep.before"] == 1 and counts["sleep.after"] == 1
