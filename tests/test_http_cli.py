"""`stepline dev` as a real process: ingest, health, run read-out, the clients and the CLI."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

import stepline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "stepline.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dev_server(db_url: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [*CLI, "dev", "tests.apps_http:app", "--db", db_url, "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(f"stepline dev did not become healthy: {proc.stdout.read().decode() if proc.stdout else ''}")
    yield url
    proc.terminate()
    proc.wait(15)


def cli(url: str, *args: str) -> str:
    result = subprocess.run([*CLI, *args, "--url", url], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_status(url: str, run_id: str, *statuses: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        run = httpx.get(f"{url}/api/v1/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {statuses}")


def first_run_of(url: str, function_id: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = httpx.get(f"{url}/api/v1/runs", params={"function_id": function_id}).json()["data"]
        if runs:
            return runs[0]
        time.sleep(0.05)
    raise AssertionError(f"no run of {function_id}")


def test_ingest_health_and_run_read_out_over_http(dev_server: str) -> None:
    health = httpx.get(f"{dev_server}/health")
    assert health.status_code == 200 and health.json()["worker"] is not None
    reply = httpx.post(f"{dev_server}/e/dev", json={"name": "http/echo", "data": {"text": "hi"}})
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == 200 and len(body["ids"]) == 1
    run = wait_status(dev_server, first_run_of(dev_server, "echo")["id"], "completed")
    assert run["output"] == {"text": "HI"}
    assert run["progress"] == 100 and run["progress_message"] == "echoed"
    assert run["started_at"] and run["ended_at"]
    assert [s["id"] for s in run["steps"]] == ["upper"]


def test_bad_input_gets_a_4xx_that_names_the_problem(dev_server: str) -> None:
    bad_json = httpx.post(f"{dev_server}/e/dev", content=b"{nope")
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    no_name = httpx.post(f"{dev_server}/e/dev", json={"data": {}})
    assert no_name.status_code == 400 and "'name' is required" in no_name.json()["error"]
    huge = httpx.post(f"{dev_server}/e/dev", json={"name": "x", "data": {"b": "a" * (1024 * 1024 + 10)}})
    assert huge.status_code in (400, 413) and "limit" in huge.json()["error"]
    missing = httpx.get(f"{dev_server}/api/v1/runs/NOPE")
    assert missing.status_code == 404 and "no run" in missing.json()["error"]
    # nothing accepted before is lost, and the server still serves
    assert httpx.get(f"{dev_server}/health").status_code == 200


async def test_sync_and_async_clients(dev_server: str) -> None:
    with stepline.Client(dev_server, "dev") as client:
        ids = client.send([{"name": "http/echo", "data": {"text": "a"}}, {"name": "http/echo", "data": {"text": "b"}}])
    assert len(ids) == 2
    async with stepline.AsyncClient(dev_server, "dev") as aclient:
        (one,) = await aclient.send({"name": "http/echo", "data": {"text": "c"}})
    assert one
    with pytest.raises(stepline.EventError, match="'name' is required"):
        stepline.Client(dev_server).send({"data": {}})
    with pytest.raises(stepline.SteplineError, match="cannot reach"):
        stepline.Client(f"http://127.0.0.1:{free_port()}").send({"name": "x"})


def test_cli_send_list_show_cancel_replay(dev_server: str) -> None:
    event_id = cli(dev_server, "send", "http/echo", "--data", '{"text": "cli"}').strip()
    assert len(event_id) == 26
    run = wait_status(dev_server, first_run_of(dev_server, "echo")["id"], "completed")
    listing = cli(dev_server, "runs", "list")
    assert run["id"] in listing and "completed" in listing
    shown = cli(dev_server, "runs", "show", run["id"])
    assert "upper" in shown and '"text": "CLI"' in shown
    replayed = cli(dev_server, "runs", "replay", run["id"]).strip()
    refused = subprocess.run([*CLI, "runs", "rerun", run["id"], "--url", dev_server], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "failed or cancelled" in refused.stderr  # a completed run has no failed step
    assert wait_status(dev_server, replayed, "completed")["output"] == {"text": "CLI"}

    cli(dev_server, "send", "http/nap")
    sleeping = wait_status(dev_server, first_run_of(dev_server, "nap")["id"], "sleeping")
    assert "cancelled" in cli(dev_server, "runs", "cancel", sleeping["id"])
    assert wait_status(dev_server, sleeping["id"], "cancelled")["status"] == "cancelled"


def test_help_lists_every_environment_variable() -> None:
    out = subprocess.run([*CLI, "dev", "--help"], capture_output=True, text=True, timeout=30).stdout
    from stepline.llm.providers import ENV_VARS
    from stepline.settings import VARS

    for var in VARS:
        assert var.name in out
    for name, _ in ENV_VARS:
        assert name in out
    # and the ones read outside the settings (the bundled examples' own aside)
    read = set()
    for path in pathlib.Path(REPO, "src", "stepline").rglob("*.py"):
        if "examples" not in path.parts:
            read |= set(re.findall(r'(?:environ\.get\(|environ\[|getenv\(|envvar=)"(STEPLINE_[A-Z0-9_]+)"', path.read_text()))
    assert "STEPLINE_URL" in read
    assert [name for name in sorted(read) if name not in out] == []


def test_dev_refuses_a_non_loopback_address() -> None:
    out = subprocess.run([*CLI, "dev", "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "loopback only" in out.stderr and "stepline start" in out.stderr


def test_dev_on_a_fresh_checkout_makes_its_database_and_answers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The README's first command: no --db, no ./.stepline/ yet, the bundled example app."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LOG_LEVEL": "WARNING"}
    env.pop("STEPLINE_DB", None)
    proc = subprocess.Popen([*CLI, "dev", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
            raise AssertionError(f"stepline dev did not come up on a fresh checkout: {out[-2000:]}")
        assert (tmp_path / ".stepline" / "stepline.db").exists()
    finally:
        proc.terminate()
        proc.wait(15)
