"""Domain operations of cost budgets: reserve, settle, pause, override, read.

A model call reserves its worst case against every budget that applies to it before it
starts (``reserve_txn``) and settles to what it cost after (``settle_txn``). Each
(budget, key) is serialised by a transaction lock (``Conn.lock``: an advisory lock on
PostgreSQL, the single writer on SQLite), taken in sorted order, so reservations from
any number of processes see each other and never deadlock.

What a key has spent in a period is a row of ``budget_spend``; what calls in flight
hold is summed from their live rows in ``budget_reservations`` when needed, never kept
as a total. A run's reservation lives while the run's queue row holds the lease it
was made under, unexpired; once the run ends, or its lease expires, is lost or taken
over, it stops counting (and the next reservation of that key deletes it). A direct call's
reservation (no run) lives until its ``expires_at``.

A run refused under ``on_exceeded="pause"`` suspends (``pause_txn``, inside the
executor's suspend) until the period ends, made due at once when a limit is raised
(``set_limit_txn``) or a settle leaves room for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stepline import budgets, errors, expressions, jsonutil
from stepline import event as event_mod
from stepline.budgets import Charge, Check
from stepline.function import StoredBudget
from stepline.store import db, ops_ingest, ops_runs
from stepline.store.records import (
    BudgetHold,
    BudgetKeyState,
    BudgetListing,
    BudgetPauseView,
    BudgetRefusal,
    DeclaredBudget,
    Lease,
    Suspension,
    WaitReason,
)

CLEANUP_BUDGET = ops_runs.CLEANUP_BUDGET
WAKE_BATCH = 100  # paused runs looked at per settle or override
MAX_KEY_BYTES = 256


# --- locks and live reservations ---------------------------------------------------


def _lock(conn: db.Conn, pairs: list[tuple[str, str]]) -> None:
    conn.lock_many([("budget", budget_id, key) for budget_id, key in sorted(set(pairs))])


def _held(conn: db.Conn, lease: Lease) -> None:
    """The run's queue row still holds ``lease`` (locked, as every fenced write checks it)."""
    row = conn.one(f"SELECT lease_owner, lease_epoch FROM queue WHERE run_id = ? {conn.row_lock()}", (lease.run_id,))
    if row is None or row["lease_owner"] != lease.owner or (lease.epoch is not None and row["lease_epoch"] != lease.epoch):
        raise errors.LeaseLost(f"worker {lease.owner} no longer holds run {lease.run_id} (lease epoch {lease.epoch})")


def _live(row: dict[str, Any], now: int) -> bool:
    if row["lease_owner"] is None:
        return row["expires_at"] is not None and row["expires_at"] > now
    # A worker stops its run before its lease can expire (see "Leases and fencing"): once
    # expired, the call it reserved for is no longer in flight.
    held = row["q_owner"] == row["lease_owner"] and (row["lease_epoch"] is None or row["q_epoch"] == row["lease_epoch"])
    return held and bool(row["q_unexpired"])


def _reservations(conn: db.Conn, budget_id: str, key: str, period_start: int, now: int) -> tuple[Charge, list[dict[str, Any]]]:
    """What live reservations hold on one (budget, key, period), and the stale rows."""
    rows = conn.all(
        "SELECT r.run_id, r.step_key, r.attempt, r.usd, r.tokens, r.lease_owner, r.lease_epoch, r.expires_at, "
        "q.lease_owner AS q_owner, q.lease_epoch AS q_epoch, "
        f"CASE WHEN q.lease_expires_at > {conn.clock_ms} THEN 1 ELSE 0 END AS q_unexpired "
        "FROM budget_reservations r LEFT JOIN queue q ON q.run_id = r.run_id "
        "WHERE r.budget_id = ? AND r.key = ? AND r.period_start = ?",
        (budget_id, key, period_start),
    )
    live = [r for r in rows if _live(r, now)]
    held = Charge(sum(float(r["usd"]) for r in live), sum(int(r["tokens"]) for r in live))
    return held, [r for r in rows if not _live(r, now)]


