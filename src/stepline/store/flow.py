"""Flow-control state shared by run creation and claims: keys, GCRA, concurrency slots.

Each piece runs inside the caller's transaction. Rows are locked through an
``INSERT .. ON CONFLICT DO UPDATE .. RETURNING`` upsert, which takes a row lock on
PostgreSQL and is serialised by the single writer on SQLite, so no read-modify-write
crosses processes unguarded.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from stepline import expressions, jsonutil
from stepline.function import StoredConfig
from stepline.store import db


def _variables(body: dict[str, Any]) -> dict[str, Any]:
    return {"event": body}


def scoped_key(cfg: StoredConfig, kind: str, key_expr: str | None, body: dict[str, Any]) -> str:
    """The state key for one function's limit: ``kind:function[:value]``."""
    if key_expr is None:
        return f"{kind}:{cfg['id']}"
    return f"{kind}:{cfg['id']}:{expressions.key(key_expr, _variables(body))}"


def concurrency_keys(cfg: StoredConfig, body: dict[str, Any]) -> list[tuple[str, int]]:
    """(key, limit) for each concurrency limit; ``env`` and ``account`` keys are shared
    across functions, each scope apart from the other."""
    out: list[tuple[str, int]] = []
    for limit in cfg.get("concurrency") or ():
        scope = limit.get("scope")
        if scope in ("env", "account"):
            key = f"{scope}:{expressions.key(limit['key'], _variables(body))}"
        else:
            key = scoped_key(cfg, "c", limit.get("key"), body)
        out.append((key, int(limit["limit"])))
    return out


MAX_PRIORITY_S = 43200  # Inngest's bound on priority.run: 12 hours either way


def priority_ms(cfg: StoredConfig, body: dict[str, Any]) -> int:
    """``priority.run`` in ms, evaluated once when the run is created (0 if it fails or is
    not a number), clamped to +-12 h as Inngest does."""
    priority = cfg.get("priority")
    if not priority:
        return 0
    value = expressions.evaluate(priority["run"], _variables(body))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return 0
    return int(max(-MAX_PRIORITY_S, min(MAX_PRIORITY_S, value)) * 1000)


def lock_state(conn: db.Conn, key: str) -> int:
    """Lock the state row for ``key`` (creating it) and return its value."""
    row = conn.one(
        "INSERT INTO flow_state (key, tat) VALUES (?, 0) ON CONFLICT (key) DO UPDATE SET tat = flow_state.tat "
        "RETURNING tat",
        (key,),
    )
    assert row is not None
    return int(row["tat"])


def gcra_schedule(conn: db.Conn, key: str, *, limit: int, period_s: float, burst: int, now: int) -> int:
    """Throttle: reserve the next start slot for ``key``; returns when the run may start.

    GCRA: one start per period/limit, with ``limit + burst`` allowed at once. Slots are
    reserved in order, so waiting runs start first-in, first-out and none is dropped.
    """
    interval = period_s * 1000 / limit
    tolerance = (limit + burst - 1) * interval
    tat = max(lock_state(conn, key), now)
    start = max(now, int(tat - tolerance))
    conn.execute("UPDATE flow_state SET tat = ? WHERE key = ?", (int(tat + interval), key))
    return start


# ``queue.throttle_key`` of a run that takes its throttle slot only when it may start (one
# dated ahead, a debounced one): kept until then, whatever the run meets first (a paused
# function, a full concurrency key), so that it never starts without one.
SLOT_AT_START = ""


class Reservation(NamedTuple):
    """A run's throttle slot: its state key and when it may start."""

    key: str
    start: int


def throttle_start(conn: db.Conn, cfg: StoredConfig, body: dict[str, Any], now: int) -> Reservation | None:
    """Reserve a run's start slot under its function's throttle (None: the function has
    no throttle)."""
    throttle = cfg.get("throttle")
    if not throttle:
        return None
    key = scoped_key(cfg, "t", throttle.get("key"), body)
    start = gcra_schedule(
        conn,
        key,
        limit=int(throttle["limit"]),
        period_s=float(throttle["period"]),
        burst=int(throttle.get("burst") or 0),
        now=now,
    )
    return Reservation(key, start)


