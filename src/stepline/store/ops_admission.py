"""Admission of a triggering event into a function: rate limit, singleton, debounce, batching.

``admit_txn`` decides what one matched event does for one function: start a run,
join or reshape a pending run, or start nothing (and say why).
"""

from __future__ import annotations

from typing import Any

from stepline import expressions, jsonutil
from stepline.function import StoredConfig
from stepline.store import db, flow, ops_functions, ops_runs
from stepline.store.records import TERMINAL, HandOff

FUNCTION_PAUSED = "function_paused"  # the skip reason of a function paused in skip mode
BATCHED_INTO = "batched into run "  # an event's outcome when it joined a pending batch run


def admit_txn(
    conn: db.Conn,
    cfg: StoredConfig,
    event_id: str,
    body: dict[str, Any],
    now: int,
    handoff: HandOff | None = None,
    *,
    parent: tuple[str, str] | None = None,
) -> str | None:
    """Route one event into one function; returns why no new run was started, or None.

    ``parent`` (run id, step key): the event is an invoke's, whose run that step waits for.
    It meets the same flow control as any event (Inngest sends invokes as events too)."""
    rate = cfg.get("rate_limit")
    if rate and not flow.gcra_admit(
        conn, flow.scoped_key(cfg, "r", rate.get("key"), body), limit=int(rate["limit"]), period_s=float(rate["period"]), now=now
    ):
        return "rate_limited"
    singleton, debounce, batch = cfg.get("singleton"), cfg.get("debounce"), cfg.get("batch_events")
    if singleton:
        blocked = _singleton_txn(conn, cfg, singleton, body, now)
        if blocked:
            return blocked
    if debounce:
        return _debounce_txn(conn, cfg, debounce, event_id, body, now, parent)
    if batch and parent is None:  # an invoke runs unbatched: a run answers one invoker
        return _batch_txn(conn, cfg, batch, event_id, body, now)
    run_id = ops_runs.create_run_txn(conn, cfg, event_id, body, now, handoff=handoff, parent=parent)
    if run_id is None:
        return "idempotent"
    return _remember_singleton(conn, cfg, body, run_id)


def admit_invoke_txn(
    conn: db.Conn, cfg: StoredConfig, event_id: str, body: dict[str, Any], now: int,
    *, parent: tuple[str, str] | None = None,
) -> str | None:
    """An invoke's event into its function (``step.invoke`` with ``parent``, the run waiting
    for it; ``POST /invoke/{slug}`` and the API's invoke without): it bypasses the triggers,
    not the flow control, as on Inngest, where an invoke is an event scheduled like any
    other. A function paused in skip mode starts no run; in queue mode the run waits. Returns
    why no run started (recorded on the event, as for any event), or None."""
    if ops_functions.pause_mode_txn(conn, cfg["id"]) == "skip":
        reason: str | None = FUNCTION_PAUSED
    else:
        reason = admit_txn(conn, cfg, event_id, body, now, parent=parent)
    if reason is not None and reason != "batched":  # a batch records the run it joined
        note_skip_txn(conn, event_id, cfg["id"], reason)
    return reason


def skipped_invoke_error(cfg: StoredConfig, reason: str, body: dict[str, Any]) -> str:
    """The error (JSON) an invoke fails with at once when its event starts no run: it names the
    function and the rule, rather than leaving the invoker waiting for its timeout."""
    return jsonutil.dumps({"name": "InvokeSkipped", "message": skipped_invoke_message(cfg, reason, body)})


def skipped_invoke_message(cfg: StoredConfig, reason: str, body: dict[str, Any]) -> str:
    """Why an invoke's event started no run, naming the function and the rule."""

    def keyed(expr: str | None, before: str) -> str:
        return f"{before}{expr} = {_key(expr, body)!r}" if expr else ""

    rate, singleton = cfg.get("rate_limit") or {}, cfg.get("singleton") or {}
    why = {
        "rate_limited": f"its rate limit ({rate.get('limit')} per {float(rate.get('period') or 0):g}s"
        f"{keyed(rate.get('key'), ', key ')}) is used up",
        "idempotent": f"its idempotency key ({keyed(cfg.get('idempotency'), '')}) already started a run in the last 24 h",
        "singleton": f"a run{keyed(singleton.get('key'), ' with key ')} is in progress (singleton mode 'skip')",
        "debounced": "a later event replaced this one in its debounce window (the run answers that event's invoke)",
        FUNCTION_PAUSED: "it is paused in skip mode (resume it to start runs; a pause in queue mode holds them instead)",
    }.get(reason, reason)
    return f"invoke: function {cfg['id']!r} started no run: {why}"


