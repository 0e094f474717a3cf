"""Domain operations on events and the run lifecycle: registration, ingest, waits,
creating, cancelling and ending runs.

Each ``*_txn`` function runs inside the caller's transaction on a ``db.Conn``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from stepline import errors, expressions, ids, jsonutil
from stepline import event as event_mod
from stepline.function import StoredConfig
from stepline.store import db, flow, wait_keys
from stepline.store.records import TERMINAL, ClaimedRun, HandOff, RunStatus, WaitReason

log = logging.getLogger("stepline.store")

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
CLEANUP_WAITS = 1  # runs.cleanup: waits rows may exist
CLEANUP_SINGLETON = 2  # runs.cleanup: a singletons row may exist
CLEANUP_WINDOW = 4  # runs.cleanup: a debounces or batches row may exist until the run starts
CLEANUP_BUDGET = 8  # runs.cleanup: a budget_pauses row may exist (ops_budget)
_NO_WAITS = "event names nobody waits for"  # Conn.memo key
TRIGGERS = "functions by trigger name"  # Conn.memo key (ops_ingest)
CANCELLED_HELD = "held runs asked to cancel"  # Conn.memo key: run id -> error (ops_ingest's hand-off)
NEVER = flow.NEVER  # 9999-12-31: "no due time" for rows that need one


# --- functions -------------------------------------------------------------------


def register_functions_txn(
    conn: db.Conn, configs: list[StoredConfig], cron_next: Mapping[tuple[str, int], int], now: int
) -> None:
    """Store each function's config and triggers; keep cron positions that did not change."""
    forget_triggers(conn)
    for cfg in configs:
        fn_id = cfg["id"]
        before, text = conn.scalar("SELECT config FROM functions WHERE id = ?", (fn_id,)), jsonutil.dumps(cfg)
        conn.execute(
            "INSERT INTO functions (id, app_id, config, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET app_id = excluded.app_id, config = excluded.config, "
            "updated_at = excluded.updated_at",
            (fn_id, cfg["app_id"], text, now),
        )
        if before is not None and before != text:  # an unchanged config (every start) parses nothing
            previous, current = jsonutil.loads(before), jsonutil.loads(text)
            if previous.get("concurrency") != current.get("concurrency"):
                flow.follow_new_limits(conn, current, previous, now)
        conn.execute("DELETE FROM triggers WHERE function_id = ?", (fn_id,))
        cron_positions = []
        for position, trigger in enumerate(cfg["triggers"]):
            if "event" in trigger:
                conn.execute(
                    "INSERT INTO triggers (function_id, position, event_name, expression) VALUES (?, ?, ?, ?)",
                    (fn_id, position, trigger["event"], trigger.get("expression")),
                )
                continue
            cron_positions.append(position)
            existing = conn.one(
                "SELECT cron, timezone FROM cron_schedules WHERE function_id = ? AND position = ?",
                (fn_id, position),
            )
            if existing and (existing["cron"], existing["timezone"]) == (trigger["cron"], trigger["timezone"]):
                continue
            conn.execute(
                "INSERT INTO cron_schedules (function_id, position, cron, timezone, next_tick) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (function_id, position) DO UPDATE SET cron = excluded.cron, "
                "timezone = excluded.timezone, next_tick = excluded.next_tick",
                (fn_id, position, trigger["cron"], trigger["timezone"], cron_next[(fn_id, position)]),
            )
        stale = conn.all("SELECT position FROM cron_schedules WHERE function_id = ?", (fn_id,))
        for row in stale:
            if row["position"] not in cron_positions:
                conn.execute(
                    "DELETE FROM cron_schedules WHERE function_id = ? AND position = ?", (fn_id, row["position"])
                )


def forget_triggers(conn: db.Conn) -> None:
    """Triggers change in this transaction: ingest must read them again."""
    conn.memo.pop(TRIGGERS, None)


def function_config_txn(conn: db.Conn, function_id: str) -> StoredConfig | None:
    row = conn.one("SELECT config FROM functions WHERE id = ?", (function_id,))
    return None if row is None else jsonutil.loads(row["config"])


# --- events ----------------------------------------------------------------------


def insert_event_txn(conn: db.Conn, event_id: str, body: dict[str, Any], external_id: str | None, now: int) -> None:
    conn.defer(
        "INSERT INTO events (id, name, body, external_id, user_id, ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event_id,
            body["name"],
            jsonutil.dumps(body),
            external_id,
            event_mod.user_id_of(body),
            int(body.get("ts") or now),
            now,
        ),
    )


def insert_internal_event_txn(conn: db.Conn, name: str, data: dict[str, Any], now: int) -> tuple[str, dict[str, Any]]:
    """An event the engine makes for one run (invoke, cron): stored, not matched."""
    event_id = ids.new_id()
    body = {"name": name, "data": data, "id": event_id, "ts": now}
    insert_event_txn(conn, event_id, body, None, now)
    return event_id, body