def give_back_slots(conn: db.Conn, cfg: StoredConfig, key: str, slots: list[int], now: int) -> None:
    """Runs whose throttle slots (``slots``, all still ahead) were reserved under ``key``
    ended before them (cancelled while waiting): give the slots back, as Inngest, which
    counts a throttled run only when it starts, lets a cancelled one hold nobody up.

    Slots ahead of ``now`` were reserved back to back (the state never fell behind the
    clock in between: it stood past the first of them), so without those runs each later
    reservation would have come exactly one interval earlier per run left out: the runs
    still waiting behind take the earliest slots of the line, in order, and the state
    steps back one interval per slot. Their queue rows were already deleted.
    """
    throttle = cfg.get("throttle")
    if not throttle or not slots:
        return  # no throttle any more: nothing reserves against the state
    step = int(float(throttle["period"]) * 1000 / int(throttle["limit"]))  # what gcra_schedule adds per slot
    lock_state(conn, key)  # taken before the rows are read: no reservation slips in between
    rows = conn.all(
        "SELECT run_id, throttle_slot, due_at, start_by FROM queue WHERE throttle_key = ? AND throttle_slot > ? "
        "ORDER BY throttle_slot, run_id",
        (key, min(slots)),
    )
    line = sorted(slots + [int(r["throttle_slot"]) for r in rows])
    updates = []
    for row, slot in zip(rows, line):
        old = int(row["throttle_slot"])
        if slot == old:
            continue
        due = int(row["due_at"])
        if row["start_by"] is not None:  # cancelled at its deadline if its slot comes later
            deadline = int(row["start_by"]) + 1
            due = min(slot, deadline) if due == min(old, deadline) else due
        elif due == old:
            due = slot
        updates.append((slot, due, row["run_id"]))
    conn.executemany("UPDATE queue SET throttle_slot = ?, due_at = ? WHERE run_id = ?", updates)
    conn.execute("UPDATE flow_state SET tat = tat - ? WHERE key = ?", (step * len(slots), key))
    if any(due <= now for _, due, _ in updates):
        conn.wake()


def gcra_admit(conn: db.Conn, key: str, *, limit: int, period_s: float, now: int) -> bool:
    """Rate limit: admit now or refuse (nothing is reserved for a refused event)."""
    interval = period_s * 1000 / limit
    tolerance = (limit - 1) * interval
    tat = max(lock_state(conn, key), now)
    if now < tat - tolerance:
        return False
    conn.execute("UPDATE flow_state SET tat = ? WHERE key = ?", (int(tat + interval), key))
    return True


# --- concurrency slots -----------------------------------------------------------


def slots_in_use(conn: db.Conn, key: str) -> int:
    """Slots of this concurrency key held by leased runs: one a run, and one more for each
    of its parallel steps beyond the first executing (sleeping and waiting runs hold none)."""
    return slots_in_use_many(conn, [key])[key]


def slots_in_use_many(conn: db.Conn, keys: list[str]) -> dict[str, int]:
    """``slots_in_use`` for each of ``keys``, in one query."""
    in_use = dict.fromkeys(keys, 0)
    if not keys:
        return in_use
    marks, params = db.in_list(keys)
    for row in conn.all(
        f"SELECT ck1 AS k, COUNT(*) + SUM(step_slots) AS n FROM queue WHERE ck1 IN ({marks}) AND lease_owner IS NOT NULL "
        f"GROUP BY ck1 UNION ALL SELECT ck2 AS k, COUNT(*) + SUM(step_slots) AS n FROM queue WHERE ck2 IN ({marks}) "
        "AND lease_owner IS NOT NULL GROUP BY ck2",
        params + params,
    ):
        in_use[row["k"]] += int(row["n"])
    return in_use


def park(conn: db.Conn, run_id: str, key: str, now: int) -> None:
    """Take a run out of the ready index until a slot of ``key`` frees up; it keeps its
    place in line (its claim order: due time minus priority)."""
    conn.execute(  # one not started yet falls due at its start deadline, to be cancelled then
        "UPDATE queue SET parked_on = ?, parked_score = due_at - priority_ms, due_at = COALESCE(start_by + 1, ?), "
        "lease_owner = NULL, lease_expires_at = NULL WHERE run_id = ?",
        (key, NEVER, run_id),
    )
    conn.execute(
        f"UPDATE {conn.or_fail()}runs SET status = 'queued', wait_reason = 'concurrency_limited', updated_at = ? WHERE id = ?",
        (now, run_id),
    )


def unpark(conn: db.Conn, key: str, count: int, now: int) -> int:
    """Make the first ``count`` runs parked on ``key`` ready again: by priority, then by
    arrival (the order a claim takes ready runs in), each back at its own due time."""
    if count <= 0:
        return 0
    rows = conn.all(
        "SELECT run_id, parked_score, priority_ms FROM queue WHERE parked_on = ? ORDER BY parked_score, run_id LIMIT ?",
        (key, count),
    )
    conn.executemany(
        "UPDATE queue SET parked_on = NULL, parked_score = NULL, due_at = ? WHERE run_id = ?",
        [(_unparked_due(r, now), r["run_id"]) for r in rows],
    )
    if rows:
        conn.wake()
    return len(rows)