def _drop(conn: db.Conn, budget_id: str, stale: list[dict[str, Any]]) -> None:
    conn.executemany(
        "DELETE FROM budget_reservations WHERE run_id = ? AND step_key = ? AND attempt = ? AND budget_id = ?",
        [(r["run_id"], r["step_key"], r["attempt"], budget_id) for r in stale],
    )


def _overrides(conn: db.Conn, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for budget_id, key in sorted(set(pairs)):
        row = conn.one("SELECT limit_usd, limit_tokens FROM budget_overrides WHERE budget_id = ? AND key = ?", (budget_id, key))
        if row is not None:
            out[(budget_id, key)] = row
    return out


def _in_force(declared_usd: float | None, declared_tokens: int | None, override: dict[str, Any] | None) -> tuple[float | None, int | None]:
    """The limits that apply: an operator's override replaces both declared ones."""
    if override is None:
        return declared_usd, declared_tokens
    usd = override["limit_usd"]
    tokens = override["limit_tokens"]
    return (None if usd is None else float(usd)), (None if tokens is None else int(tokens))


def _spend_row(conn: db.Conn, check: Check, start: int, end: int, now: int) -> dict[str, Any]:
    """Create or update the period's row (noting the limits as declared now) and read it."""
    row = conn.one(
        "INSERT INTO budget_spend (budget_id, key, period_start, period_end, limit_usd, limit_tokens, on_exceeded, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (budget_id, key, period_start) DO UPDATE SET "
        "limit_usd = excluded.limit_usd, limit_tokens = excluded.limit_tokens, on_exceeded = excluded.on_exceeded "
        "RETURNING spent_usd, spent_tokens, exceeded_sent",
        (check.budget_id, check.key, start, end, check.limit_usd, check.limit_tokens, check.on_exceeded, now),
    )
    assert row is not None
    return row


# --- reserve -----------------------------------------------------------------------


def reserve_txn(
    conn: db.Conn,
    *,
    lease: Lease | None,
    run_id: str,
    step_key: str,
    attempt: int,
    checks: list[Check],
    need: Charge,
    about: dict[str, Any],
    now: int,
    expires_at: int | None = None,
) -> BudgetHold:
    """Reserve ``need`` against every budget of ``checks``, all or none.

    ``lease``: the run's (the reservation is fenced like every write of a run); None
    for a direct call (``run_id`` is then the call's own id and ``expires_at`` ends
    the reservation). ``about`` goes into the ``stepline/budget.exceeded`` event sent
    the first time in a period that a key refuses (function, run, user ...).
    """
    if lease is not None:
        _held(conn, lease)
    pairs = [(c.budget_id, c.key) for c in checks]
    earlier = conn.all(
        "SELECT budget_id, key FROM budget_reservations WHERE run_id = ? AND step_key = ? AND attempt = ?",
        (run_id, step_key, attempt),
    )
    _lock(conn, pairs + [(r["budget_id"], r["key"]) for r in earlier])
    # An earlier execution of this very attempt (its worker lost the run) held these.
    conn.execute(
        "DELETE FROM budget_reservations WHERE run_id = ? AND step_key = ? AND attempt = ?", (run_id, step_key, attempt)
    )
    overrides = _overrides(conn, pairs)
    rows: list[tuple[str, str, int]] = []
    refusals: list[BudgetRefusal] = []
    # Every budget is looked at, even past a refusal: each one over its limit sends its
    # own exceeded event (once per budget, key and period); the first refusal is answered.
    for check in checks:
        start, end = budgets.period_bounds(check.period, now)
        spend = _spend_row(conn, check, start, end, now)
        reserved, stale = _reservations(conn, check.budget_id, check.key, start, now)
        _drop(conn, check.budget_id, stale)
        spent = Charge(float(spend["spent_usd"]), int(spend["spent_tokens"]))
        limit_usd, limit_tokens = _in_force(check.limit_usd, check.limit_tokens, overrides.get((check.budget_id, check.key)))
        if budgets.over(spent, reserved, need, limit_usd, limit_tokens):
            refusal = BudgetRefusal(
                check.budget_id, check.key, start, end, spent.usd, spent.tokens, reserved.usd, reserved.tokens,
                limit_usd, limit_tokens, check.on_exceeded,
            )
            if not spend["exceeded_sent"]:
                _send_exceeded(conn, refusal, need, about, now)
            refusals.append(refusal)
            continue
        rows.append((check.budget_id, check.key, start))
    if refusals:
        return BudgetHold((), refusals[0])
    conn.executemany(
        "INSERT INTO budget_reservations (run_id, step_key, attempt, budget_id, key, period_start, usd, tokens, "
        "lease_owner, lease_epoch, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                run_id, step_key, attempt, budget_id, key, start, need.usd, need.tokens,
                None if lease is None else lease.owner, None if lease is None else lease.epoch, expires_at, now,
            )
            for budget_id, key, start in rows
        ],
    )
    if lease is not None:  # the run reached its step again: it no longer waits on a budget
        conn.execute("DELETE FROM budget_pauses WHERE run_id = ?", (run_id,))
    return BudgetHold(tuple(rows))


