"""``GET /api/v1/runs/{id}/stream``: Server-Sent Events of status, progress and published
messages until the run ends, resumable with Last-Event-ID, whichever process runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import server_apps
from tests.server_live import LiveServer, run_of_event, serve  # noqa: F401 - fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse an event stream into {event, id, data} dicts (pings skipped)."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def read_until(events: Iterator[dict[str, Any]], predicate: Any) -> list[dict[str, Any]]:
    out = []
    for event in events:
        out.append(event)
        if predicate(event):
            return out
    raise AssertionError(f"the stream ended first: {out}")


def parts(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["data"]["part"] for e in events if e["event"] == "message"]


def is_waiting(event: dict[str, Any]) -> bool:
    return event["event"] == "status" and event["data"]["status"] == "waiting"


def test_a_stream_carries_status_progress_messages_and_ends_with_the_output(serve) -> None:  # noqa: F811
    server: LiveServer = serve(server_apps.app)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post("/e/dev", json={"name": "srv/chatty", "data": {"job": "s1", "count": 3}}).json()["ids"][0]
        run = run_of_event(client, event_id)
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse(response)
            first = read_until(events, is_waiting)
            assert parts(first) == [0]
            assert first[-1]["data"]["progress"] == 10 and first[-1]["data"]["progress_message"] == "waiting for go"
            client.post("/e/dev", json={"name": "srv/go", "data": {"job": "s1"}}).raise_for_status()
            rest = list(events)
    assert parts(rest) == [1, 2]
    statuses = [e["data"]["progress"] for e in rest if e["event"] == "status"]
    assert statuses[-1] == 100
    assert rest[-1]["event"] == "end"
    assert rest[-1]["data"]["status"] == "completed" and rest[-1]["data"]["output"] == {"parts": 3}
    ids = [int(e["id"]) for e in first + rest]
    assert ids == sorted(ids) and ids[-1] == 3  # ids are the last message's sequence number


def test_a_stream_of_a_finished_run_replays_its_messages_and_ends(serve) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post("/e/dev", json={"name": "srv/greet", "data": {"name": "Ann"}}).json()["ids"][0]
        run = run_of_event(client, event_id)
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream") as response:
            events = list(sse(response))
        tokens = [e["data"]["data"]["token"] for e in events if e["event"] == "message"]
        assert "".join(tokens) == "Hello, Ann"
        assert events[-1]["event"] == "end" and events[-1]["data"]["output"] == {"greeting": "Hello, Ann"}
        # Resuming after the first message gives only the second.
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream", headers={"last-event-id": "1"}) as response:
            resumed = list(sse(response))
        assert [e["data"]["seq"] for e in resumed if e["event"] == "message"] == [2]
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream", params={"after": 2}) as response:
            assert [e["event"] for e in sse(response)] == ["status", "end"]
        assert client.get("/api/v1/runs/nope/stream").status_code == 404


@pytest.fixture
def worker_process(db_url: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LOG_LEVEL": "WARNING", "STEPLINE_POLL_INTERVAL": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.server_apps:app", "--db", db_url],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield proc
    proc.terminate()
    proc.wait(15)


def test_a_dropped_stream_resumes_with_last_event_id_while_another_process_runs_the_run(
    serve, worker_process: subprocess.Popen[bytes]  # noqa: F811
) -> None:
    # The API server executes nothing: the run lives in the worker process, the stream reads the store.
    server = serve(server_apps.app, run_worker=False)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post("/e/dev", json={"name": "srv/chatty", "data": {"job": "p1", "count": 4}}).json()["ids"][0]
        run = run_of_event(client, event_id)
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream") as response:
            before = read_until(sse(response), is_waiting)
        # The connection is gone; the run goes on in the other process.
        assert parts(before) == [0] and before[-1]["id"] == "1"
        client.post("/e/dev", json={"name": "srv/go", "data": {"job": "p1"}}).raise_for_status()
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream", headers={"last-event-id": before[-1]["id"]}) as response:
            after = list(sse(response))
    assert parts(after) == [1, 2, 3]  # nothing seen twice, nothing lost
    assert after[-1]["event"] == "end" and after[-1]["data"]["output"] == {"parts": 4}
    assert worker_process.poll() is None


def test_a_stream_opened_with_a_run_token_ends_when_the_token_expires(serve) -> None:  # noqa: F811
    """A run token was checked when the stream connected, and the stream then ran until the
    run ended, however long past the token's expiry. It now ends with an ``expired`` event
    at the expiry, and reconnecting with that token is refused."""
    from stepline.server import mint_run_token
    from stepline.server.common import ServerOptions

    options = ServerOptions(dev=False, event_key="event-key-1", api_token="api-token-1")
    server: LiveServer = serve(server_apps.app, options=options, signing_key="signing-key-1")
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10.0)) as client:
        event_id = client.post("/e/event-key-1", json={"name": "srv/chatty", "data": {"job": "t1", "count": 3}}).json()["ids"][0]
        admin = httpx.Client(base_url=server.url, headers={"authorization": "Bearer api-token-1"})
        run = run_of_event(admin, event_id)
        token = mint_run_token(run["id"], key="signing-key-1", ttl=3)
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream", params={"token": token}) as response:
            assert response.status_code == 200
            events = sse(response)
            read_until(events, is_waiting)
            rest = list(events)  # the run still waits: only the token's expiry can end this
        assert [e["event"] for e in rest] == ["expired"] and "mint a new one" in rest[0]["data"]["error"]
        again = client.get(f"/api/v1/runs/{run['id']}/stream", params={"token": token})
        assert again.status_code == 401
        assert admin.get(f"/api/v1/runs/{run['id']}").json()["status"] == "waiting"
        admin.close()


def test_a_stream_opened_with_a_dashboard_session_ends_when_the_session_does(serve) -> None:  # noqa: F811
    """A session was checked when the stream connected, and the stream then ran until the
    run ended, however long after a logout (which is to make every copy of the cookie
    worthless) or the session's 12 hours. It now ends with an ``expired`` event once the
    session has ended, and reconnecting with the cookie is refused."""
    from stepline.server.common import ServerOptions

    options = ServerOptions(dev=False, event_key="event-key-1", api_token="api-token-1")
    server: LiveServer = serve(server_apps.app, options=options)
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10.0)) as browser:
        assert browser.post("/login", data={"token": "api-token-1"}).status_code == 303
        event_id = browser.post("/e/event-key-1", json={"name": "srv/chatty", "data": {"job": "s1", "count": 3}}).json()["ids"][0]
        run = run_of_event(browser, event_id)
        with browser.stream("GET", f"/api/v1/runs/{run['id']}/stream") as response:
            assert response.status_code == 200
            events = sse(response)
            read_until(events, is_waiting)
            with httpx.Client(base_url=server.url, cookies=browser.cookies) as other_tab:
                assert other_tab.post("/logout").status_code == 303
            rest = list(events)  # the run still waits: only the session's end can end this
        assert [e["event"] for e in rest] == ["expired"] and "log in again" in rest[0]["data"]["error"]
        assert browser.get(f"/api/v1/runs/{run['id']}/stream").status_code == 401
