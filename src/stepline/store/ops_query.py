"""Read queries behind the server's API and dashboard: functions with live counts,
events with the runs they started (or why none), and a run's live state for streams."""

from __future__ import annotations

from typing import Any

from stepline import expressions, jsonutil
from stepline.store import db, ops_functions, ops_read
from stepline.store.records import (
    TERMINAL_SQL,
    UNFINISHED,
    EventListItem,
    EventView,
    FunctionOverview,
    RunLive,
    RunSummary,
)

HOUR_MS = 3600 * 1000
BATCHED = "batched into run "  # the skip reason ops_admission records for a batch's later events
_LIVE = UNFINISHED


def functions_overview_txn(conn: db.Conn, now: int) -> list[FunctionOverview]:
    """Every registered function with its config, triggers and live run counts."""
    counts: dict[str, dict[str, int]] = {}
    for r in conn.all(
        f"SELECT function_id, status, COUNT(*) AS n FROM runs WHERE status IN ({', '.join('?' for _ in _LIVE)}) "
        "GROUP BY function_id, status",
        _LIVE,
    ):
        counts.setdefault(r["function_id"], {})[r["status"]] = int(r["n"])
    recent: dict[str, dict[str, int]] = {}
    for r in conn.all(
        f"SELECT function_id, status, COUNT(*) AS n FROM runs WHERE status IN {TERMINAL_SQL} "
        "AND ended_at >= ? GROUP BY function_id, status",
        (now - HOUR_MS,),
    ):
        recent.setdefault(r["function_id"], {})[r["status"]] = int(r["n"])
    out: list[FunctionOverview] = []
    paused = ops_functions.pauses_txn(conn)
    for row in conn.all("SELECT * FROM functions ORDER BY id"):
        fn_id = row["id"]
        live, last_hour = counts.get(fn_id, {}), recent.get(fn_id, {})
        config = jsonutil.loads(row["config"])
        out.append(
            {
                "id": fn_id,
                "app_id": row["app_id"],
                "triggers": config.get("triggers", []) if isinstance(config, dict) else [],
                "config": config,
                "updated_at": ops_read.iso(row["updated_at"]),
                "paused": paused.get(fn_id),  # {mode, reason, paused_at} while paused
                "archived": bool(isinstance(config, dict) and (config.get("inngest") or {}).get("archived")),
                "counts": {
                    "queued": live.get("queued", 0),
                    "running": live.get("running", 0),
                    "sleeping": live.get("sleeping", 0),
                    "waiting": live.get("waiting", 0),
                    "failed_last_hour": last_hour.get("failed", 0),
                    "completed_last_hour": last_hour.get("completed", 0),
                    "cancelled_last_hour": last_hour.get("cancelled", 0),
                },
            }
        )
    return out


def _reason_text(function_id: str, reason: Any) -> dict[str, Any]:
    """One skipped function as ``{function_id, reason, detail}``; reasons may be a word
    (``idempotent``, ``rate_limited``, ``debounced``, ...) or an object with more detail."""
    if isinstance(reason, dict):
        return {"function_id": function_id, "reason": str(reason.get("reason", "skipped")), "detail": reason}
    return {"function_id": function_id, "reason": str(reason), "detail": None}


