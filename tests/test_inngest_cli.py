"""`stepline dev -u URL` with a real TS SDK app, then `stepline apps` and `stepline send`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inngest_apps.harness import NodeApp, free_port

STEPLINE = [sys.executable, "-m", "stepline.cli"]


def _wait(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[str, NodeApp]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with NodeApp({"INNGEST_DEV": url}) as node:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
        env.update({"STEPLINE_DB": str(tmp_path / "dev.db"), "STEPLINE_PORT": str(port), "STEPLINE_LOG_LEVEL": "WARNING"})
        proc = subprocess.Popen([*STEPLINE, "dev", "-u", node.url, "--no-discovery"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, "stepline dev to answer")
            yield url, node
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _cli(*args: str) -> str:
    done = subprocess.run([*STEPLINE, *args], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_dev_syncs_sdk_url_and_runs_its_functions(dev_server: tuple[str, NodeApp]) -> None:
    url, node = dev_server

    def synced() -> list[dict[str, Any]]:
        apps = httpx.get(f"{url}/api/v1/inngest/apps", timeout=5).json()["data"]
        return [a for a in apps if "ts-app-steps" in a["functions"]]

    _wait(synced, "the -u app to sync")
    listing = _cli("apps", "list", "--url", url)
    assert "ts-app" in listing and "ts-app-steps" in listing and "ok" in listing
    event_id = _cli("send", "ts/steps", "--data", '{"name": "cli"}', "--url", url).strip()

    def completed() -> dict[str, Any] | None:
        runs = httpx.get(f"{url}/api/v1/runs", params={"function_id": "ts-app-steps"}, timeout=5).json()["data"]
        return next((r for r in runs if r["event_id"] == event_id and r["status"] == "completed"), None)

    run = _wait(completed, "the run to complete")
    shown = _cli("runs", "show", run["id"], "--url", url)
    assert "completed" in shown and "hello CLI" in shown
    step_lines = [line.split()[0] for line in shown.splitlines() if line.startswith("  ") and not line.startswith("    ")]
    assert step_lines == ["first", "second"]  # the SDK's step names, not their hashed ids
    resynced = _cli("apps", "sync", "--url", url)
    assert node.url in resynced and "error:" not in resynced
    removed = _cli("apps", "remove", "ts-app", "--url", url)
    assert removed.startswith("removed ts-app:") and "ts-app-steps" in removed
    assert _cli("apps", "list", "--url", url).startswith("no Inngest SDK apps are known here")  # not a blank line
    # A sync that is refused (here: nobody serves that URL) is shown, and fails the command.
    refused = subprocess.run([*STEPLINE, "apps", "add", "http://127.0.0.1:9/api/inngest", "--url", url],
                             check=False, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "error:" in refused.stdout, refused.stdout + refused.stderr
