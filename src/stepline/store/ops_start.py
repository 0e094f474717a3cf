"""A run's first start, held back when it comes due: by the window it closes (debounce,
batch), by its event's ``ts`` still ahead, by its throttle slot.

Runs of a debounce or a batch, and runs dated ahead, learn only when they fall due that
they may start; what Inngest decides when it creates such a run (its ``timeouts.start``,
its throttle slot, a later event's new window) is decided here, at the claim that would
start the run, inside the claim's transaction (``ops_exec._prepare_claimed_txn``).
"""

from __future__ import annotations

from typing import Any

from stepline import jsonutil
from stepline.store import db, flow, ops_runs
from stepline.store.records import WaitReason


def held_back_txn(conn: db.Conn, run: dict[str, Any], now: int) -> bool:
    """A run about to start for the first time whose start comes later after all: a
    debounced one whose window just closed, kept for its event's ``ts`` if that lies ahead
    (Inngest schedules the debounced event when the period ends, at its ``ts``), or
    waiting for its throttle slot, which debounced and scheduled runs take only now.
    True: the run went back to the queue."""
    window = run["cleanup"] & ops_runs.CLEANUP_WINDOW
    fired = window and conn.one("DELETE FROM debounces WHERE run_id = ? RETURNING run_id", (run["id"],))
    if window:  # the window closes when it falls due: a later event opens a new one, even
        # while this run waits for its throttle slot (a batch it kept open would fill and start it)
        conn.execute("DELETE FROM batches WHERE run_id = ?", (run["id"],))
        if run["start_deadline_at"] is None:  # a window's run gets it now (see ops_runs.create_run_txn)
            _start_deadline_txn(conn, run, now)
    if fired:
        ts = jsonutil.loads(run["body"]).get("ts")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > now:
            _schedule_at_ts_txn(conn, run, min(int(ts), flow.NEVER), now)
            return True
    # Rows of the release before migration 0020 have no marker: a scheduled one says so itself.
    deferred = run["throttle_key"] == flow.SLOT_AT_START or (
        run["throttle_key"] is None and run["wait_reason"] == WaitReason.SCHEDULED
    )
    return deferred and _throttled_txn(conn, run, now)


def _start_deadline_txn(conn: db.Conn, run: dict[str, Any], now: int) -> None:
    """A debounced or batched run's ``timeouts.start`` counts from when its window closes
    (now), as Inngest creates the run only then: from its first event, a start timeout
    shorter than the window cancelled every such run."""
    start = _start_timeout_s(conn, run)
    if start is None:
        return
    run["start_deadline_at"] = now + int(start * 1000)
    conn.execute("UPDATE runs SET start_deadline_at = ? WHERE id = ?", (run["start_deadline_at"], run["id"]))
    conn.execute("UPDATE queue SET start_by = ? WHERE run_id = ?", (run["start_deadline_at"], run["id"]))


def _schedule_at_ts_txn(conn: db.Conn, run: dict[str, Any], ts: int, now: int) -> None:
    """A debounced run whose event is dated ahead waits until then, as any run of such an
    event (``scheduled``; its ``timeouts.start`` counting from ``ts``)."""
    start = _start_timeout_s(conn, run)
    deadline = None if start is None else ts + int(start * 1000)
    conn.execute(
        "UPDATE queue SET lease_owner = NULL, lease_expires_at = NULL, due_at = ?, start_by = ? WHERE run_id = ?",
        (ts, deadline, run["id"]),
    )
    conn.execute(
        "UPDATE runs SET wait_reason = ?, start_deadline_at = ?, updated_at = ? WHERE id = ?",
        (WaitReason.SCHEDULED, deadline, now, run["id"]),
    )


def _start_timeout_s(conn: db.Conn, run: dict[str, Any]) -> float | None:
    """The run's function's ``timeouts.start``, in seconds, if it has one."""
    cfg = ops_runs.function_config_txn(conn, run["function_id"])
    start = None if cfg is None else (cfg.get("timeouts") or {}).get("start")
    return None if start is None else float(start)


def _throttled_txn(conn: db.Conn, run: dict[str, Any], now: int) -> bool:
    """A run its event scheduled for later (or a debounced one) takes its throttle slot now
    that it is due (not when the event came, which would spend today's slots on tomorrow's
    runs, or the slot of an event the window later replaced). True when the slot is later:
    the run goes back to the queue until then."""
    cfg = ops_runs.function_config_txn(conn, run["function_id"])
    slot = None if cfg is None else flow.throttle_start(conn, cfg, jsonutil.loads(run["body"]), now)
    if slot is None or slot.start <= now:
        if run["throttle_key"] is not None:  # its slot is taken (or there is no throttle any more)
            conn.execute("UPDATE queue SET throttle_key = NULL WHERE run_id = ?", (run["id"],))
        return False
    deadline = run["start_deadline_at"]  # one before the slot cancels the run then
    due = slot.start if deadline is None else min(slot.start, int(deadline) + 1)
    conn.execute(
        "UPDATE queue SET lease_owner = NULL, lease_expires_at = NULL, due_at = ?, throttle_key = ?, throttle_slot = ? "
        "WHERE run_id = ?",
        (due, slot.key, slot.start, run["id"]),
    )
    conn.execute("UPDATE runs SET wait_reason = ?, updated_at = ? WHERE id = ?", (WaitReason.THROTTLED, now, run["id"]))
    return True