def _key(expr: str | None, body: dict[str, Any]) -> str:
    return expressions.key(expr, {"event": body}) if expr else ""


def _lock_row(conn: db.Conn, table: str, function_id: str, key: str, columns: str) -> dict[str, Any] | None:
    """Lock an existing (function_id, key) row and return it (a no-op update takes the lock)."""
    conn.lock(table, function_id, key)  # the row may not exist yet: two servers must not both create it
    return conn.one(
        f"UPDATE {table} SET key = key WHERE function_id = ? AND key = ? RETURNING {columns}", (function_id, key)
    )


# --- singleton -------------------------------------------------------------------


def _singleton_key(rule: dict[str, Any], body: dict[str, Any]) -> str | None:
    """A run's singleton key; None when the key expression gives ``false``: as on Inngest,
    such a run is no singleton (a key can exempt some runs, ``event.data.vip ? false : ...``)."""
    expr = rule.get("key")
    if expr and expressions.evaluate(expr, {"event": body}) is False:
        return None
    return _key(expr, body)


def _singleton_txn(conn: db.Conn, cfg: StoredConfig, rule: dict[str, Any], body: dict[str, Any], now: int) -> str | None:
    key = _singleton_key(rule, body)
    if key is None:
        return None
    row = _lock_row(conn, "singletons", cfg["id"], key, "run_id")
    if row is None:
        return None
    status = conn.scalar("SELECT status FROM runs WHERE id = ?", (row["run_id"],))
    if status is None or status in TERMINAL:
        return None
    if rule.get("mode") == "cancel":
        ops_runs.cancel_run_txn(conn, row["run_id"], now, "replaced by a newer run (singleton mode 'cancel')")
        return None
    return "singleton"


def _remember_singleton(conn: db.Conn, cfg: StoredConfig, body: dict[str, Any], run_id: str | None) -> str | None:
    if run_id is None:
        return "idempotent"
    rule = cfg.get("singleton")
    key = None if not rule else _singleton_key(rule, body)
    if key is not None:
        conn.execute(
            "INSERT INTO singletons (function_id, key, run_id) VALUES (?, ?, ?) "
            "ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id",
            (cfg["id"], key, run_id),
        )
        conn.execute("UPDATE runs SET cleanup = cleanup | ? WHERE id = ?", (ops_runs.CLEANUP_SINGLETON, run_id))
    return None


# --- debounce --------------------------------------------------------------------


