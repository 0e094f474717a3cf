"""Inngest's REST API (``/v1``) in Inngest's shapes, for apps that call it by hand: an
event, the runs it started, a run, its queued jobs, cancelling one, bulk cancellations,
and an app's functions.

Every answer is ``{"data": ..., "metadata": {...}}``, as on Inngest (but an app's
functions: a bare list, as Inngest answers them). The bearer is the
apps' signing key (hashed, as the SDKs send it) or Stepline's API token.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import errors, expressions
from stepline.inngest import events
from stepline.server import common, responses
from stepline.server.inngest import rest_auth
from stepline.server.responses import JSON, problem
from stepline.store import now_ms
from stepline.store.ops_read import iso
from stepline.store.records import RunStatus, WaitReason

_STATUS = {RunStatus.COMPLETED: "Completed", RunStatus.FAILED: "Failed", RunStatus.CANCELLED: "Cancelled"}  # Inngest's names


def _v1(data: Any) -> JSON:
    return JSON({"data": data, "metadata": {"fetched_at": iso(now_ms()), "cached_until": None}})


def _v1_run(run: Mapping[str, Any], batched: set[str]) -> dict[str, Any]:
    """A run as Inngest's REST API shows it. A run of a ``batchEvents`` batch has a
    ``batch_id``: the run's own id, as a batch here is one run."""
    out: dict[str, Any] = {
        "run_id": run["id"],
        "run_started_at": run["started_at"] or run["created_at"],
        "function_id": run["function_id"],
        "function_version": 1,
        "environment_id": "",
        "event_id": run["event_id"],
        "original_run_id": run.get("replay_of"),
        "status": _STATUS.get(run["status"], "Running"),
        "ended_at": run["ended_at"],
        "output": run["output"] if run["status"] == RunStatus.COMPLETED else run["error"],
    }
    if run["id"] in batched:
        out["batch_id"] = run["id"]
    return out


