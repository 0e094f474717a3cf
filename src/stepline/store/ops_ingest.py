"""Ingest: store events, de-duplicate them, resolve waits, start the runs they trigger."""

from __future__ import annotations

from typing import Any

from stepline import errors, expressions, ids, jsonutil
from stepline import event as event_mod
from stepline.function import StoredConfig
from stepline.store import db, ops_admission, ops_runs
from stepline.store.records import HandOff

DEDUP_WINDOW_MS = 24 * 3600 * 1000
FUNCTION_PAUSED = ops_admission.FUNCTION_PAUSED


def ingest_txn(
    conn: db.Conn, events: list[event_mod.Event], now: int, handoff: HandOff | None = None
) -> list[str]:
    """Store events, resolve waits and cancel rules, start the runs they trigger.

    An event whose ``id`` was seen on an event of the same name in the last 24 h is not
    stored again; that event's id is returned in its place. An event of another name that
    reuses the ``id`` is an event of its own. Runs that ``handoff`` can take go to its worker.
    """
    if handoff is not None:
        handoff.taken.clear()  # a batch that is run again starts over
        if handoff.check_queue and ops_runs.ready_run_waiting_txn(conn, handoff.function_ids, now):
            handoff = None  # older ready runs go first, through the queue
    out: list[str] = []
    names = {ev.name for ev in events}
    ops_runs.note_names_without_waits_txn(conn, names)
    for name in sorted(names):  # read before any event is written, so the writes go out together
        matching_functions(conn, name)
    for ev in events:
        if ev.id is not None:
            seen = _seen_txn(conn, ev.id, ev.name, now)
            if seen is not None:
                out.append(seen)
                continue
        event_id = ids.new_id()
        body = ev.to_dict()
        body.setdefault("id", event_id)
        body.setdefault("ts", now)  # the time of receipt; a ts the sender gave may lie ahead (a scheduled start)
        ops_runs.insert_event_txn(conn, event_id, body, ev.id, now)
        if ev.id is not None:
            conn.defer(
                "INSERT INTO event_ids_seen (external_id, event_id, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (external_id) DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at",
                (ev.id, event_id, now + DEDUP_WINDOW_MS),
            )
        _note_failures_txn(conn, event_id, ops_runs.resolve_waits_txn(conn, body, now, event_id=event_id))
        start_triggered_runs_txn(conn, event_id, body, now, handoff)
        out.append(event_id)
    if handoff is not None and handoff.taken:
        _drop_cancelled_handoffs_txn(conn, handoff, now)
    return out


def _seen_txn(conn: db.Conn, external_id: str, name: str, now: int) -> str | None:
    """The event of this name already stored under this id in the last 24 h, if any, read
    under the id's lock: two servers receiving the same event store it once. The lock is
    waited for briefly (another server commits in milliseconds): one held longer is a
    process frozen mid-transaction, and waiting on it held every write of this one; the
    event's sender is asked to send it again.

    ``event_ids_seen`` names the last event stored under the id; when that one has another
    name (a sender reusing a business id for two kinds of event), the events of this name
    are looked up by the id (``events_by_external_id``)."""
    try:
        conn.lock_briefly(EVENT_ID_LOCK_WAIT_MS, "event-id", external_id)
        seen = conn.one(
            "SELECT s.event_id, s.expires_at, e.name FROM event_ids_seen s LEFT JOIN events e ON e.id = s.event_id "
            "WHERE s.external_id = ?",
            (external_id,),
        )
        if seen is None or seen["expires_at"] <= now:
            return None
        if seen["name"] is None or seen["name"] == name:  # None: the event is gone (retention); its id still holds
            return str(seen["event_id"])
        # By both columns of the index alone (a few rows: one a day at most), never through
        # events_by_name, which holds every event of the name.
        same = [
            r for r in conn.all(
                f"SELECT id, received_at FROM events {conn.indexed_by(EVENTS_BY_EXTERNAL_ID)} WHERE external_id = ? AND name = ?",
                (external_id, name),
            )
            if r["received_at"] > now - DEDUP_WINDOW_MS
        ]
        return str(min(same, key=lambda r: r["received_at"])["id"]) if same else None
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != db.LOCK_NOT_AVAILABLE:
            raise
        raise errors.BusyError(
            f"another process is storing an event with id {external_id!r} right now, or stopped while doing so; "
            "nothing of this request was stored: send it again"
        ) from exc