def create_run_txn(
    conn: db.Conn,
    cfg: StoredConfig,
    event_id: str,
    body: dict[str, Any],
    now: int,
    *,
    parent: tuple[str, str] | None = None,
    replay_of: str | None = None,
    check_idempotency: bool = True,
    due_at: int | None = None,
    wait_reason: str = "queued",
    batch_event_ids: list[str] | None = None,
    handoff: HandOff | None = None,
) -> str | None:
    """Create a queued run of ``cfg`` for one event; None when its idempotency key was used.

    Throttle reserves the run's start slot here, so a throttled run is simply due later.
    An event whose ``ts`` lies ahead schedules the run for then (``scheduled``) unless
    ``due_at`` is given (debounce and batching decide their own start); its throttle slot
    is taken when it comes due, and a debounced or batching run's when its window closes
    (``ops_exec``). A run that ``handoff`` can take is
    created running, leased to its worker.
    """
    fn_id = cfg["id"]
    run_id = ids.new_id()
    variables = {"event": body}
    if check_idempotency and cfg.get("idempotency"):
        key = expressions.key(cfg["idempotency"], variables)
        if key:
            conn.lock("idempotency", fn_id, key)  # two servers taking the same key start one run
            used = conn.one(
                "SELECT run_id, expires_at FROM idempotency_keys WHERE function_id = ? AND key = ?", (fn_id, key)
            )
            if used is not None and used["expires_at"] > now:
                return None
            conn.execute(
                "INSERT INTO idempotency_keys (function_id, key, run_id, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id, expires_at = excluded.expires_at",
                (fn_id, key, run_id, now + IDEMPOTENCY_WINDOW_MS),
            )
    due = now if due_at is None else due_at
    scheduled = due_at is None and _scheduled_start(body, now)
    if scheduled:
        due, wait_reason = scheduled, WaitReason.SCHEDULED
    # A scheduled, debounced or batching run takes its throttle slot when it may start
    # (ops_exec): its start is not known yet (a batch that fills starts it at once).
    deferred = bool(scheduled or wait_reason in (WaitReason.DEBOUNCING, WaitReason.BATCHING))
    slot = None if deferred else flow.throttle_start(conn, cfg, body, now)
    if slot is not None and slot.start > due:
        due, wait_reason = slot.start, WaitReason.THROTTLED
    ahead = slot is not None and slot.start > now  # a slot still to come, given back if the run ends first
    throttle_key = slot.key if ahead else flow.SLOT_AT_START if deferred and cfg.get("throttle") else None  # type: ignore[union-attr]
    timeouts = cfg.get("timeouts") or {}
    # timeouts.start counts from when the run may start: its scheduled time, else now; for a
    # debounce or a batch, from when its window closes (set then, in ops_exec), as Inngest
    # creates such a run only then.
    windowed = wait_reason in (WaitReason.DEBOUNCING, WaitReason.BATCHING)
    start_deadline = (
        None if timeouts.get("start") is None or windowed else (scheduled or now) + int(timeouts["start"] * 1000)
    )
    finish_ms = None if timeouts.get("finish") is None else int(timeouts["finish"] * 1000)
    cleanup = (CLEANUP_WAITS if cfg.get("cancel_on") else 0) | (
        CLEANUP_WINDOW if cfg.get("debounce") or cfg.get("batch_events") else 0
    )
    leased = handoff is not None and due <= now and _can_hand_off(handoff, cfg)
    start_by = None if leased or start_deadline is None else start_deadline
    if start_by is not None and due_at is None:
        due = min(due, start_by + 1)  # cancelled at its deadline if its throttle slot comes later
    conn.defer(
        f"INSERT {conn.or_fail()}INTO runs (id, function_id, event_id, batch_event_ids, status, wait_reason, attempt, user_id, "
        "created_at, updated_at, started_at, start_deadline_at, finish_timeout_ms, parent_run_id, parent_step_key, "
        "replay_of, cleanup) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            fn_id,
            event_id,
            None if batch_event_ids is None else jsonutil.dumps(batch_event_ids),
            RunStatus.RUNNING if leased else RunStatus.QUEUED,
            None if leased else wait_reason,
            event_mod.user_id_of(body),
            now,
            now,
            now if leased else None,
            start_deadline,
            finish_ms,
            parent[0] if parent else None,
            parent[1] if parent else None,
            replay_of,
            cleanup,
        ),
    )
    keys = flow.concurrency_keys(cfg, body) + [(None, None), (None, None)]
    conn.defer(
        "INSERT INTO queue (run_id, function_id, due_at, priority_ms, ck1, cl1, ck2, cl2, lease_owner, lease_expires_at, "
        "lease_epoch, start_by, throttle_key, throttle_slot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id, fn_id, due, flow.priority_ms(cfg, body), keys[0][0], keys[0][1], keys[1][0], keys[1][1],
            handoff.worker_id if leased else None,  # type: ignore[union-attr]
            now + handoff.lease_ms if leased else None,  # type: ignore[union-attr]  # set on the clock by stamp_handoff_leases_txn
            1 if leased else 0,
            start_by,
            throttle_key,
            slot.start if ahead else None,  # type: ignore[union-attr]
        ),
    )
    for rule in cfg.get("cancel_on") or ():
        expires = rule.get("until_ms")  # a time: the same end for every run
        if expires is None and rule.get("timeout") is not None:
            expires = now + int(rule["timeout"] * 1000)
        insert_wait_txn(
            conn, ids.new_id(), run_id, None, rule["event"], rule.get("expression"), expires, body, deferred=True
        )
    if leased:
        copy = jsonutil.loads(jsonutil.dumps(body))  # the run's own, as a claim would load it
        handoff.taken.append(  # type: ignore[union-attr]
            ClaimedRun(
                run_id, fn_id, 0, copy, [copy], {}, now, None if finish_ms is None else now + finish_ms,
                epoch=1, leased_at=handoff.leased_at,  # type: ignore[union-attr]
            )
        )
    elif due <= now:
        conn.wake()
    return run_id


def _scheduled_start(body: dict[str, Any], now: int) -> int:
    """When a run of this event may start, if its ``ts`` lies ahead (Inngest's way to
    schedule a one-off run); 0 for now."""
    ts = body.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts <= now:
        return 0
    return min(int(ts), NEVER)