def _debounce_txn(
    conn: db.Conn,
    cfg: StoredConfig,
    rule: dict[str, Any],
    event_id: str,
    body: dict[str, Any],
    now: int,
    parent: tuple[str, str] | None = None,
) -> str | None:
    """The run starts ``period`` after the last event, with that event (``timeout`` caps the
    wait); returns why no new run was started, or None. An event whose ``ts`` is older than
    the held one's changes nothing (as on Inngest: it came out of order). An invoke whose
    event is replaced fails at once: the run now answers the invoke of the newer event."""
    key = _key(rule.get("key"), body)
    period_ms = int(float(rule["period"]) * 1000)
    row = _lock_row(conn, "debounces", cfg["id"], key, "run_id, first_at")
    if row is None:
        run_id = ops_runs.create_run_txn(
            conn, cfg, event_id, body, now, due_at=now + period_ms, wait_reason="debouncing", parent=parent
        )
        if run_id is not None:
            conn.execute(
                "INSERT INTO debounces (function_id, key, run_id, first_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id, first_at = excluded.first_at",
                (cfg["id"], key, run_id, now),
            )
        return _remember_singleton(conn, cfg, body, run_id)
    run_id = str(row["run_id"])
    held = conn.one(
        "SELECT r.event_id, r.parent_run_id, r.parent_step_key, e.ts FROM runs r "
        "LEFT JOIN events e ON e.id = r.event_id WHERE r.id = ?",
        (run_id,),
    )
    previous = held["event_id"] if held else None
    if held and held["ts"] is not None and int(body.get("ts") or now) < int(held["ts"]):
        return "debounced"
    due = now + period_ms
    if rule.get("timeout") is not None:
        due = min(due, int(row["first_at"]) + int(float(rule["timeout"]) * 1000))
    ops_runs.set_run_event_txn(conn, run_id, cfg, event_id, body, now, parent=parent)
    conn.execute("UPDATE queue SET due_at = ? WHERE run_id = ? AND lease_owner IS NULL", (due, run_id))
    if previous:
        note_skip_txn(conn, previous, cfg["id"], "debounced")
    if held and held["parent_run_id"] is not None:
        ops_runs.fail_invoke_txn(
            conn, held["parent_run_id"], held["parent_step_key"], skipped_invoke_error(cfg, "debounced", body), now
        )
    if due <= now:
        conn.wake()
    return _remember_singleton(conn, cfg, body, run_id)


# --- batching --------------------------------------------------------------------


def _batch_txn(
    conn: db.Conn, cfg: StoredConfig, rule: dict[str, Any], event_id: str, body: dict[str, Any], now: int
) -> str | None:
    """Events gather into one pending run until ``max_size`` or ``timeout`` after the first.
    An event for which the batch's ``if`` is false (or fails) starts a run of its own at once."""
    if rule.get("if") and not expressions.matches(rule["if"], {"event": body}):
        run_id = ops_runs.create_run_txn(conn, cfg, event_id, body, now, due_at=now)  # in no batch, as on Inngest
        return None if run_id is not None else "idempotent"
    key = _key(rule.get("key"), body)
    max_size = int(rule["max_size"])
    row = _lock_row(conn, "batches", cfg["id"], key, "run_id, size")
    if row is None:
        full = max_size <= 1
        due = now if full else now + int(float(rule["timeout"]) * 1000)
        run_id = ops_runs.create_run_txn(
            conn, cfg, event_id, body, now, due_at=due, wait_reason="queued" if full else "batching",
            batch_event_ids=[event_id],
        )
        if run_id is not None and not full:
            conn.execute(
                "INSERT INTO batches (function_id, key, run_id, size) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id, size = 1",
                (cfg["id"], key, run_id),
            )
        return None if run_id is not None else "idempotent"
    run_id, size = str(row["run_id"]), int(row["size"]) + 1
    batch = jsonutil.loads(conn.scalar("SELECT batch_event_ids FROM runs WHERE id = ?", (run_id,))) or []
    batch.append(event_id)
    conn.execute("UPDATE runs SET batch_event_ids = ?, updated_at = ? WHERE id = ?", (jsonutil.dumps(batch), now, run_id))
    note_skip_txn(conn, event_id, cfg["id"], f"{BATCHED_INTO}{run_id}")
    if size >= max_size:
        conn.execute("DELETE FROM batches WHERE run_id = ?", (run_id,))
        ops_runs.make_due_txn(conn, run_id, now)
    else:
        conn.execute("UPDATE batches SET size = ? WHERE run_id = ?", (size, run_id))
    return "batched"


def note_skip_txn(conn: db.Conn, event_id: str, function_id: str, reason: str | dict[str, Any]) -> None:
    """Record on an event why it started no run of ``function_id``: a word (``idempotent``), or
    an object with ``reason`` and its detail (an expression that failed on the event)."""
    ops_runs.update_outcome_txn(conn, event_id, lambda outcome: outcome.__setitem__(function_id, reason))


def claimed_many_txn(conn: db.Conn, run_ids: list[tuple[str]]) -> None:
    """Runs start: their debounce windows and batches close, so new events start anew."""
    conn.executemany("DELETE FROM debounces WHERE run_id = ?", run_ids)
    conn.executemany("DELETE FROM batches WHERE run_id = ?", run_ids)
