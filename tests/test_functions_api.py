"""The function API (summary, pause and resume, invoke, replay of failed runs), search, and
what a run's and an event's reads add (links, per-step usage, schedule, cancelled runs),
over a real server on both backends."""

from __future__ import annotations

import httpx

import stepline
from stepline.testing import FakeProvider, Reply
from tests import dashboard_apps, server_apps
from tests.helpers import wait_for
from tests.server_live import run_of_event, run_status, serve  # noqa: F401 - fixture


def _send(client: httpx.Client, name: str, data: dict | None = None) -> str:
    return str(client.post("/e/dev", json={"name": name, "data": data or {}}).json()["ids"][0])


def test_pause_resume_and_invoke_over_http(serve) -> None:  # noqa: F811
    server = serve(server_apps.app, dashboard_apps.make_app())
    with httpx.Client(base_url=server.url) as client:
        bad = client.post("/api/v1/functions/child/pause", json={"mode": "hold"})
        assert bad.status_code == 400 and "expected 'queue'" in bad.json()["error"]
        assert client.post("/api/v1/functions/nope/pause", json={}).status_code == 404
        paused = client.post("/api/v1/functions/child/pause", json={"mode": "queue", "reason": "deploy"}).json()
        assert paused["paused"]["mode"] == "queue"
        listed = {f["id"]: f for f in client.get("/api/v1/functions").json()["data"]}
        assert listed["child"]["paused"]["reason"] == "deploy" and listed["parent"]["paused"] is None
        assert 'stepline_function_paused{function="child",mode="queue"} 1' in client.get("/metrics").text

        invoked = client.post("/api/v1/functions/child/invoke", json={"data": {"x": 5}}).json()
        wait_for(lambda: client.get(f"/api/v1/runs/{invoked['run_id']}").json()["wait_reason"] == "function_paused",
                 what="the invoked run held by the pause")
        assert client.post("/api/v1/functions/child/invoke", json={"data": [1]}).status_code == 400
        resumed = client.post("/api/v1/functions/child/resume").json()
        assert resumed == {"function_id": "child", "was_paused": True, "resumed_runs": 1}
        assert "stepline_function_paused{" not in client.get("/metrics").text
        assert run_status(client, invoked["run_id"])["output"] == 10
        # Paused in skip mode, an invoke starts no run, from the API as from Inngest's route.
        client.post("/api/v1/functions/child/pause", json={"mode": "skip"})
        skipped = client.post("/api/v1/functions/child/invoke", json={"data": {"x": 6}})
        assert skipped.status_code == 409 and skipped.json()["skipped"] == "function_paused", skipped.text
        assert skipped.json()["error"].startswith("invoke: function 'child' started no run: it is paused in skip mode")
        direct = client.post("/invoke/child", json={"data": {"x": 7}}).json()
        assert (direct["run_id"], direct["skipped"]) == (None, "function_paused"), direct
        for event_id in (skipped.json()["event_id"], direct["id"]):
            assert client.get(f"/api/v1/events/{event_id}").json()["skipped"] == {"child": "function_paused"}
        client.post("/api/v1/functions/child/resume")

        summary = client.get("/api/v1/functions/child/summary?window=1h").json()
        assert summary["paused"] is None and summary["counts"]["completed"] == 1
        assert summary["recent_runs"][0]["id"] == invoked["run_id"]
        assert summary["p50_ms"] is not None


def test_replay_failed_runs_in_a_window(serve) -> None:  # noqa: F811
    server = serve(dashboard_apps.make_app())
    with httpx.Client(base_url=server.url) as client:
        failed = [run_status(client, run_of_event(client, _send(client, "dash/doomed"))["id"], "failed") for _ in range(2)]
        body = client.post("/api/v1/functions/doomed/replay-failed", json={"since": failed[0]["ended_at"]}).json()
        assert (body["matched"], body["replayed"]) == (2, 2)
        for item in body["runs"]:
            run_status(client, item["id"], "failed")  # the bug is still there
        # Asked again: the originals were replayed already; the replays that failed are replayed once.
        again = client.post("/api/v1/functions/doomed/replay-failed", json={}).json()
        assert (again["matched"], again["replayed"], again["already_replayed"]) == (4, 2, 2)
        assert sorted(r["replay_of"] for r in again["runs"]) == sorted(r["id"] for r in body["runs"])
        assert client.post("/api/v1/functions/doomed/replay-failed", json={"limit": 0}).status_code == 400
        assert client.post("/api/v1/functions/doomed/replay-failed", json={"since": "yesterday"}).status_code == 400
        links = client.get(f"/api/v1/runs/{failed[0]['id']}").json()["links"]
        assert [r["kind"] for r in links["replays"]] == ["replay"]
        assert [r["function_id"] for r in links["failure_handler_runs"]] == ["doomed-failure"]