def stamp_handoff_leases_txn(conn: db.Conn, handoffs: list[HandOff]) -> None:
    """Set the expiry of the leases ingests' hand-offs took on the database's clock, as
    every other lease is (their rows were inserted with the ingest's own time): one
    statement per lease length, for all the ingests of a commit."""
    by_length: dict[int, list[str]] = {}
    for handoff in handoffs:
        by_length.setdefault(handoff.lease_ms, []).extend(item.run_id for item in handoff.taken)
    for lease_ms, run_ids in by_length.items():
        if run_ids:
            marks, params = db.in_list(run_ids)
            conn.execute(
                f"UPDATE queue SET lease_expires_at = {conn.clock_ms} + ? WHERE run_id IN ({marks})",
                (lease_ms, *params),
            )


_READY_WAITING = "ready runs waiting, by function ids"  # Conn.memo key: ids -> (conn.wakes then, answer)
# The unleased runs of each function by due time (migration 0024). Read in its own order
# (function, due time), which no other index gives without reading and sorting all it
# finds, so no planner's estimate leads to the due-time index read through every other
# function's rows; SQLite is told to use it.
READY_BY_FUNCTION = "queue_ready_by_function"


def ready_run_waiting_txn(conn: db.Conn, function_ids: frozenset[str], now: int) -> bool:
    """Whether a run of these functions is due and waiting in the queue, unleased. Asked
    once per transaction (the ingests of a commit share it) until the transaction makes
    a run due (``Conn.wake``); runs it leases meanwhile only make the answer cautious."""
    if not function_ids:
        return False
    known: dict[frozenset[str], tuple[int, bool]] = conn.memo.setdefault(_READY_WAITING, {})
    cached = known.get(function_ids)
    if cached is not None and cached[0] == conn.wakes:
        return cached[1]
    marks, params = db.in_list(sorted(function_ids))
    row = conn.one(
        f"SELECT 1 AS waiting FROM queue {conn.indexed_by(READY_BY_FUNCTION)} WHERE lease_owner IS NULL AND function_id IN ({marks}) "
        "AND due_at <= ? ORDER BY function_id, due_at LIMIT 1",
        (*params, now),
    )
    known[function_ids] = (conn.wakes, row is not None)
    return row is not None


def _can_hand_off(handoff: HandOff, cfg: StoredConfig) -> bool:
    """Whether a new run of ``cfg`` due now may skip the queue to ``handoff``'s worker:
    one the worker serves, with room left, and no slot to take (concurrency) or window
    to keep open (debounce, batch)."""
    return (
        len(handoff.taken) < handoff.limit
        and cfg["id"] in handoff.function_ids
        and not cfg.get("concurrency")
        and not cfg.get("debounce")
        and not cfg.get("batch_events")
    )


def set_run_event_txn(
    conn: db.Conn,
    run_id: str,
    cfg: StoredConfig,
    event_id: str,
    body: dict[str, Any],
    now: int,
    *,
    parent: tuple[str, str] | None = None,
) -> None:
    """Point a run that has not started at another event (debounce keeps the last one), and
    at that event's invoker (``parent``), if any."""
    keys = flow.concurrency_keys(cfg, body) + [(None, None), (None, None)]
    conn.execute(
        "UPDATE runs SET event_id = ?, user_id = ?, parent_run_id = ?, parent_step_key = ?, updated_at = ? WHERE id = ?",
        (event_id, event_mod.user_id_of(body), *(parent or (None, None)), now, run_id),
    )
    conn.execute(
        "UPDATE queue SET priority_ms = ?, ck1 = ?, cl1 = ?, ck2 = ?, cl2 = ? WHERE run_id = ?",
        (flow.priority_ms(cfg, body), keys[0][0], keys[0][1], keys[1][0], keys[1][1], run_id),
    )
    if cfg.get("cancel_on"):  # its cancel rules match against the event it now has, not the first
        rules = conn.all(
            "DELETE FROM waits WHERE run_id = ? AND step_key IS NULL RETURNING id, event_name, expression, expires_at",
            (run_id,),
        )
        for wait_id, row in {str(r["id"]).partition(ALTERNATIVE)[0]: r for r in rules}.items():
            insert_wait_txn(conn, wait_id, run_id, None, row["event_name"], row["expression"], row["expires_at"], body)


# --- waits -----------------------------------------------------------------------


def note_names_without_waits_txn(conn: db.Conn, names: set[str]) -> None:
    """Learn, in one query, which of these event names no wait or cancel rule listens for.

    Ingest then skips the wait lookup for those events. Only absence is remembered, and
    every new wait in this transaction forgets its name (``note_new_wait``); rows that
    other processes add meanwhile count as arriving after these events. One probe of the
    index per name, however many waits a name has.
    """
    absent: set[str] = conn.memo.setdefault(_NO_WAITS, set())
    unknown = sorted(names - absent)
    if not unknown:
        return
    values = ", ".join("(?)" for _ in unknown)
    found = {
        r["name"]
        for r in conn.all(
            f"WITH asked (name) AS (VALUES {values}) SELECT name FROM asked "
            "WHERE EXISTS (SELECT 1 FROM waits WHERE event_name = asked.name)",
            tuple(unknown),
        )
    }
    absent.update(name for name in unknown if name not in found)


def note_new_wait(conn: db.Conn, event_name: str) -> None:
    """A wait for ``event_name`` is being added in this transaction: look it up again."""
    absent: set[str] | None = conn.memo.get(_NO_WAITS)
    if absent is not None:
        absent.discard(event_name)
    paths: dict[str, Any] | None = conn.memo.get(_WAIT_PATHS)
    if paths is not None:
        paths.pop(event_name, None)