def _send_exceeded(conn: db.Conn, refusal: BudgetRefusal, need: Charge, about: dict[str, Any], now: int) -> None:
    conn.execute(
        "UPDATE budget_spend SET exceeded_sent = 1 WHERE budget_id = ? AND key = ? AND period_start = ?",
        (refusal.budget_id, refusal.key, refusal.period_start),
    )
    data = {
        "budget": refusal.budget_id,
        "key": refusal.key,
        "period_start": refusal.period_start,
        "period_end": refusal.period_end,
        "spent_usd": round(refusal.spent_usd, 10),
        "spent_tokens": refusal.spent_tokens,
        "reserved_usd": round(refusal.reserved_usd, 10),
        "reserved_tokens": refusal.reserved_tokens,
        "limit_usd": refusal.limit_usd,
        "limit_tokens": refusal.limit_tokens,
        "on_exceeded": refusal.on_exceeded,
        "call_usd": round(need.usd, 10),
        "call_tokens": need.tokens,
        **about,
    }
    user_id = about.get("user_id")
    exceeded = event_mod.Event(
        name=budgets.EXCEEDED_EVENT, data=data, ts=now, user=None if user_id is None else {"id": user_id}
    )
    ops_ingest.ingest_txn(conn, [exceeded], now)


# --- settle ------------------------------------------------------------------------


def settle_txn(
    conn: db.Conn,
    *,
    run_id: str,
    step_key: str,
    attempt: int,
    owner: str | None,
    epoch: int | None,
    rows: list[tuple[str, str, int]],
    actual: Charge,
    now: int,
) -> None:
    """Replace one attempt's reservations by what it cost (``actual``).

    Not fenced: the money is spent whether or not the worker still holds the run. A
    reservation already dropped (its lease was lost) is not subtracted twice; the cost
    is added all the same. Runs paused on these keys that now fit are made due.
    """
    _lock(conn, [(budget_id, key) for budget_id, key, _ in rows])
    where = "run_id = ? AND step_key = ? AND attempt = ?"
    params: list[Any] = [run_id, step_key, attempt]
    if owner is None:
        where += " AND lease_owner IS NULL"
    else:
        where += " AND lease_owner = ?"
        params.append(owner)
        if epoch is not None:
            where += " AND lease_epoch = ?"
            params.append(epoch)
    conn.execute(f"DELETE FROM budget_reservations WHERE {where}", params)
    conn.executemany(
        "UPDATE budget_spend SET spent_usd = spent_usd + ?, spent_tokens = spent_tokens + ?, calls = calls + 1, "
        "updated_at = ? WHERE budget_id = ? AND key = ? AND period_start = ?",
        [(actual.usd, actual.tokens, now, budget_id, key, start) for budget_id, key, start in rows],
    )
    for budget_id, key, start in rows:
        _wake_fitting(conn, budget_id, key, start, now)