def test_run_and_event_reads_link_the_runs_around_them(serve, fake: FakeProvider) -> None:  # noqa: F811
    fake.script(Reply(text="hi", prompt_tokens=40, completion_tokens=9, cost=0.000031))
    server = serve(dashboard_apps.make_app(fake.llm()))
    with httpx.Client(base_url=server.url) as client:
        ask = run_status(client, run_of_event(client, _send(client, "dash/ask"))["id"])
        usage = client.get(f"/api/v1/runs/{ask['id']}").json()["step_usage"]
        assert usage["call-model"]["total_tokens"] == 49
        assert usage["call-model"]["cost_usd"] == 0.000031 and usage["call-model"]["model"] == "fake-quick"

        parent = run_status(client, run_of_event(client, _send(client, "dash/parent"))["id"])
        child = client.get(f"/api/v1/runs/{parent['id']}").json()["links"]["children"][0]
        assert child["function_id"] == "child"
        assert client.get(f"/api/v1/runs/{child['id']}").json()["links"]["parent"]["id"] == parent["id"]

        run_status(client, run_of_event(client, _send(client, "dash/paced"))["id"], "completed")
        second = run_of_event(client, _send(client, "dash/paced"))
        schedule = client.get(f"/api/v1/runs/{second['id']}").json()["schedule"]
        assert schedule["due_at"] is not None and schedule["due_at"] > second["created_at"]  # the throttle's slot

        watch = run_status(client, run_of_event(client, _send(client, "dash/watch", {"job": "j9"}))["id"], "sleeping")
        stop = _send(client, "dash/stop", {"job": "j9"})
        run_status(client, watch["id"], "cancelled")
        event = client.get(f"/api/v1/events/{stop}").json()
        assert [r["id"] for r in event["cancelled_runs"]] == [watch["id"]]
        assert event["why_no_runs"] == "it cancelled 1 run(s) (cancel_on) and started none"
        assert client.get(f"/api/v1/runs/{watch['id']}").json()["links"]["cancelled_by_event"] == stop


def test_search_over_http(serve) -> None:  # noqa: F811
    server = serve(server_apps.app)
    with httpx.Client(base_url=server.url) as client:
        event_id = _send(client, "srv/greet", {"user_id": "u-find"})
        run = run_status(client, run_of_event(client, event_id)["id"])
        found = client.get("/api/v1/search", params={"q": run["id"][-8:]}).json()
        assert [r["id"] for r in found["runs"]] == [run["id"]]
        assert client.get("/api/v1/search", params={"q": "u-find"}).json()["users"] == [{"user_id": "u-find", "runs": 1}]
        assert client.get("/api/v1/search", params={"q": " "}).status_code == 400


slashed = stepline.App("slashed")


@slashed.function(id="billing/charge", trigger=stepline.TriggerEvent("slashed/charge"))
async def _charge(ctx: stepline.Context) -> int:
    return int(ctx.event.data.get("x", 0)) * 2


@slashed.function(id="billing/charge/pause", trigger=stepline.TriggerEvent("slashed/other"))
async def _charge_pause(ctx: stepline.Context) -> int:
    return 1


def test_function_ids_with_slashes_are_addressed_percent_encoded(serve) -> None:  # noqa: F811
    """A '/' in a function id is sent as %2F (as the dashboard and CLI encode it): every
    per-function route reaches the function, even one whose id ends like another route."""
    server = serve(slashed)
    with httpx.Client(base_url=server.url) as client:
        one, other = "/api/v1/functions/billing%2Fcharge", "/api/v1/functions/billing%2Fcharge%2Fpause"
        assert client.get(one).json()["id"] == "billing/charge"
        assert client.get(other).json()["id"] == "billing/charge/pause"
        paused = client.post(f"{one}/pause", json={"mode": "skip"})
        assert paused.status_code == 200 and paused.json()["paused"]["mode"] == "skip", paused.text
        listed = {f["id"]: f["paused"] for f in client.get("/api/v1/functions").json()["data"]}
        assert listed["billing/charge"] is not None and listed["billing/charge/pause"] is None
        assert client.get(f"{one}/summary").json()["paused"]["mode"] == "skip"
        assert client.post(f"{one}/resume").json()["was_paused"] is True
        invoked = client.post(f"{one}/invoke", json={"data": {"x": 4}}).json()
        assert run_status(client, invoked["run_id"])["output"] == 8
        assert client.post(f"{one}/replay-failed", json={}).json()["matched"] == 0
        assert client.post(f"{other}/invoke", json={"data": {}}).status_code == 200
        direct = client.post("/invoke/billing%2Fcharge", json={"data": {"x": 1}}).json()
        assert run_status(client, direct["run_id"])["output"] == 2
        # Unencoded, the '/' splits the id: the 404 says how to send it.
        lost = client.post("/api/v1/functions/billing/charge/resume")
        assert lost.status_code == 404 and "%2F" in lost.json()["error"], lost.text