EVENT_ID_LOCK_WAIT_MS = 200
EVENTS_BY_EXTERNAL_ID = "events_by_external_id"  # migration 0027


def _note_failures_txn(conn: db.Conn, event_id: str, failures: list[tuple[str, dict[str, Any]]]) -> None:
    """Say on the event which waits or cancel rules failed on it (the first per function)."""
    noted: set[str] = set()
    for fn_id, reason in failures:
        if fn_id not in noted:
            noted.add(fn_id)
            ops_admission.note_skip_txn(conn, event_id, fn_id, reason)


def _drop_cancelled_handoffs_txn(conn: db.Conn, handoff: HandOff, now: int) -> None:
    """A run taken by the hand-off and cancelled by a later event of the same batch (its
    ``cancel_on``) ends here: its worker does not have it yet, so would miss the signal."""
    cancelled = conn.memo.get(ops_runs.CANCELLED_HELD)
    if not cancelled:
        return
    kept = []
    for item in handoff.taken:
        if item.run_id in cancelled:
            ops_runs.end_run_txn(conn, item.run_id, "cancelled", None, cancelled[item.run_id], now)
        else:
            kept.append(item)
    handoff.taken[:] = kept


def wildcard_covers(pattern: str, name: str) -> bool:
    """Whether a trigger like ``app/user.*`` covers the event name ``name``.

    ``app/user.created`` is covered by ``app/user.*`` and ``app/*``: the part before
    the ``*`` ends at a ``/`` or ``.`` and the name goes on past it. One comparison per
    wildcard trigger, so the cost grows with the name, never with its square.
    """
    prefix = pattern[:-1]
    return pattern.endswith("*") and prefix[-1:] in ("/", ".") and len(name) > len(prefix) and name.startswith(prefix)


def matching_functions(conn: db.Conn, name: str) -> list[tuple[str, str | None, StoredConfig, str | None]]:
    """(function id, trigger ``if``, config, pause mode or None) of each function an event
    called ``name`` triggers.

    Triggers on the name itself and every wildcard trigger come in one query (wildcards
    are few: one per declared trigger), and the wildcards are matched here.
    """
    triggers = conn.memo.setdefault(ops_runs.TRIGGERS, {})
    matching = triggers.get(name)
    if matching is None:
        rows = conn.all(
            "SELECT t.function_id, t.event_name, t.expression, f.config, p.mode AS paused FROM triggers t "
            "JOIN functions f ON f.id = t.function_id LEFT JOIN function_pauses p ON p.function_id = t.function_id "
            "WHERE t.event_name = ? OR t.event_name LIKE '%*' ORDER BY t.function_id, t.position",
            (name,),
        )
        matching = triggers[name] = [
            (r["function_id"], r["expression"], jsonutil.loads(r["config"]), r["paused"])
            for r in rows
            if r["event_name"] == name or wildcard_covers(r["event_name"], name)
        ]
    return matching  # type: ignore[no-any-return]


def start_triggered_runs_txn(
    conn: db.Conn, event_id: str, body: dict[str, Any], now: int, handoff: HandOff | None = None
) -> None:
    """Admit the event into every function whose trigger matches; record why any started no run.

    The matching functions are cached per event name for the transaction, so a batch of
    same-named events reads and parses each config once.
    """
    matching = matching_functions(conn, body["name"])
    admitted: set[str] = set()
    skipped: dict[str, Any] = {}
    variables = {"event": body}
    for fn_id, expression, cfg, paused in matching:
        if fn_id in admitted:
            continue
        matched, failure = expressions.match_checked(expression, variables)
        if not matched:
            if failure is not None:  # the `if` failed on this event's data: no match, said on the event
                skipped.setdefault(fn_id, failure.reason("expression_error"))
            continue
        admitted.add(fn_id)
        skipped.pop(fn_id, None)
        if paused == "skip":
            skipped[fn_id] = FUNCTION_PAUSED
            continue
        # A paused function's runs wait in the queue (a claim sets them aside), never handed off.
        reason = ops_admission.admit_txn(conn, cfg, event_id, body, now, None if paused else handoff)
        if reason is not None and not reason.startswith("batched"):
            skipped[fn_id] = reason
    for fn_id, reason in skipped.items():
        ops_admission.note_skip_txn(conn, event_id, fn_id, reason)