def _wake_fitting(conn: db.Conn, budget_id: str, key: str, period_start: int, now: int) -> int:
    """Make due the runs paused on this key whose call fits in the room left, oldest first."""
    paused = conn.all(
        "SELECT p.run_id, p.need_usd, p.need_tokens, p.limit_usd, p.limit_tokens FROM budget_pauses p "
        "JOIN runs r ON r.id = p.run_id WHERE p.budget_id = ? AND p.key = ? AND p.period_start = ? "
        "AND r.wait_reason = ? ORDER BY p.paused_at LIMIT ?",
        (budget_id, key, period_start, WaitReason.BUDGET_EXCEEDED, WAKE_BATCH),
    )
    if not paused:
        return 0
    spend = conn.one(
        "SELECT spent_usd, spent_tokens FROM budget_spend WHERE budget_id = ? AND key = ? AND period_start = ?",
        (budget_id, key, period_start),
    )
    spent = Charge(float(spend["spent_usd"]), int(spend["spent_tokens"])) if spend else budgets.NOTHING
    reserved, _ = _reservations(conn, budget_id, key, period_start, now)
    override = _overrides(conn, [(budget_id, key)]).get((budget_id, key))
    woken = 0
    for row in paused:
        need = Charge(float(row["need_usd"]), int(row["need_tokens"]))
        limit_usd, limit_tokens = _in_force(row["limit_usd"], row["limit_tokens"], override)
        if budgets.over(spent, reserved, need, limit_usd, limit_tokens):
            continue
        reserved = Charge(reserved.usd + need.usd, reserved.tokens + need.tokens)  # room it will take
        ops_runs.make_due_txn(conn, row["run_id"], now)
        woken += 1
    return woken


# --- pause -------------------------------------------------------------------------


def pause_txn(conn: db.Conn, run_id: str, item: Suspension, now: int) -> Suspension:
    """Record what a run suspended on a budget waits for (inside its suspend, fenced
    there); returns the suspension due when the period ends, or now if the budget
    already has room again (a settle or an override committed since the refusal)."""
    pause = item.budget
    assert pause is not None
    _lock(conn, [(pause.budget_id, pause.key)])
    conn.execute(
        "INSERT INTO budget_pauses (run_id, budget_id, key, step_key, period_start, period_end, need_usd, need_tokens, "
        "limit_usd, limit_tokens, paused_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
        "budget_id = excluded.budget_id, key = excluded.key, step_key = excluded.step_key, "
        "period_start = excluded.period_start, period_end = excluded.period_end, need_usd = excluded.need_usd, "
        "need_tokens = excluded.need_tokens, limit_usd = excluded.limit_usd, limit_tokens = excluded.limit_tokens, "
        "paused_at = excluded.paused_at",
        (
            run_id, pause.budget_id, pause.key, item.key, pause.period_start, pause.period_end, pause.need_usd,
            pause.need_tokens, pause.limit_usd, pause.limit_tokens, now,
        ),
    )
    conn.execute("UPDATE runs SET cleanup = cleanup | ? WHERE id = ?", (CLEANUP_BUDGET, run_id))
    if pause.period_end <= now or _fits(conn, pause.budget_id, pause.key, pause.period_start, pause, now):
        return dataclasses.replace(item, due_at=now)
    return item