def event_detail_txn(conn: db.Conn, event_id: str) -> EventView:
    """An event, the runs it started, and for every trigger that did not start a run, why."""
    event = ops_read.get_event_txn(conn, event_id)
    skipped = dict(event.get("skipped") or {})
    # An event that joined a batch is in that batch's run: show the run, not a skip.
    for fn_id, reason in list(skipped.items()):
        if isinstance(reason, str) and reason.startswith(BATCHED):
            row = conn.one("SELECT * FROM runs WHERE id = ?", (reason[len(BATCHED):].strip(),))
            if row is not None:
                event["runs"].append(ops_read.run_dict(row))
                del skipped[fn_id]
    started = {r["function_id"] for r in event["runs"]}
    outcomes = [_reason_text(fn_id, reason) for fn_id, reason in sorted(skipped.items())]
    known = started | set(skipped)
    # Triggers on this name that neither started a run nor recorded a skip: their `if` was false.
    body = event["body"] if isinstance(event["body"], dict) else {}
    for t in conn.all(
        "SELECT function_id, expression FROM triggers WHERE event_name = ? ORDER BY function_id, position",
        (event["name"],),
    ):
        if t["function_id"] in known:
            continue
        known.add(t["function_id"])
        matched = t["expression"] is None or _safe_match(t["expression"], body)
        outcomes.append(
            {
                "function_id": t["function_id"],
                "reason": "condition_false" if not matched else "not_started",
                "detail": {"if": t["expression"]},
            }
        )
    event["skipped_functions"] = outcomes
    if event["runs"]:
        event["why_no_runs"] = None
    elif event["resumed_runs"]:
        event["why_no_runs"] = f"it resumed {len(event['resumed_runs'])} waiting run(s) ({', '.join(event['resumed_runs'])}) and started none"
    elif outcomes:
        event["why_no_runs"] = "; ".join(f"{o['function_id']}: {o['reason']}" for o in outcomes)
    elif event["name"].startswith("stepline/") or event["name"].startswith("inngest/"):
        event["why_no_runs"] = "an internal event (invoke, cron or failure hook); it starts runs directly"
    else:
        event["why_no_runs"] = f"no registered function has a trigger on {event['name']!r}"
    return event


def _safe_match(expression: str, body: dict[str, Any]) -> bool:
    try:
        return bool(expressions.matches(expression, {"event": body}))
    except Exception:  # noqa: BLE001 - an explanation must never fail the read
        return False


LISTED_BODY_CHARS = 64 * 1024  # the longest event body a listing carries (see list_events_txn)


def list_events_txn(
    conn: db.Conn,
    *,
    name: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    before_id: str | None = None,
    limit: int = 50,
    apps_only: bool = False,
) -> list[EventListItem]:
    """Newest first, each with the runs it started (id, function, status). A body longer than
    ``LISTED_BODY_CHARS`` is left out (``body`` null, ``body_elided`` true): anyone with the
    event key may store events of a megabyte, and a page of them would cost the server, and
    the dashboard, hundreds of megabytes; the event's own read has it whole. ``apps_only``
    leaves out the engine's own events (``stepline/...``, ``inngest/...``), as Inngest's list does."""
    clause, params = ops_read.page_filters({"name": name}, "received_at", since_ms, until_ms, before_id)
    if apps_only:
        clause = f"{clause} {'AND' if clause else 'WHERE'} name NOT LIKE 'stepline/%' AND name NOT LIKE 'inngest/%'"
    rows = conn.all(
        "SELECT id, name, user_id, received_at, outcome, "
        f"CASE WHEN length(body) > ? THEN 'null' ELSE body END AS body, length(body) > ? AS elided FROM events {clause} "
        "ORDER BY id DESC LIMIT ?",
        (LISTED_BODY_CHARS, LISTED_BODY_CHARS, *params, limit),
    )
    events: list[EventListItem] = [
        {**ops_read.event_dict(r), "body_elided": bool(r["elided"]), "runs": [], "run_ids": []} for r in rows
    ]
    if events:
        marks = ", ".join("?" for _ in events)
        started: dict[str, list[RunSummary]] = {}
        for r in conn.all(
            f"SELECT event_id, id, function_id, status FROM runs WHERE event_id IN ({marks}) ORDER BY id",
            [e["id"] for e in events],
        ):
            started.setdefault(r["event_id"], []).append(
                {"id": r["id"], "function_id": r["function_id"], "status": r["status"]}
            )
        for e in events:
            e["runs"] = started.get(e["id"], [])
            e["run_ids"] = [r["id"] for r in e["runs"]]
    return events


def run_live_txn(conn: db.Conn, run_id: str, after_seq: int) -> RunLive | None:
    """What a stream sends: the run's status and progress, and a page of the messages after
    ``after_seq`` (``more_messages`` says whether others follow it)."""
    row = conn.one("SELECT * FROM runs WHERE id = ?", (run_id,))
    if row is None:
        return None
    messages, more = ops_read.run_messages_page_txn(conn, run_id, after_seq)
    return {**ops_read.run_dict(row), "messages": messages, "more_messages": more}