def insert_wait_txn(
    conn: db.Conn, wait_id: str, run_id: str, step_key: str | None, event_name: str, expression: str | None,
    expires_at: int | None, trigger: dict[str, Any] | None, *, deferred: bool = False, keep_existing: bool = False,
) -> None:
    """Store a wait (``step_key``) or a cancel rule (None), keyed by the value its expression
    needs of an incoming event when it has one, with the part of the run's event that the
    expression reads (``wait_keys``); ``trigger`` is the body of the run's own event (read
    here when not given). ``keep_existing``: a wait of that id already stored stays as is."""
    note_new_wait(conn, event_name)
    if trigger is None and wait_keys.event_paths(expression) != []:
        row = conn.one("SELECT e.body FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = ?", (run_id,))
        trigger = jsonutil.loads(row["body"]) if row else {}
    matches = wait_keys.wait_key_set(expression, trigger)
    ranged = None if matches else wait_keys.wait_range_key(expression, trigger)
    view = wait_keys.trigger_view(expression, trigger or {})
    sql = (
        "INSERT INTO waits (id, run_id, step_key, event_name, expression, expires_at, match_path, match_value, "
        "range_path, range_value, trigger_view) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        + (" ON CONFLICT (id) DO NOTHING" if keep_existing else "")
    )
    # A wait with alternatives (``||``, ``in``) is a row per alternative, each keyed by its own.
    for n, match in enumerate(matches or [None]):
        params = (wait_id if n == 0 else f"{wait_id}{ALTERNATIVE}{n}", run_id, step_key, event_name, expression,
                  expires_at, *(match or (None, None)), *(ranged or (None, None)), None if view is None else jsonutil.dumps(view))
        if deferred:
            conn.defer(sql, params)
        else:
            conn.execute(sql, params)


# Between a wait's id and the number of one of its alternatives' rows (wait_keys.wait_key_set):
# a character no wait id holds, so an alternative's id is never another wait's.
ALTERNATIVE = "\x1f"


_WAIT_PATHS = "keyed wait paths by event name"  # Conn.memo key: name -> WaitPaths
_WAIT_COLUMNS = (
    # The run's whole event is read only for waits stored without the part they read.
    "SELECT w.id, w.run_id, w.step_key, w.expression, w.expires_at, COALESCE(w.trigger_view, e.body) AS trigger_body, "
    "r.function_id "
    "FROM waits w {hint} JOIN runs r ON r.id = w.run_id JOIN events e ON e.id = r.event_id WHERE w.event_name = ? "
)
# The waits no key narrows, by the partial index of them alone (migration 0023): SQLite's
# planner otherwise chose waits_by_range, where every wait keyed by a match has range_path
# NULL too, and read all of a name's keyed waits to find the few unkeyed ones, or none.
UNKEYED_WAITS = "waits_unkeyed"
_UNKEYED_WHERE = "w.match_path IS NULL AND w.range_path IS NULL"


class WaitPaths(NamedTuple):
    """How the waits for one event name are keyed."""

    match: list[str]  # the match paths of waits keyed by an equality
    ranges: list[str]  # the range paths of waits keyed by a comparison
    unkeyed: bool  # whether any wait has neither key


def _wait_paths(conn: db.Conn, name: str) -> WaitPaths:
    """The keys of the waits for ``name`` (one index probe per distinct path: they are few);
    remembered for the transaction."""
    memo: dict[str, WaitPaths] = conn.memo.setdefault(_WAIT_PATHS, {})
    found = memo.get(name)
    if found is None:
        unkeyed = conn.one(
            f"SELECT 1 AS one FROM waits w {conn.indexed_by(UNKEYED_WAITS)} WHERE w.event_name = ? AND {_UNKEYED_WHERE} LIMIT 1",
            (name,),
        )
        found = memo[name] = WaitPaths(
            _distinct(conn, name, "match_path"), _distinct(conn, name, "range_path"), unkeyed is not None
        )
    return found


def _distinct(conn: db.Conn, name: str, column: str) -> list[str]:
    """The distinct non-NULL values of ``column`` among the waits for ``name``, by skipping
    along its index (``waits_by_match``, ``waits_by_range``)."""
    paths: list[str] = []
    while True:
        row = conn.one(
            f"SELECT {column} AS path FROM waits WHERE event_name = ? AND {column} > ? ORDER BY {column} LIMIT 1",
            (name, paths[-1] if paths else ""),
        )
        if row is None:
            return paths
        paths.append(row["path"])


# Waits and cancel rules a transaction committed inline (on the event loop's thread) may
# read: past them it goes to the writer thread (``db.NotInline``). One event that thousands
# of runs wait for, or whose cancel_on matches thousands, would otherwise stop the server
# answering anyone for as long as resolving them takes (20,000: half a second and more).
INLINE_MAX_WAITS = 64
_INLINE_WAITS = "_inline_waits"  # conn.memo: candidates read so far in an inline transaction