def _fits(conn: db.Conn, budget_id: str, key: str, period_start: int, pause: Any, now: int) -> bool:
    spend = conn.one(
        "SELECT spent_usd, spent_tokens FROM budget_spend WHERE budget_id = ? AND key = ? AND period_start = ?",
        (budget_id, key, period_start),
    )
    spent = Charge(float(spend["spent_usd"]), int(spend["spent_tokens"])) if spend else budgets.NOTHING
    reserved, _ = _reservations(conn, budget_id, key, period_start, now)
    override = _overrides(conn, [(budget_id, key)]).get((budget_id, key))
    limit_usd, limit_tokens = _in_force(pause.limit_usd, pause.limit_tokens, override)
    return not budgets.over(spent, reserved, Charge(pause.need_usd, pause.need_tokens), limit_usd, limit_tokens)


# --- operators: overrides ------------------------------------------------------------


def declared_txn(conn: db.Conn) -> dict[str, DeclaredBudget]:
    """Every budget the registered functions declare, by name, with the functions using it."""
    out: dict[str, DeclaredBudget] = {}
    for row in conn.all("SELECT id, config FROM functions ORDER BY id"):
        cfg = jsonutil.loads(row["config"]) or {}
        stored: list[StoredBudget] = cfg.get("budgets") or []
        for budget in stored:
            entry = out.setdefault(budget["name"], {**budget, "functions": []})
            entry["functions"].append(row["id"])
    return out


def set_limit_txn(
    conn: db.Conn, *, budget_id: str, key: str, limit_usd: float | None, limit_tokens: int | None, now: int
) -> BudgetKeyState:
    """Set (or, with both limits None, remove) one key's limit override, and make its
    paused runs due at once: each reserves again and pauses again if it still does not fit."""
    declared = declared_txn(conn)
    if budget_id not in declared:
        known = ", ".join(sorted(declared)) or "none"
        raise errors.NotFoundError(f"no budget named {budget_id!r} is declared by a registered function (declared: {known})")
    if not key or len(key.encode()) > MAX_KEY_BYTES or "\x00" in key:
        raise errors.ConfigError(f"budget key: expected 1-{MAX_KEY_BYTES} bytes of text, got {key!r}")
    _lock(conn, [(budget_id, key)])
    if limit_usd is None and limit_tokens is None:
        conn.execute("DELETE FROM budget_overrides WHERE budget_id = ? AND key = ?", (budget_id, key))
    else:
        conn.execute(
            "INSERT INTO budget_overrides (budget_id, key, limit_usd, limit_tokens, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (budget_id, key) DO UPDATE SET limit_usd = excluded.limit_usd, "
            "limit_tokens = excluded.limit_tokens, updated_at = excluded.updated_at",
            (budget_id, key, limit_usd, limit_tokens, now),
        )
    paused = conn.all(
        "SELECT p.run_id FROM budget_pauses p JOIN runs r ON r.id = p.run_id "
        "WHERE p.budget_id = ? AND p.key = ? AND r.wait_reason = ?",
        (budget_id, key, WaitReason.BUDGET_EXCEEDED),
    )
    for row in paused:
        ops_runs.make_due_txn(conn, row["run_id"], now)
    out = key_state_txn(conn, budget_id=budget_id, key=key, now=now, declared=declared)
    out["resumed_runs"] = [r["run_id"] for r in paused]
    return out


# --- reads ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Facts:
    """One budget's current period, by key: what live reservations hold, overrides, paused runs."""

    reserved: dict[str, Charge]
    overrides: dict[str, dict[str, Any]]
    paused: dict[str, int]


