"""The JSON API over HTTP against a real server on loopback, on both backends."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis

from stepline.server import openapi
from tests import server_apps
from tests.server_live import LiveServer, run_of_event, run_status, serve, wait_for  # noqa: F401 - fixture

DOC = schemathesis.openapi.from_dict(openapi.document())


def conforms(response: httpx.Response, path: str, method: str = "GET") -> Any:
    """The body, after checking the response against the OpenAPI document."""
    DOC[path][method].validate_response(response)
    return response.json()


def send(client: httpx.Client, name: str, data: dict[str, Any] | None = None) -> str:
    reply = client.post("/e/dev", json={"name": name, "data": data or {}})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["ids"][0])


@pytest.fixture
def api(serve) -> httpx.Client:  # noqa: F811
    server: LiveServer = serve(server_apps.app)
    client = httpx.Client(base_url=server.url, timeout=15)
    client.server = server  # type: ignore[attr-defined]
    return client


def test_runs_list_filters_and_cursor_pagination(api: httpx.Client) -> None:
    run_ids = []
    for i in range(5):
        run_ids.append(run_of_event(api, send(api, "srv/greet", {"name": f"n{i}", "user_id": "alice" if i % 2 else "bob"}))["id"])
    for run_id in run_ids:
        run_status(api, run_id, "completed")
    nap = run_of_event(api, send(api, "srv/nap", {"user_id": "alice"}))
    run_status(api, nap["id"], "sleeping")

    everything = conforms(api.get("/api/v1/runs"), "/api/v1/runs")["data"]
    assert [r["id"] for r in everything] == sorted([*run_ids, nap["id"]], reverse=True)
    assert {r["id"] for r in conforms(api.get("/api/v1/runs", params={"function_id": "greet"}), "/api/v1/runs")["data"]} == set(run_ids)
    assert [r["id"] for r in api.get("/api/v1/runs", params={"status": "sleeping"}).json()["data"]] == [nap["id"]]
    alice = api.get("/api/v1/runs", params={"user_id": "alice"}).json()["data"]
    assert {r["id"] for r in alice} == {run_ids[1], run_ids[3], nap["id"]}
    # Time range: [since, until) on created_at, as ISO or epoch ms.
    third = api.get(f"/api/v1/runs/{run_ids[2]}").json()
    since = api.get("/api/v1/runs", params={"since": third["created_at"], "function_id": "greet"}).json()["data"]
    assert run_ids[2] in {r["id"] for r in since} and run_ids[0] not in {r["id"] for r in since}
    until = api.get("/api/v1/runs", params={"until": third["created_at"], "function_id": "greet"}).json()["data"]
    assert run_ids[2] not in {r["id"] for r in until}
    # Pages of 2 walk the whole list once, newest first.
    seen, cursor = [], None
    while True:
        page = api.get("/api/v1/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in everything]


def test_one_run_has_steps_attempts_durations_and_the_wait_reason(api: httpx.Client) -> None:
    nap = run_status(api, run_of_event(api, send(api, "srv/nap"))["id"], "sleeping")
    body = conforms(api.get(f"/api/v1/runs/{nap['id']}"), "/api/v1/runs/{run_id}")
    assert body["wait_reason"] == "scheduled"
    steps = {s["id"]: s for s in body["steps"]}
    assert steps["before"]["status"] == "completed" and steps["before"]["output"] == "ok"
    assert steps["before"]["attempts"] == 1 and steps["before"]["duration_ms"] is not None
    assert steps["long"]["kind"] == "sleep" and steps["long"]["wake_at"] is not None
    boom = run_status(api, run_of_event(api, send(api, "srv/boom"))["id"], "failed")
    failed = conforms(api.get(f"/api/v1/runs/{boom['id']}"), "/api/v1/runs/{run_id}")
    assert failed["error"]["message"].endswith("boom (simulated failure)")
    explode = failed["steps"][0]
    assert explode["status"] == "failed" and explode["attempt_history"][0]["error"]["message"].startswith("boom")


def test_cancel_replay_and_rerun_from_the_failed_step(api: httpx.Client) -> None:
    nap = run_status(api, run_of_event(api, send(api, "srv/nap"))["id"], "sleeping")
    assert conforms(api.post(f"/api/v1/runs/{nap['id']}/cancel"), "/api/v1/runs/{run_id}/cancel", "POST")["status"] == "cancelled"
    assert api.get(f"/api/v1/runs/{nap['id']}").json()["status"] == "cancelled"

    server_apps.FIXED["flaky"] = False
    failed = run_status(api, run_of_event(api, send(api, "srv/flaky", {"user_id": "u7"}))["id"], "failed")
    replay = conforms(api.post(f"/api/v1/runs/{failed['id']}/replay"), "/api/v1/runs/{run_id}/replay", "POST")
    replayed = run_status(api, replay["id"], "failed")
    assert replayed["replay_of"] == failed["id"] and replayed["event_id"] == failed["event_id"]

    firsts = server_apps.EXECUTIONS.get("flaky.first", 0)
    server_apps.FIXED["flaky"] = True
    rerun = conforms(api.post(f"/api/v1/runs/{failed['id']}/rerun-from-failed-step"),
                     "/api/v1/runs/{run_id}/rerun-from-failed-step", "POST")
    assert rerun["reused_steps"] == ["first"]
    done = run_status(api, rerun["id"], "completed")
    assert done["output"] == {"first": "first-result", "second": "second-result"}
    assert server_apps.EXECUTIONS["flaky.first"] == firsts  # the committed step was not run again
    steps = {s["id"]: s for s in done["steps"]}
    assert steps["first"]["meta"]["reused_from"] == failed["id"]
    assert steps["second"]["status"] == "completed" and steps["second"]["attempts"] == 1

    # A completed run has no failed step to rerun from; unknown runs are 404s.
    refused = api.post(f"/api/v1/runs/{done['id']}/rerun-from-failed-step")
    assert refused.status_code == 409 and "replay" in refused.json()["error"]
    for action in ("cancel", "replay", "rerun-from-failed-step"):
        assert api.post(f"/api/v1/runs/nope/{action}").status_code == 404


def test_bulk_cancel_by_function_and_time_range(api: httpx.Client) -> None:
    naps = [run_status(api, run_of_event(api, send(api, "srv/nap"))["id"], "sleeping") for _ in range(3)]
    greet = run_of_event(api, send(api, "srv/chatty", {"job": "bulk"}))
    # Only the first two naps: created before the third.
    body = conforms(api.post("/api/v1/runs/bulk-cancel", json={"function_id": "nap", "until": naps[2]["created_at"]}),
                    "/api/v1/runs/bulk-cancel", "POST")
    assert body["cancelled"] == 2 and {r["id"] for r in body["runs"]} == {naps[0]["id"], naps[1]["id"]}
    assert api.get(f"/api/v1/runs/{naps[2]['id']}").json()["status"] == "sleeping"
    assert api.get(f"/api/v1/runs/{greet['id']}").json()["status"] != "cancelled"
    again = api.post("/api/v1/runs/bulk-cancel", json={"function_id": "nap", "since": naps[2]["created_at"]}).json()
    assert again["cancelled"] == 1
    assert api.post("/api/v1/runs/bulk-cancel", json={}).status_code == 400
    assert api.post("/api/v1/runs/bulk-cancel", json={"function_id": "nap", "since": "yesterday"}).status_code == 400
    # A misspelt field is refused, not ignored: ignored, the call would cancel every run of
    # the function, whatever the window it meant.
    late = run_status(api, run_of_event(api, send(api, "srv/nap"))["id"], "sleeping")
    typo = api.post("/api/v1/runs/bulk-cancel", json={"function_id": "nap", "sinse": late["created_at"]})
    assert typo.status_code == 400, typo.text
    assert typo.json()["error"] == (
        "bulk-cancel: unknown field(s) ['sinse'] (did you mean 'since'?); it takes function_id, since, until, reason, limit"
    )
    assert api.get(f"/api/v1/runs/{late['id']}").json()["status"] == "sleeping"
    refused = api.post("/api/v1/functions/nap/replay-failed", json={"untill": "2020-01-01T00:00:00Z"})
    assert refused.status_code == 400 and refused.json()["error"].startswith(
        "replay-failed: unknown field(s) ['untill'] (did you mean 'until'?)"), refused.text
    listed = api.post("/api/v1/runs/bulk-cancel", json=["nap"])
    assert listed.status_code == 400 and listed.json()["error"].startswith("bulk-cancel: the request body must be a JSON object")


def test_events_list_and_one_event_with_its_runs_or_why_none(api: httpx.Client) -> None:
    started = send(api, "srv/greet", {"user_id": "u1"})
    skipped = send(api, "srv/picky", {"ok": False})
    orphan = send(api, "nobody/listens")
    detail = conforms(api.get(f"/api/v1/events/{started}"), "/api/v1/events/{event_id}")
    assert [r["function_id"] for r in detail["runs"]] == ["greet"] and detail["why_no_runs"] is None
    picky = conforms(api.get(f"/api/v1/events/{skipped}"), "/api/v1/events/{event_id}")
    assert picky["runs"] == [] and picky["skipped_functions"][0]["reason"] == "condition_false"
    assert "picky" in picky["why_no_runs"]
    assert "no registered function" in api.get(f"/api/v1/events/{orphan}").json()["why_no_runs"]
    listed = conforms(api.get("/api/v1/events"), "/api/v1/events")["data"]
    assert [e["id"] for e in listed] == [orphan, skipped, started]
    assert listed[2]["run_ids"] == [detail["runs"][0]["id"]]
    assert [e["id"] for e in api.get("/api/v1/events", params={"name": "srv/picky"}).json()["data"]] == [skipped]
    assert api.get("/api/v1/events/missing").status_code == 404


def test_events_say_which_flow_control_kept_them_from_starting_a_run(api: httpx.Client) -> None:
    first, second = send(api, "srv/limited"), send(api, "srv/limited")
    assert len(api.get(f"/api/v1/events/{first}").json()["runs"]) == 1
    limited = conforms(api.get(f"/api/v1/events/{second}"), "/api/v1/events/{event_id}")
    assert limited["runs"] == [] and limited["skipped_functions"][0]["reason"] == "rate_limited"
    assert limited["why_no_runs"] == "limited: rate_limited"

    early, late = send(api, "srv/settle"), send(api, "srv/settle")
    debounced = api.get(f"/api/v1/events/{early}").json()
    assert debounced["runs"] == [] and debounced["skipped_functions"][0]["reason"] == "debounced"
    pending = api.get(f"/api/v1/events/{late}").json()["runs"]
    assert len(pending) == 1 and pending[0]["wait_reason"] == "debouncing"

    one, two = send(api, "srv/gather"), send(api, "srv/gather")
    batch_run = run_status(api, api.get(f"/api/v1/events/{one}").json()["runs"][0]["id"], "completed")
    assert batch_run["output"] == 2
    joined = conforms(api.get(f"/api/v1/events/{two}"), "/api/v1/events/{event_id}")
    assert [r["id"] for r in joined["runs"]] == [batch_run["id"]] and joined["why_no_runs"] is None


def test_functions_with_config_and_live_counts(api: httpx.Client) -> None:
    run_status(api, run_of_event(api, send(api, "srv/nap"))["id"], "sleeping")
    run_status(api, run_of_event(api, send(api, "srv/boom"))["id"], "failed")
    run_of_event(api, send(api, "srv/chatty", {"job": "x"}))
    fns = {f["id"]: f for f in conforms(api.get("/api/v1/functions"), "/api/v1/functions")["data"]}
    assert fns["nap"]["counts"]["sleeping"] == 1
    assert fns["boom"]["counts"]["failed_last_hour"] == 1 and fns["boom"]["config"]["retries"] == 0
    assert fns["picky"]["triggers"] == [{"event": "srv/picky", "expression": "event.data.ok == true"}]
    wait_for(lambda: api.get("/api/v1/functions/chatty").json()["counts"]["waiting"] == 1, what="chatty waiting")
    assert api.get("/api/v1/functions/nope").status_code == 404


def test_metrics_json_prometheus_and_health(api: httpx.Client) -> None:
    for i in range(4):
        run_status(api, run_of_event(api, send(api, "srv/greet", {"user_id": f"u{i}"}))["id"], "completed")
    run_status(api, run_of_event(api, send(api, "srv/boom"))["id"], "failed")
    run_status(api, run_of_event(api, send(api, "srv/nap"))["id"], "sleeping")
    from tests.test_dashboard import _seed_usage

    greet = api.get("/api/v1/runs", params={"function_id": "greet", "limit": 1}).json()["data"][0]
    assert api.get(f"/api/v1/runs/{greet['id']}").json()["usage"]["calls"] == 0
    _seed_usage(api.server, first_run_id=greet["id"])  # type: ignore[attr-defined]
    usage = conforms(api.get(f"/api/v1/runs/{greet['id']}"), "/api/v1/runs/{run_id}")["usage"]
    assert usage["calls"] == 1 and usage["total_tokens"] == 2100 and usage["cost_usd"] == pytest.approx(0.0121)
    m = conforms(api.get("/api/v1/metrics", params={"window": "1h", "days": 7}), "/api/v1/metrics")
    fns = {f["function_id"]: f for f in m["functions"]}
    assert fns["greet"]["completed"] == 4 and fns["greet"]["success_rate"] == 1.0
    assert fns["boom"]["success_rate"] == 0.0
    assert fns["greet"]["p50_ms"] is not None and fns["greet"]["p95_ms"] >= fns["greet"]["p50_ms"]
    assert {q["function_id"]: q["scheduled"] for q in m["queue"]}["nap"] == 1
    assert len(m["usage_by_day"]) == 4 and sum(d["total_tokens"] for d in m["usage_by_day"]) == 8420
    users = {u["user_id"]: u for u in m["usage_by_user"]}
    assert users["u1"]["calls"] == 2 and users["u1"]["cost_usd"] == pytest.approx(0.0124)
    assert m["usage_by_user"][0]["user_id"] == "u3"  # the most expensive first
    assert api.get("/api/v1/metrics", params={"window": "forever"}).status_code == 400

    text = api.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    lines = text.text.splitlines()
    assert 'stepline_queue_depth{function="nap",state="scheduled"} 1' in lines
    assert 'stepline_runs{function="greet",status="completed"} 4' in lines
    assert 'stepline_llm_tokens_total{provider="openai",model="gpt-4o-mini",kind="prompt"} 300' in lines
    assert any(line.startswith('stepline_run_duration_seconds{function="greet",quantile="0.95"}') for line in lines)
    health = conforms(api.get("/health"), "/health")
    assert health["status"] == "ok" and health["mode"] == "dev" and health["worker"] is not None


def test_bad_input_gets_a_4xx_with_a_message(api: httpx.Client) -> None:
    cases = [
        (api.post("/e/dev", content=b"{not json"), 400, "not valid JSON"),
        (api.post("/e/dev", content=b""), 400, "empty"),
        (api.post("/e/dev", json={"data": {}}), 400, "'name' is required"),
        (api.post("/e/dev", json={"name": "a", "ts": 10**30}), 400, "ts"),
        (api.post("/e/dev", json={"name": "a\x00b"}), 400, "NUL"),
        (api.post("/e/dev", content=b'{"name":"x","data":{"p":"' + b"a" * (9 << 20) + b'"}}'), 413, "limit"),
        (api.post("/e/dev", json={"name": "x", "data": {"p": "a" * (2 << 20)}}), 400, "event size limit"),
        (api.get("/api/v1/runs/no-such-run"), 404, "no run"),
        (api.get("/api/v1/runs", params={"status": "bogus"}), 400, "status: expected one of queued, running, sleeping"),
        (api.get("/api/v1/runs", params={"limit": "0"}), 400, "limit"),
        (api.get("/api/v1/runs", params={"since": "last tuesday"}), 400, "since"),
        (api.get("/api/v1/runs", params={"function_id": "a\x00"}), 400, "NUL"),
        (api.get("/api/v1/runs/x/stream", headers={"last-event-id": "abc"}), 400, "Last-Event-ID"),
        (api.post("/api/v1/runs/x/token", content=b"[1]"), 400, "object"),
        (api.get("/api/v1/nothing-here"), 404, "openapi"),
        (api.delete("/api/v1/runs"), 405, "DELETE"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert words in response.json()["error"], response.json()


def test_a_method_a_path_does_not_take_gets_405_with_allow_listing_those_it_takes(api: httpx.Client) -> None:
    """RFC 9110: a 405 carries Allow; it was missing, and the message did not say what would do."""
    for method, path, allowed in (
        ("TRACE", "/health", "GET, HEAD"),
        ("PUT", "/api/v1/runs", "GET, HEAD"),
        ("PATCH", "/api/v1/inngest/apps", "DELETE, GET, HEAD, POST"),  # one route for each method
        # /api/v1/runs/{run_id} matched it too: GET read a run named 'bulk-cancel' and Allow listed GET.
        ("PUT", "/api/v1/runs/bulk-cancel", "POST"),
        ("GET", "/api/v1/runs/bulk-cancel", "POST"),
    ):
        refused = api.request(method, path)
        assert refused.status_code == 405 and refused.headers["allow"] == allowed, (path, refused.headers)
        assert f"it takes {allowed}" in refused.json()["error"]


def test_adding_an_app_reads_bodies_up_to_the_api_body_limit_in_force(serve) -> None:  # noqa: F811
    """POST /api/v1/inngest/apps read at most 64 KiB whatever STEPLINE_MAX_API_BODY_BYTES said,
    and its 413 then told the caller to send smaller batches of events."""
    server = serve(server_apps.app, max_api_body_bytes=256 * 1024)
    body = {"url": "http://127.0.0.1:9/api/inngest", "note": "x" * (100 * 1024)}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        added = client.post("/api/v1/inngest/apps", json=body)
        assert added.status_code == 502 and "127.0.0.1:9" in added.text, added.text  # read, and the app is unreachable
        body["note"] = "x" * (300 * 1024)
        refused = client.post("/api/v1/inngest/apps", json=body)
        assert refused.status_code == 413 and "262144 bytes" in refused.json()["error"]
        assert "STEPLINE_MAX_API_BODY_BYTES" in refused.json()["error"]


def test_openapi_document_is_served(api: httpx.Client) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/runs/{run_id}/stream" in doc["paths"]
    assert "/api/v1/runs/{run_id}/rerun-from-failed-step" in doc["paths"]


@pytest.mark.parametrize("digits", ["²", "١٢", "1²"])
def test_numbers_in_other_scripts_are_400s_naming_the_parameter_not_500s(api: httpx.Client, digits: str) -> None:
    """Python calls '²' a digit and ``int`` refuses it: a limit, a number of days or a stream's
    resume point written so failed the request with a 500 and a traceback in the log."""
    run_id = run_of_event(api, api.post("/e/dev", json={"name": "srv/nap"}).json()["ids"][0])["id"]
    for path, params, headers, name in (
        ("/api/v1/runs", {"limit": digits}, {}, "limit"),
        ("/api/v1/events", {"limit": digits}, {}, "limit"),
        ("/api/v1/metrics", {"days": digits}, {}, "days"),
        (f"/api/v1/runs/{run_id}/stream", {"after": digits}, {}, "after"),
        (f"/api/v1/runs/{run_id}/stream", {}, {"last-event-id": b"\xb2"}, "Last-Event-ID"),
    ):
        reply = api.get(path, params=params, headers=headers)
        assert reply.status_code == 400 and name in reply.json()["error"], (path, params, reply.text)