async def _v1_runs(request: Request, runs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    batched = await common.engine(request).store.batched_runs([str(r["id"]) for r in runs])
    return [_v1_run(r, batched) for r in runs]


def _v1_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as Inngest's REST API shows it: the event as sent (its ``id``, ``ts``,
    ``user``, ``v``) beside the server's ``internal_id`` (the id ``POST /e/{key}`` answered
    and the runs name) and ``received_at``."""
    body = event["body"] if isinstance(event["body"], Mapping) else {}
    sent = events.to_sdk(body)
    out: dict[str, Any] = {
        "internal_id": event["id"],
        "environment_id": "",
        "source": "",
        "source_id": None,
        "received_at": event["received_at"],
        "id": sent["id"] or event["id"],
        "name": sent["name"],
        "data": sent["data"],
        "ts": sent["ts"],
    }
    if body.get("user"):
        out["user"] = sent["user"]
    if sent.get("v") is not None:
        out["v"] = sent["v"]
    return out


@common.route(rest_auth)
async def v1_event(request: Request) -> Response:
    """``GET /v1/events/{id}``: the event, by the id its send answered."""
    return _v1(_v1_event(await common.engine(request).store.get_event(request.path_params["event_id"])))


MAX_LISTED_EVENTS = 51  # Inngest's bound on a page of events
DEFAULT_LISTED_EVENTS = 20


@common.route(rest_auth)
async def v1_events(request: Request) -> Response:
    """``GET /v1/events``: the apps' events, newest first, with Inngest's filters (``name``,
    ``received_after``, ``received_before``), page size (``limit``) and ``cursor`` (the
    ``internal_id`` of the last event of the page before)."""
    q = request.query_params
    # As on Inngest, a larger limit is brought down to the bound rather than refused.
    limit = min(common.parse_limit(q.get("limit"), default=DEFAULT_LISTED_EVENTS, maximum=2**31), MAX_LISTED_EVENTS)
    store = common.engine(request).store
    listed = await store.list_events(
        name=q.get("name") or None,
        since_ms=common.parse_time(q.get("received_after"), "received_after"),
        until_ms=common.parse_time(q.get("received_before"), "received_before"),
        before_id=q.get("cursor") or None,
        limit=limit,
        apps_only=True,
    )
    # A page leaves out bodies past a size; this API shows each event whole.
    whole = [await store.get_event(e["id"]) if e.get("body_elided") else e for e in listed]
    return _v1([_v1_event(e) for e in whole])


@common.route(rest_auth)
async def v1_event_runs(request: Request) -> Response:
    """``GET /v1/events/{id}/runs``: the runs an event started (what apps poll for results).
    An event that joined a batch lists the batch's run, whichever event started it, as on
    Inngest (the event's detail, not the bare row, knows that run)."""
    event = await common.engine(request).store.event_detail(request.path_params["event_id"])
    return _v1(await _v1_runs(request, list(event["runs"])))


@common.route(rest_auth)
async def v1_run(request: Request) -> Response:
    run = await common.engine(request).store.get_run(request.path_params["run_id"])
    return _v1((await _v1_runs(request, [run]))[0])


@common.route(rest_auth)
async def v1_cancel_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    status = await common.engine(request).cancel(run_id, "cancelled through the REST API")
    if status in (RunStatus.COMPLETED, RunStatus.FAILED):
        return problem(409, f"run {run_id} already ended ({status})")
    return _v1({"run_id": run_id, "status": status})


def _job_kind(run: Mapping[str, Any]) -> str:
    """Inngest's name for what a queued item will do to its run."""
    if run["status"] == RunStatus.SLEEPING:
        return "sleep"
    if run["status"] == RunStatus.WAITING:
        return "pause"  # a wait's or invoke's timeout
    if run["wait_reason"] == WaitReason.RETRY_BACKOFF:
        return "edge-error"
    return "start" if run["started_at"] is None else "edge"


@common.route(rest_auth)
async def v1_run_jobs(request: Request) -> Response:
    """``GET /v1/runs/{id}/jobs``: the run's items in the queue, in Inngest's shape (``JobID``,
    ``at``, ``position``, ``kind``, ``attempt``, ``Raw``). A run here has at most one: none
    while it executes, waits without a timeout, or has ended."""
    store = common.engine(request).store
    run = await store.get_run(request.path_params["run_id"])  # 404 for an unknown run
    queued = await store.run_queue(run["id"])
    jobs = []
    if queued is not None and not queued["leased"]:
        jobs.append({"JobID": run["id"], "at": iso(queued["due_at"]), "position": queued["position"],
                     "kind": _job_kind(run), "attempt": run["attempt"], "Raw": None})
    return _v1(jobs)


@common.route(rest_auth)
async def v1_run_metadata(request: Request) -> Response:
    """``POST /v1/runs/{id}/metadata``: Inngest attaches the metadata to the run's trace spans,
    which Stepline does not keep; refused as Inngest's own dev server refuses it unless
    enabled (403), saying so."""
    return problem(
        403, "run metadata is not kept: Stepline stores no trace spans to attach it to; put what a run should "
        "show in its output, or publish it to the run's stream (step.realtime.publish)"
    )


_NIL_UUID = "00000000-0000-0000-0000-000000000000"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how Inngest writes "not archived"


def _uuid_of(kind: str, name: str) -> str:
    """A stable UUID for an id Inngest keeps as a UUID (Stepline keys by name)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"stepline:{kind}:{name}"))


@common.route(rest_auth)
async def v1_app_functions(request: Request) -> Response:
    """``GET /v1/apps/{app}/functions``: an app's functions, as Inngest answers it: a bare list
    (no ``data`` wrapper) of ``{internal_id, env_id, app_id, id, name, config, created_at,
    archived_at}``; ``config`` is what the SDK registered (a native function's: its Stepline
    config). An unknown app has none."""
    app = request.path_params["app"]
    out = []
    for row in await common.engine(request).store.list_functions():
        if row["app_id"] != app:
            continue
        config: Mapping[str, Any] = row["config"]
        meta = config.get("inngest") or {}
        out.append({
            "internal_id": _uuid_of("function", row["id"]),
            "env_id": _NIL_UUID,
            "app_id": _uuid_of("app", app),
            "id": row["id"],
            "name": config.get("name") or row["id"],
            "config": meta.get("raw") or {k: v for k, v in config.items() if k != "inngest"},
            "created_at": row["updated_at"],
            "archived_at": row["updated_at"] if meta.get("archived") else _GO_ZERO_TIME,
        })
    return JSON(out)


CANCELLATION_FIELDS = ("app_id", "function_id", "started_after", "started_before", "if")
FUTURE_SLACK_MS = 5_000  # as on Inngest: started_before may lie at most 5 s ahead


def _text(body: Mapping[str, Any], name: str, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise errors.RequestError(f"{name} is required: {what}")
    return value


def _time(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.RequestError(f"{name}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z, got {value!r}")
    return common.parse_time(value, name)


def _v1_cancellation(row: Mapping[str, Any]) -> dict[str, Any]:
    """A cancellation as Inngest's REST API shows it, with how many runs it cancelled."""
    return {
        "id": row["id"],
        "created_at": iso(row["created_at"]),
        "name": None,
        "environment_id": "",
        "app_id": row["app_id"],
        "function_internal_id": row["function_id"],
        "function_id": row["function_id"],
        "started_after": iso(row["started_after"]),
        "started_before": iso(row["started_before"]),
        **({"if": row["expression"]} if row["expression"] else {}),
        "kind": "bulk_run",
        "cause": "API",
        "queue_name": None,
        "cancelled": row["cancelled"],
    }


@common.route(rest_auth)
async def create_cancellation(request: Request) -> Response:
    """``POST /v1/cancellations``: cancel the unfinished runs of one function started in a
    window, and whose event meets ``if``. It acts at once on every run it covers (Inngest
    stops each when it next runs: the same runs end cancelled)."""
    body = await responses.read_object(
        request, max_bytes=common.body_limit(request), call="cancellation", fields=CANCELLATION_FIELDS
    )
    app_id = _text(body, "app_id", "the id of the app that declares the function")
    function_id = _text(body, "function_id", "the function's id as its SDK declares it")
    after, before = _time(body, "started_after"), _time(body, "started_before")
    if before is None:
        raise errors.RequestError("started_before is required: cancel runs started before this RFC 3339 time")
    engine = common.engine(request)
    if before > engine.store.now_ms() + FUTURE_SLACK_MS:
        raise errors.RequestError("started_before must be in the past (runs not started yet cannot be cancelled in bulk)")
    if after is not None and after > before:
        raise errors.RequestError("started_after must be before started_before")
    condition = body.get("if")
    if condition is not None:
        expressions.check(condition, field="if")
    record, _ = await engine.create_cancellation(
        app_id, function_id, started_after=after, started_before=before, expression=condition,
    )
    return _v1(_v1_cancellation(record))


@common.route(rest_auth)
async def list_cancellations(request: Request) -> Response:
    """``GET /v1/cancellations``: the cancellations made (the newest 1,000), oldest first."""
    return _v1([_v1_cancellation(r) for r in await common.engine(request).store.list_cancellations()])


@common.route(rest_auth)
async def delete_cancellation(request: Request) -> Response:
    """``DELETE /v1/cancellations/{id}``: forget a cancellation; the runs it cancelled stay so."""
    await common.engine(request).store.delete_cancellation(request.path_params["cancellation_id"])
    return _v1({"ok": True})


def routes() -> list[Route]:
    return [
        Route("/v1/events", v1_events, methods=["GET"]),
        Route("/v1/events/{event_id}", v1_event, methods=["GET"]),
        Route("/v1/events/{event_id}/runs", v1_event_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", v1_run, methods=["GET"]),
        Route("/v1/runs/{run_id}", v1_cancel_run, methods=["DELETE"]),
        Route("/v1/runs/{run_id}/jobs", v1_run_jobs, methods=["GET"]),
        Route("/v1/runs/{run_id}/metadata", v1_run_metadata, methods=["POST"]),
        Route("/v1/apps/{app}/functions", v1_app_functions, methods=["GET"]),
        Route("/v1/cancellations", create_cancellation, methods=["POST"]),
        Route("/v1/cancellations", list_cancellations, methods=["GET"]),
        Route("/v1/cancellations/{cancellation_id}", delete_cancellation, methods=["DELETE"]),
    ]