def _facts(conn: db.Conn, budget_id: str, period_start: int, now: int, key: str | None = None) -> _Facts:
    """Three reads for all keys of a budget (or for one ``key``), however many keys there are."""
    only, params = ("", ()) if key is None else (" AND r.key = ?", (key,))
    reserved: dict[str, Charge] = {}
    for row in conn.all(
        "SELECT r.key, r.usd, r.tokens, r.lease_owner, r.lease_epoch, r.expires_at, q.lease_owner AS q_owner, "
        f"q.lease_epoch AS q_epoch, CASE WHEN q.lease_expires_at > {conn.clock_ms} THEN 1 ELSE 0 END AS q_unexpired "
        "FROM budget_reservations r LEFT JOIN queue q ON q.run_id = r.run_id "
        f"WHERE r.budget_id = ? AND r.period_start = ?{only}",
        (budget_id, period_start, *params),
    ):
        if _live(row, now):
            held = reserved.get(row["key"], budgets.NOTHING)
            reserved[row["key"]] = Charge(held.usd + float(row["usd"]), held.tokens + int(row["tokens"]))
    overrides = {
        r["key"]: r
        for r in conn.all(
            f"SELECT r.key, r.limit_usd, r.limit_tokens FROM budget_overrides r WHERE r.budget_id = ?{only}",
            (budget_id, *params),
        )
    }
    paused = {
        r["key"]: int(r["n"])
        for r in conn.all(
            "SELECT r.key, COUNT(*) AS n FROM budget_pauses r JOIN runs x ON x.id = r.run_id "
            f"WHERE r.budget_id = ? AND x.wait_reason = ?{only} GROUP BY r.key",
            (budget_id, WaitReason.BUDGET_EXCEEDED, *params),
        )
    }
    return _Facts(reserved, overrides, paused)


def _state(budget: DeclaredBudget, key: str, spend: db.Row | None, facts: _Facts, now: int) -> BudgetKeyState:
    start, end = budgets.period_bounds(budget["period"], now)
    if spend is not None and spend["period_start"] != start:
        spend = None  # an earlier period's row: this period has spent nothing yet
    reserved = facts.reserved.get(key, budgets.NOTHING)
    override = facts.overrides.get(key)
    declared_usd = spend["limit_usd"] if spend else (budget["limit_usd"] if not isinstance(budget["limit_usd"], str) else None)
    declared_tokens = spend["limit_tokens"] if spend else budget.get("limit_tokens")
    limit_usd, limit_tokens = _in_force(declared_usd, declared_tokens, override)
    spent = Charge(float(spend["spent_usd"]), int(spend["spent_tokens"])) if spend else budgets.NOTHING
    return {
        "budget": budget["name"],
        "key": key,
        "scope": budget.get("scope"),
        "period": budget["period"],
        "period_start": start,
        "period_end": end,
        "spent_usd": round(spent.usd, 10),
        "spent_tokens": spent.tokens,
        "reserved_usd": round(reserved.usd, 10),
        "reserved_tokens": reserved.tokens,
        "calls": int(spend["calls"]) if spend else 0,
        "limit_usd": limit_usd,
        "limit_tokens": limit_tokens,
        "override": None if override is None else {"limit_usd": override["limit_usd"], "limit_tokens": override["limit_tokens"]},
        "on_exceeded": budget.get("on_exceeded", "pause"),
        "exceeded": bool(spend["exceeded_sent"]) if spend else False,
        "paused_runs": facts.paused.get(key, 0),
    }


def key_state_txn(
    conn: db.Conn, *, budget_id: str, key: str, now: int, declared: dict[str, DeclaredBudget] | None = None
) -> BudgetKeyState:
    """One key of one budget in its current period: spent, reserved now, limit, paused runs."""
    declared = declared_txn(conn) if declared is None else declared
    budget = declared.get(budget_id)
    if budget is None:
        raise errors.NotFoundError(f"no budget named {budget_id!r} is declared by a registered function")
    start, _ = budgets.period_bounds(budget["period"], now)
    spend = conn.one("SELECT * FROM budget_spend WHERE budget_id = ? AND key = ? AND period_start = ?", (budget_id, key, start))
    return _state(budget, key, spend, _facts(conn, budget_id, start, now, key), now)