def release_slots(conn: db.Conn, run_id: str, now: int) -> None:
    """The run stops holding its slots (it suspends, ends or is released): wake the next in line."""
    row = conn.one("SELECT ck1, ck2, step_slots FROM queue WHERE run_id = ? AND lease_owner IS NOT NULL", (run_id,))
    if row is None:
        return
    for key in (row["ck1"], row["ck2"]):
        if key is not None:
            unpark(conn, key, 1 + int(row["step_slots"]), now)  # its steps' slots too, if any were still taken


def release_slots_many(conn: db.Conn, run_ids: list[str], now: int) -> None:
    """``release_slots`` for many runs: their keys read in one statement."""
    marks, params = db.in_list(run_ids)
    freed: dict[str, int] = {}
    for row in conn.all(f"SELECT ck1, ck2, step_slots FROM queue WHERE run_id IN ({marks}) AND lease_owner IS NOT NULL", params):
        for key in (row["ck1"], row["ck2"]):
            if key is not None:
                freed[key] = freed.get(key, 0) + 1 + int(row["step_slots"])
    for key, count in freed.items():
        unpark(conn, key, count, now)


def follow_new_limits(conn: db.Conn, cfg: StoredConfig, before: StoredConfig, now: int) -> None:
    """A function's concurrency config changed (a deploy, an app's re-sync): its runs in
    the queue take the new limits, and those parked go back in line, to be admitted or
    parked again under the new limits by the next claim (limits are kept on each queue row
    so that a claim needs no config; without this they kept the limit of their creation).
    When only the numbers changed, that is two statements; when the keys did, each run's
    keys are computed again from its event, as when it was created, a page at a time."""
    shape = [(c.get("key"), c.get("scope")) for c in cfg.get("concurrency") or ()]
    if shape == [(c.get("key"), c.get("scope")) for c in before.get("concurrency") or ()]:
        limits = [int(c["limit"]) for c in cfg.get("concurrency") or ()] + [None, None]
        conn.execute("UPDATE queue SET cl1 = ?, cl2 = ? WHERE function_id = ?", (limits[0], limits[1], cfg["id"]))
    else:
        after = ""
        while True:
            rows = conn.all(
                "SELECT q.run_id, e.body FROM queue q JOIN runs r ON r.id = q.run_id "
                "LEFT JOIN events e ON e.id = r.event_id WHERE q.function_id = ? AND q.run_id > ? ORDER BY q.run_id LIMIT ?",
                (cfg["id"], after, RECOMPUTE_PAGE),
            )
            if not rows:
                break
            updates = []
            for row in rows:
                keys = concurrency_keys(cfg, jsonutil.loads(row["body"]) if row["body"] else {}) + [(None, None), (None, None)]
                updates.append((keys[0][0], keys[0][1], keys[1][0], keys[1][1], row["run_id"]))
            conn.executemany("UPDATE queue SET ck1 = ?, cl1 = ?, ck2 = ?, cl2 = ? WHERE run_id = ?", updates)
            after = rows[-1]["run_id"]
    # Parked runs back in line, each at the due time it had (now at the latest), as unpark does.
    woken = conn.rowcount(
        "UPDATE queue SET due_at = CASE WHEN parked_score IS NULL OR parked_score + priority_ms > ? THEN ? "
        "ELSE parked_score + priority_ms END, parked_on = NULL, parked_score = NULL "
        "WHERE function_id = ? AND parked_on IS NOT NULL",
        (now, now, cfg["id"]),
    )
    if woken:
        conn.wake()


RECOMPUTE_PAGE = 500  # queue rows whose keys are computed again per statement (follow_new_limits)


def unpark_sweep(conn: db.Conn, now: int, max_keys: int = 200) -> int:
    """Safety net: unpark runs whose key has free slots (e.g. after a limit was raised)."""
    woken = 0
    for row in conn.all(
        "SELECT parked_on, MIN(CASE WHEN ck1 = parked_on THEN cl1 ELSE cl2 END) AS lim FROM queue "
        "WHERE parked_on IS NOT NULL GROUP BY parked_on LIMIT ?",
        (max_keys,),
    ):
        free = int(row["lim"] or 0) - slots_in_use(conn, row["parked_on"])
        woken += unpark(conn, row["parked_on"], free, now)
    return woken


NEVER = 253402300799000


def _unparked_due(row: dict[str, Any], now: int) -> int:
    """A woken run's due time: when it was due before it parked (now at the latest). A run
    parked by a worker of the release before migration 0011 has no score (a rolling deploy
    runs both side by side): it is due now."""
    if row["parked_score"] is None:
        return now
    return min(now, int(row["parked_score"]) + int(row["priority_ms"]))