def _candidate_waits(conn: db.Conn, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The waits an incoming event may resolve: for each match path the event has, those
    keyed by its value there; for each range path where it has a number, those whose
    number it can satisfy; and every wait with neither key. A wait keyed on a path the
    event lacks compares a missing field, which is no match: it is not read."""
    name = body["name"]
    keys = _wait_paths(conn, name)
    rows: list[dict[str, Any]] = []
    for path in keys.match:
        value = wait_keys.value_at(body, path)
        if value is wait_keys.MISSING:
            continue
        code = wait_keys.encode(value)
        if code is None:  # a value without a code (not from JSON): evaluated as before
            rows += _read_waits(conn, "AND w.match_path = ?", (name, path))
        else:
            rows += _read_waits(conn, "AND w.match_path = ? AND w.match_value = ?", (name, path, code))
    for path in keys.ranges:
        lookup = wait_keys.range_lookup(path, body)
        if lookup is not None:
            bound, number = lookup
            compare = "<=" if bound == "min" else ">="
            rows += _read_waits(conn, f"AND w.range_path = ? AND w.range_value {compare} ?", (name, path, number))
    if keys.unkeyed:
        rows += _read_waits(conn, f"AND {_UNKEYED_WHERE}", (name,), index=UNKEYED_WAITS)
    return rows


def _read_waits(conn: db.Conn, where: str, params: tuple[Any, ...], index: str | None = None) -> list[dict[str, Any]]:
    """The waits ``where`` selects (by ``index`` if given); inline, no more than the budget
    left (else ``NotInline``)."""
    select = _WAIT_COLUMNS.format(hint=conn.indexed_by(index) if index else "")
    if not conn.inline:
        return conn.all(select + where, params)
    left = INLINE_MAX_WAITS - conn.memo.get(_INLINE_WAITS, 0)
    rows = conn.all(select + where + " LIMIT ?", (*params, left + 1))
    if len(rows) > left:
        raise db.NotInline(f"over {INLINE_MAX_WAITS} waits to resolve")
    conn.memo[_INLINE_WAITS] = conn.memo.get(_INLINE_WAITS, 0) + len(rows)
    return rows


def resolve_waits_txn(
    conn: db.Conn, body: dict[str, Any], now: int, *, event_id: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Hand an incoming event to the runs waiting for it (a step) or cancelled by it
    (each such run records ``event_id``, the stored event's id, as what cancelled it).

    Returns (function id, why) for each wait or cancel rule whose expression failed on
    this event: for the event that is no match. Only the waits its keys can match are
    read and evaluated (``_candidate_waits``).
    """
    failures: list[tuple[str, dict[str, Any]]] = []
    if body["name"] in conn.memo.get(_NO_WAITS, ()):
        return failures
    cancelled: list[str] = []
    answered: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in _candidate_waits(conn, body):
        if row["expires_at"] is not None and row["expires_at"] <= now:
            continue
        wait = row["id"].partition(ALTERNATIVE)[0]
        if wait in seen:
            continue  # found by two of its alternatives: evaluated once
        seen.add(wait)
        variables = {"event": jsonutil.loads(row["trigger_body"]), "async": body}
        matched, failure = expressions.match_checked(row["expression"], variables)
        if failure is not None:
            kind = "cancel_expression_error" if row["step_key"] is None else "wait_expression_error"
            failures.append((row["function_id"], failure.reason(kind, run_id=row["run_id"])))
        if matched and row["step_key"] is None:
            cancelled.append(row["run_id"])
        elif matched:
            answered.append(row)
    if cancelled:  # first, in a few statements for all: a run both cancelled and answered ends cancelled
        cancel_runs_txn(conn, cancelled, now, f"cancelled by event {body['name']!r} (cancel_on)", by_event=event_id)
    resumed: list[str] = []
    if answered:
        text = jsonutil.dumps(body)  # the event as each resumed step's output
        shared = event_id is not None and len(text) > SHARED_OUTPUT_BYTES
        output = (None, event_id) if shared else (text, None)
        for start in range(0, len(answered), RESUME_CHUNK):
            resumed += _resume_chunk_txn(conn, answered[start:start + RESUME_CHUNK], output, now)
    if event_id is not None and resumed:
        _note_resumed_txn(conn, event_id, resumed)
    return failures


RESUMED = "_resumed"  # the key of an event's outcome that lists the waiting runs it resumed
# A resuming event larger than this is named by the steps it completes (steps.output_event)
# rather than copied into each: a sender's one event of a megabyte that many runs wait on
# would otherwise be stored once per run.
SHARED_OUTPUT_BYTES = 16 * 1024
# A step's output as readers take it: its own, or the body of the event it names.
STEP_OUTPUT = "COALESCE(output, (SELECT e.body FROM events e WHERE e.id = steps.output_event)) AS output"


def _note_resumed_txn(conn: db.Conn, event_id: str, run_ids: list[str]) -> None:
    """Record on the event the runs it resumed (steps waiting for it), so that the event's
    read does not say it did nothing. Once per event: written per run, the outcome (which
    grows with each) made an event that resumes N runs cost N² in one transaction."""
    update_outcome_txn(conn, event_id, lambda outcome: outcome.setdefault(RESUMED, []).extend(run_ids))


def update_outcome_txn(conn: db.Conn, event_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change what an event's outcome records (skipped functions, resumed runs) in place."""
    outcome = jsonutil.loads(conn.scalar("SELECT outcome FROM events WHERE id = ?", (event_id,))) or {}
    change(outcome)
    conn.execute("UPDATE events SET outcome = ? WHERE id = ?", (jsonutil.dumps(outcome), event_id))


# Waits answered per round of statements: one event that N runs wait for costs a few
# statements per this many (one by one, 10,000 held PostgreSQL's writer 4.4 s).
RESUME_CHUNK = 512


def _resume_chunk_txn(
    conn: db.Conn, waits: list[dict[str, Any]], output: tuple[str | None, str | None], now: int
) -> list[str]:
    """Complete the waiting steps of ``waits`` with ``output`` (the event's text, or its id)
    and make their runs due; returns the runs resumed (a step no longer waiting is left)."""
    pairs = ", ".join("(?, ?)" for _ in waits)
    # By run and step: the rows of a wait's other alternatives go with it.
    conn.execute(
        f"DELETE FROM waits WHERE (run_id, step_key) IN (VALUES {pairs})", tuple(v for w in waits for v in (w["run_id"], w["step_key"]))
    )
    resumed = [
        str(r["run_id"])
        for r in conn.all(
            "UPDATE steps SET status = 'completed', output = ?, output_event = ?, ended_at = ? "
            f"WHERE status = 'waiting' AND (run_id, key) IN (VALUES {pairs}) RETURNING run_id",
            (*output, now, *(v for w in waits for v in (w["run_id"], w["step_key"]))),
        )
    ]
    if resumed:
        make_due_many_txn(conn, resumed, now)
    return resumed


def make_due_many_txn(conn: db.Conn, run_ids: list[str], now: int) -> None:
    """``make_due_txn`` for many runs, in two statements."""
    marks, params = db.in_list(run_ids)
    due = [str(r["run_id"]) for r in conn.all(
        f"UPDATE queue SET due_at = ? WHERE run_id IN ({marks}) AND lease_owner IS NULL RETURNING run_id", (now, *params)
    )]
    if due:
        marks, params = db.in_list(due)
        conn.execute(
            f"UPDATE {conn.or_fail()}runs SET status = 'queued', wait_reason = 'queued', updated_at = ? "
            f"WHERE id IN ({marks}) AND status IN ('sleeping', 'waiting', 'queued')",
            (now, *params),
        )
        conn.wake()


def make_due_txn(conn: db.Conn, run_id: str, now: int) -> None:
    """A suspended run may continue now."""
    if conn.rowcount(
        "UPDATE queue SET due_at = ? WHERE run_id = ? AND lease_owner IS NULL", (now, run_id)
    ):
        conn.execute(
            f"UPDATE {conn.or_fail()}runs SET status = 'queued', wait_reason = 'queued', updated_at = ? "
            "WHERE id = ? AND status IN ('sleeping', 'waiting', 'queued')",
            (now, run_id),
        )
        conn.wake()


# --- ending runs -----------------------------------------------------------------


def end_run_txn(
    conn: db.Conn, run_id: str, status: str, output: str | None, error: str | None, now: int
) -> bool:
    """Move a run to a terminal status and tell its parent (invoke); False if already ended."""
    return end_runs_txn(conn, [(run_id, status, output, error, now)])[0]


def end_runs_txn(conn: db.Conn, items: list[tuple[str, str, str | None, str | None, int]]) -> list[bool]:
    """``end_run_txn`` for many runs: ``(run_id, status, output, error, now)`` each, in a
    few statements for all of them (one read, one update, one delete) plus what each
    run may have left behind."""
    marks, params = db.in_list([item[0] for item in items])
    runs = {
        r["id"]: r
        for r in conn.all(
            f"SELECT id, status, parent_run_id, parent_step_key, started_at, cleanup FROM runs WHERE id IN ({marks})",
            params,
        )
    }
    ending: list[tuple[dict[str, Any], tuple[str, str, str | None, str | None, int]]] = []
    for item in items:
        run = runs.pop(item[0], None)  # popped: a run listed twice ends once
        if run is not None and run["status"] not in TERMINAL:
            ending.append((run, item))
    if not ending:
        return [False] * len(items)
    conn.executemany(
        # A completed run that reported progress is at 100 % (a job table's bar ends full);
        # a failed or cancelled one keeps where it stopped.
        f"UPDATE {conn.or_fail()}runs SET status = ?, output = ?, error = ?, wait_reason = NULL, ended_at = ?, "
        "updated_at = ?, cancel_requested = 0, progress = CASE WHEN ? AND progress IS NOT NULL THEN 100 ELSE progress END "
        "WHERE id = ?",
        [(status, output, error, now, now, status == "completed", run_id) for _, (run_id, status, output, error, now) in ending],
    )
    marks, params = db.in_list([item[0] for _, item in ending])
    # A step still open when its run ends (a cancelled sleep, an unanswered wait, a retry
    # that will not come) is closed, so that no ended run shows a step still "sleeping".
    conn.execute(
        f"UPDATE steps SET status = 'cancelled', ended_at = ?, wake_at = NULL WHERE run_id IN ({marks}) "
        "AND status IN ('sleeping', 'waiting', 'invoking', 'retrying')",
        (ending[0][1][4], *params),
    )
    freed = {
        r["run_id"]: r
        for r in conn.all(
            f"DELETE FROM queue WHERE run_id IN ({marks}) "
            "RETURNING run_id, function_id, ck1, ck2, lease_owner, throttle_key, throttle_slot",
            params,
        )
    }
    for _, item in ending:
        queued = freed.get(item[0])
        if queued is not None and queued["lease_owner"] is not None:
            for key in (queued["ck1"], queued["ck2"]):  # its concurrency slots free up
                if key is not None:
                    flow.unpark(conn, key, 1, item[4])
    _give_back_throttle_slots_txn(conn, [(run, freed.get(item[0]), item[4]) for run, item in ending])
    _end_side_rows_txn(conn, ending)
    _send_ended_events_txn(conn, [item for _, item in ending])
    done = {item[0] for _, item in ending}
    return [item[0] in done for item in items]


Ending = tuple[str, str, str | None, str | None, int]  # (run id, status, output, error, now)


def _give_back_throttle_slots_txn(conn: db.Conn, ended: list[tuple[dict[str, Any], dict[str, Any] | None, int]]) -> None:
    """Runs that ended before their throttle slot came (cancelled while they waited for
    it, or at their start deadline) never started: their slots go to the runs behind them,
    one pass per throttle key (see ``flow.give_back_slots``). ``ended``: (run, its deleted
    queue row, now) each."""
    by_key: dict[tuple[str, str], list[int]] = {}
    now = 0
    for run, queued, at in ended:
        if queued is None or not queued["throttle_key"] or queued["throttle_slot"] is None or run["started_at"] is not None:
            continue  # no slot reserved (or one it takes when it may start), or one spent
        now = max(now, at)
        if int(queued["throttle_slot"]) > at:
            by_key.setdefault((str(queued["function_id"]), str(queued["throttle_key"])), []).append(int(queued["throttle_slot"]))
    for (fn_id, key), slots in sorted(by_key.items()):  # sorted: keys locked in one order
        cfg = function_config_txn(conn, fn_id)
        if cfg is not None:
            flow.give_back_slots(conn, cfg, key, slots, now)


def _end_side_rows_txn(conn: db.Conn, ending: list[tuple[dict[str, Any], Ending]]) -> None:
    """Delete what ended runs may have left behind (see migrations 0005, 0006), a statement
    per table for all of them, and tell their parents."""
    for flag, table in ((CLEANUP_WAITS, "waits"), (CLEANUP_SINGLETON, "singletons"), (CLEANUP_BUDGET, "budget_pauses")):
        _delete_of_runs(conn, table, [item[0] for run, item in ending if run["cleanup"] & flag])
    unstarted = [item[0] for run, item in ending if run["started_at"] is None and run["cleanup"] & CLEANUP_WINDOW]
    for table in ("debounces", "batches"):  # a start closes them
        _delete_of_runs(conn, table, unstarted)
    for run, item in ending:
        if run["parent_run_id"] is not None:
            _tell_parent_txn(conn, run, item)


def _delete_of_runs(conn: db.Conn, table: str, run_ids: list[str]) -> None:
    if run_ids:
        marks, params = db.in_list(run_ids)
        conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", params)


def _tell_parent_txn(conn: db.Conn, run: dict[str, Any], item: Ending) -> None:
    """An invoked run ended: its parent's invoke step completes with its output, or fails."""
    run_id, status, output, error, now = item
    if status == RunStatus.COMPLETED:
        updated = conn.rowcount(
            "UPDATE steps SET status = 'completed', output = ?, ended_at = ? "
            "WHERE run_id = ? AND key = ? AND status = 'invoking'",
            (output if output is not None else "null", now, run["parent_run_id"], run["parent_step_key"]),
        )
        if updated:
            make_due_txn(conn, run["parent_run_id"], now)
    else:
        failure = jsonutil.loads(error) if error else {}
        invoke_error = {
            "name": failure.get("name", "InvokedRunFailed"),
            "message": f"invoked run {run_id} {status}: {failure.get('message', '')}".strip(),
            "stack": failure.get("stack"),
            # The run's own error, whole (cause, code, ...): an SDK parent is given it as Inngest does.
            "invoked": {"run_id": run_id, "status": str(status), "error": failure},
        }
        fail_invoke_txn(conn, run["parent_run_id"], run["parent_step_key"], jsonutil.dumps(invoke_error), now)


def fail_invoke_txn(conn: db.Conn, run_id: str, step_key: str, error: str, now: int) -> None:
    """Fail the invoke ``step_key`` of ``run_id`` if it still waits for its run; the run goes on."""
    if conn.rowcount(
        "UPDATE steps SET status = 'failed', error = ?, ended_at = ? WHERE run_id = ? AND key = ? AND status = 'invoking'",
        (error, now, run_id, step_key),
    ):
        make_due_txn(conn, run_id, now)


_STATUS_NAMES = {RunStatus.COMPLETED: "Completed", RunStatus.FAILED: "Failed", RunStatus.CANCELLED: "Cancelled"}
# A run started by one of these events tells of its own end with none (no loops), as in Inngest.
_ENDING_TRIGGERS = frozenset({event_mod.FUNCTION_FINISHED, event_mod.FUNCTION_FAILED})


def _listened(conn: db.Conn, name: str) -> bool:
    """Whether a function's trigger or a run's wait listens for events named ``name``."""
    from stepline.store import ops_ingest  # ingest builds on this module

    if ops_ingest.matching_functions(conn, name):
        return True
    note_names_without_waits_txn(conn, {name})
    return name not in conn.memo.get(_NO_WAITS, ())


def _send_ended_events_txn(conn: db.Conn, items: list[tuple[str, str, str | None, str | None, int]]) -> None:
    """Tell of each run that ended, in the transaction that ends it: ``function.finished``,
    with ``function.failed`` or ``function.cancelled`` (Inngest's names and data shape).

    A failure is always told (``on_failure`` hears of it that way); finished and cancelled
    are written only when a function or a wait listens for them, so the runs nobody
    watches write no event.
    """
    from stepline.store import ops_ingest  # ingest builds on this module

    wanted: dict[str, tuple[list[str], str, str | None, str | None, int]] = {}
    for run_id, status, output, error, now in items:
        names = [event_mod.FUNCTION_FINISHED]
        if status == RunStatus.FAILED:
            names.append(event_mod.FUNCTION_FAILED)
        elif status == RunStatus.CANCELLED:
            names.append(event_mod.FUNCTION_CANCELLED)
        names = [name for name in names if name == event_mod.FUNCTION_FAILED or _listened(conn, name)]
        if names:
            wanted[run_id] = (names, status, output, error, now)
    if not wanted:
        return
    marks, params = db.in_list(list(wanted))
    rows = conn.all(
        "SELECT r.id, r.function_id, r.batch_event_ids, r.parent_run_id, r.parent_step_key, e.name, e.body "
        f"FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id IN ({marks})",
        params,
    )
    told: list[event_mod.Event] = []
    for row in rows:
        if row["name"] in _ENDING_TRIGGERS:
            continue
        names, status, output, error, now = wanted[row["id"]]
        body = jsonutil.loads(row["body"])
        data: dict[str, Any] = {
            "function_id": row["function_id"],
            "run_id": row["id"],
            "event": body,
            "events": _batch_bodies(conn, row["batch_event_ids"]) or [body],
            "_inngest": {"status": _STATUS_NAMES[RunStatus(status)]},
        }
        if status == RunStatus.COMPLETED:
            data["result"] = jsonutil.loads(output) if output is not None else None
        elif status == RunStatus.FAILED:
            data["error"] = jsonutil.loads(error) if error else {}
        if row["parent_run_id"] is not None:
            data["correlation_id"] = f"{row['parent_run_id']}.{row['parent_step_key']}"
        told.extend(event_mod.Event(name=name, data=data, ts=now) for name in names)
    if told:
        ops_ingest.ingest_txn(conn, told, max(item[4] for item in wanted.values()))


def _batch_bodies(conn: db.Conn, batch_event_ids: str | None) -> list[dict[str, Any]]:
    ids_ = jsonutil.loads(batch_event_ids) if batch_event_ids else []
    if not ids_:
        return []
    marks, params = db.in_list(ids_)
    bodies = {r["id"]: jsonutil.loads(r["body"]) for r in conn.all(f"SELECT id, body FROM events WHERE id IN ({marks})", params)}
    return [bodies[i] for i in ids_ if i in bodies]


def cancel_run_txn(conn: db.Conn, run_id: str, now: int, reason: str, *, by_event: str | None = None) -> str:
    """Cancel a run: at once if no worker holds it, else at its next step boundary.
    ``by_event``: the id of the event that cancelled it (a ``cancel_on`` rule), kept on the run.

    Returns the run's status afterwards: ``cancelled``, ``cancelling`` (a worker will
    stop it), or the terminal status it already had.
    """
    status = cancel_runs_txn(conn, [run_id], now, reason, by_event=by_event).get(run_id)
    if status is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    return status


# Runs cancelled per round of statements: an event whose cancel_on rule matches thousands of
# runs (or a bulk cancel) costs a few statements per this many, not several per run (20,000
# cancelled one by one held PostgreSQL's writer 20 s); far under either database's cap on
# parameters in one statement.
CANCEL_CHUNK = 512


def cancel_runs_txn(
    conn: db.Conn, run_ids: list[str], now: int, reason: str, *, by_event: str | None = None
) -> dict[str, str]:
    """``cancel_run_txn`` for many runs: each known run's status afterwards (an unknown id
    is left out)."""
    unique = list(dict.fromkeys(run_ids))
    out: dict[str, str] = {}
    for start in range(0, len(unique), CANCEL_CHUNK):
        out.update(_cancel_chunk_txn(conn, unique[start:start + CANCEL_CHUNK], now, reason, by_event))
    return out


def _cancel_chunk_txn(conn: db.Conn, run_ids: list[str], now: int, reason: str, by_event: str | None) -> dict[str, str]:
    marks, params = db.in_list(run_ids)
    out = {str(r["id"]): str(r["status"]) for r in conn.all(f"SELECT id, status FROM runs WHERE id IN ({marks})", params)}
    live = [run_id for run_id in run_ids if run_id in out and out[run_id] not in TERMINAL]
    if not live:
        return out
    marks, params = db.in_list(live)
    if by_event is not None:
        conn.execute(f"UPDATE runs SET cancelled_by = ? WHERE id IN ({marks})", (by_event, *params))
    error = jsonutil.dumps({"name": "Cancelled", "message": reason})
    held = {
        str(r["run_id"])
        for r in conn.all(
            f"SELECT run_id FROM queue WHERE run_id IN ({marks}) AND lease_owner IS NOT NULL "
            f"AND lease_expires_at > {conn.clock_ms}",
            params,
        )
    }
    if held:
        marks, params = db.in_list(sorted(held))
        conn.execute(
            f"UPDATE runs SET cancel_requested = 1, error = ?, updated_at = ? WHERE id IN ({marks})", (error, now, *params)
        )
        for run_id in held:
            conn.signal("cancel", run_id)  # the holder, in whichever process, stops its step now
            conn.memo.setdefault(CANCELLED_HELD, {})[run_id] = error  # it may be a hand-off of this very transaction
            out[run_id] = "cancelling"
    free = [run_id for run_id in live if run_id not in held]
    if free:
        end_runs_txn(conn, [(run_id, RunStatus.CANCELLED, None, error, now) for run_id in free])
        out.update((run_id, RunStatus.CANCELLED) for run_id in free)
    return out


def replay_run_txn(conn: db.Conn, run_id: str, now: int) -> str:
    """A new run of the same function with the same event, from the start."""
    row = conn.one(
        "SELECT r.function_id, r.event_id, e.body, f.config FROM runs r JOIN events e ON e.id = r.event_id "
        f"LEFT JOIN functions f ON f.id = r.function_id WHERE r.id = ? {conn.row_lock('r')}",
        (run_id,),  # locked: a sweep deleting it meanwhile (PostgreSQL) would take its event too
    )
    if row is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    if row["config"] is None:
        raise errors.NotFoundError(f"run {run_id} belongs to function {row['function_id']!r}, which is no longer registered")
    new_id = create_run_txn(
        conn, jsonutil.loads(row["config"]), row["event_id"], jsonutil.loads(row["body"]), now,
        replay_of=run_id, check_idempotency=False,
    )
    assert new_id is not None
    return new_id