def list_txn(conn: db.Conn, *, now: int, budget_id: str | None = None, limit: int = 500) -> BudgetListing:
    """The declared budgets, and each key's state in its current period (keys that spent
    this period or have an override), the most spent first."""
    declared = declared_txn(conn)
    names = [budget_id] if budget_id is not None else sorted(declared)
    if budget_id is not None and budget_id not in declared:
        raise errors.NotFoundError(f"no budget named {budget_id!r} is declared by a registered function")
    keys: list[BudgetKeyState] = []
    for name in names:
        budget = declared[name]
        start, _ = budgets.period_bounds(budget["period"], now)
        spends: dict[str, dict[str, Any] | None] = {
            r["key"]: r
            for r in conn.all(
                "SELECT * FROM budget_spend WHERE budget_id = ? AND period_start = ? ORDER BY spent_usd DESC LIMIT ?",
                (name, start, limit),
            )
        }
        facts = _facts(conn, name, start, now)
        for key in facts.overrides:
            spends.setdefault(key, None)
        keys.extend(_state(budget, key, spend, facts, now) for key, spend in spends.items())
    keys.sort(key=lambda k: (-k["spent_usd"], -k["spent_tokens"], k["budget"], k["key"]))
    return {"budgets": [declared[name] for name in names], "data": keys[:limit]}


def pause_of_txn(conn: db.Conn, run_id: str) -> BudgetPauseView | None:
    """What a run paused on a budget waits for (for its detail), or None."""
    row = conn.one("SELECT * FROM budget_pauses WHERE run_id = ?", (run_id,))
    if row is None:
        return None
    spend = conn.one(
        "SELECT spent_usd, spent_tokens FROM budget_spend WHERE budget_id = ? AND key = ? AND period_start = ?",
        (row["budget_id"], row["key"], row["period_start"]),
    )
    override = _overrides(conn, [(row["budget_id"], row["key"])]).get((row["budget_id"], row["key"]))
    limit_usd, limit_tokens = _in_force(row["limit_usd"], row["limit_tokens"], override)
    return {
        "budget": row["budget_id"],
        "key": row["key"],
        "step": row["step_key"],
        "period_start": row["period_start"],
        "period_end": row["period_end"],
        "spent_usd": round(float(spend["spent_usd"]), 10) if spend else 0.0,
        "spent_tokens": int(spend["spent_tokens"]) if spend else 0,
        "call_usd": round(float(row["need_usd"]), 10),
        "call_tokens": int(row["need_tokens"]),
        "limit_usd": limit_usd,
        "limit_tokens": limit_tokens,
        "paused_at": row["paused_at"],
    }


# --- direct calls (no run) -------------------------------------------------------------


def event_budgets_txn(conn: db.Conn, *, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The budgets a run of ``event`` would meet, as the registered functions' stored
    configs declare them: those of every function the event triggers (its trigger's
    ``if`` evaluated on the event), their app's included, each once by name."""
    found: dict[str, dict[str, Any]] = {}
    variables = {"event": event}
    for _, expression, cfg, _ in ops_ingest.matching_functions(conn, str(event.get("name") or "")):
        declared = cfg.get("budgets") or ()
        if declared and expressions.match_checked(expression, variables)[0]:
            for budget in declared:
                found.setdefault(str(budget["name"]), dict(budget))
    return list(found.values())


def record_direct_usage_txn(conn: db.Conn, *, call_id: str, function_id: str, user_id: str | None, usage: dict[str, Any], now: int) -> None:
    """A direct (inline) model call's usage in ``llm_usage``: its own id as the run, step ``direct``."""
    tokens = usage.get("usage") or {}
    conn.execute(
        "INSERT INTO llm_usage (run_id, step_key, function_id, user_id, provider, model, prompt_tokens, "
        "completion_tokens, reasoning_tokens, cached_tokens, cost_usd, latency_ms, created_at) "
        "VALUES (?, 'direct', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_key) DO NOTHING",
        (
            call_id, function_id, user_id, usage.get("provider"), usage.get("model") or "unknown",
            int(tokens.get("prompt_tokens") or 0), int(tokens.get("completion_tokens") or 0),
            int(tokens.get("reasoning_tokens") or 0), int(tokens.get("cached_tokens") or 0),
            float(usage.get("cost_usd") or 0.0), usage.get("latency_ms"), now,
        ),
    )
