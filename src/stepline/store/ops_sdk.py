"""Domain operations for apps written on the Inngest SDKs, over the engine's own tables.

An SDK function is a row of ``functions`` whose config has an ``inngest`` section (the
app, its URL, the registration it came from). Each ``*_txn`` runs inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from stepline import errors, jsonutil
from stepline import event as event_mod
from stepline.function import StoredConfig
from stepline.store import db, ops_admission, ops_exec, ops_ingest, ops_runs
from stepline.store.records import TERMINAL, InvokeResult, JournalRow, Lease, StepState, StepStatus


def sdk_functions_txn(conn: db.Conn) -> list[StoredConfig]:
    """Stored configs of the SDK functions that are live (not archived)."""
    out = []
    for row in conn.all("SELECT config FROM functions ORDER BY id"):
        cfg: StoredConfig = jsonutil.loads(row["config"])
        meta = cfg.get("inngest")
        if isinstance(meta, dict) and not meta.get("archived"):
            out.append(cfg)
    return out


def register_app_txn(
    conn: db.Conn, app: str, configs: list[StoredConfig], cron_next: Mapping[tuple[str, int], int], now: int
) -> list[str]:
    """Upsert an app's functions and archive the ones its new registration dropped.

    Archiving removes triggers and schedules (no new runs) and keeps the row, so
    runs already made still show their function. Returns the archived ids.
    """
    existing = {r["id"]: jsonutil.loads(r["config"]) for r in conn.all("SELECT id, config FROM functions WHERE app_id = ?", (app,))}
    native = sorted(fid for fid, cfg in existing.items() if "inngest" not in cfg)
    if native:
        raise errors.ConfigError(
            f"app {app!r} is already the id of a native Stepline app (functions {native}); give the SDK app another id"
        )
    taken = [c["id"] for c in configs if conn.one("SELECT app_id FROM functions WHERE id = ? AND app_id <> ?", (c["id"], app))]
    if taken:
        raise errors.ConfigError(f"function id(s) {taken} already belong to another app; function ids must be unique")
    ops_runs.register_functions_txn(conn, configs, cron_next, now)
    keep = {c["id"] for c in configs}
    archived = []
    for fid, cfg in existing.items():
        if fid in keep or cfg["inngest"].get("archived"):
            continue
        cfg["inngest"]["archived"] = True
        conn.execute("UPDATE functions SET config = ?, updated_at = ? WHERE id = ?", (jsonutil.dumps(cfg), now, fid))
        conn.execute("DELETE FROM triggers WHERE function_id = ?", (fid,))
        ops_runs.forget_triggers(conn)
        conn.execute("DELETE FROM cron_schedules WHERE function_id = ?", (fid,))
        archived.append(fid)
    return archived


def journal_txn(conn: db.Conn, run_id: str) -> list[JournalRow]:
    """A run's steps in the order they were recorded."""
    return cast(list[JournalRow], conn.all(
        f"SELECT key, kind, status, {ops_runs.STEP_OUTPUT}, error, attempts FROM steps WHERE run_id = ? ORDER BY seq, started_at",
        (run_id,),
    ))


def run_events_txn(conn: db.Conn, run_id: str) -> list[dict[str, Any]] | None:
    """The events a run received (its batch, or its one event); None for an unknown run."""
    run = conn.one("SELECT event_id, batch_event_ids FROM runs WHERE id = ?", (run_id,))
    if run is None:
        return None
    ids = jsonutil.loads(run["batch_event_ids"]) if run["batch_event_ids"] else [run["event_id"]]
    bodies = {r["id"]: jsonutil.loads(r["body"]) for r in conn.all(
        f"SELECT id, body FROM events WHERE id IN ({', '.join('?' for _ in ids)})", tuple(ids)
    )}
    return [bodies[i] for i in ids if i in bodies]


def batched_runs_txn(conn: db.Conn, run_ids: list[str]) -> set[str]:
    """Those of ``run_ids`` that run a ``batchEvents`` batch (an event the batch's ``if``
    refused runs alone, outside any batch)."""
    if not run_ids:
        return set()
    marks, params = db.in_list(run_ids)
    return {str(r["id"]) for r in conn.all(f"SELECT id FROM runs WHERE id IN ({marks}) AND batch_event_ids IS NOT NULL", params)}


def invoke_txn(conn: db.Conn, function_id: str, data: dict[str, Any], now: int) -> InvokeResult:
    """Invoke one function from outside a run (Inngest's ``POST /invoke/{slug}``, the API's
    and the dashboard's invoke) with a ``function.invoked`` event: its triggers are bypassed,
    its flow control and a pause are not (``ops_admission.admit_invoke_txn``)."""
    cfg = ops_runs.function_config_txn(conn, function_id)
    meta = None if cfg is None else cfg.get("inngest")
    if cfg is None or (meta and meta.get("archived")):
        raise errors.NotFoundError(f"could not find function with ID: {function_id}; sync its app, or check the id (<app id>-<function id>)")
    event_id, body = ops_runs.insert_internal_event_txn(conn, event_mod.FUNCTION_INVOKED, data, now)
    reason = ops_admission.admit_invoke_txn(conn, cfg, event_id, body, now)
    run_id = conn.scalar("SELECT id FROM runs WHERE event_id = ?", (event_id,))
    if reason == "batched":  # joined a pending batch: that run answers it
        outcome = jsonutil.loads(conn.scalar("SELECT outcome FROM events WHERE id = ?", (event_id,))) or {}
        run_id, reason = str(outcome.get(cfg["id"], "")).removeprefix(ops_admission.BATCHED_INTO) or None, None
    return {
        "event_id": event_id, "run_id": None if run_id is None else str(run_id), "skipped": reason,
        "message": None if reason is None else ops_admission.skipped_invoke_message(cfg, reason, body),
    }


def resolve_function_id_txn(conn: db.Conn, slug: str) -> str:
    """The Stepline function an SDK means by ``slug``: itself, or a native function named
    the way SDKs name functions (``<app id>-<function id>``)."""
    if conn.one("SELECT id FROM functions WHERE id = ?", (slug,)):
        return slug
    for row in conn.all("SELECT id, app_id FROM functions ORDER BY id"):
        if slug == f"{row['app_id']}-{row['id']}":
            return str(row["id"])
    return slug


def send_signal_txn(conn: db.Conn, signal: event_mod.Event, expression: str, now: int) -> str | None:
    """Resume the run waiting for a signal (``step.waitForSignal``): ``signal`` is the event
    that carries it, ``expression`` the match its wait was registered with; None if no run waits."""
    row = conn.one(
        "SELECT run_id FROM waits WHERE event_name = ? AND expression = ? AND step_key IS NOT NULL "
        "AND (expires_at IS NULL OR expires_at > ?) ORDER BY id LIMIT 1",
        (signal.name, expression, now),
    )
    if row is None:
        return None
    ops_ingest.ingest_txn(conn, [signal], now)
    return str(row["run_id"])


def prepare_wait_txn(
    conn: db.Conn, lease: Lease, key: str, event_name: str, expression: str | None, expires_at: int, now: int,
    name: str | None = None,
) -> None:
    """Register a ``waitForEvent`` before the steps beside it in a parallel block run, so an
    event one of them causes is not missed. The rows are the ones the engine writes when a
    run suspends on a wait (same wait id), so it finds them there and keeps them; the run's
    end removes them if it never suspends on it (a race the wait lost). Fenced like every
    write of a running run: a worker that lost the lease registers nothing."""
    ops_exec.check_held(conn, lease)
    run_id = lease.run_id
    seq = (conn.scalar("SELECT MAX(seq) AS seq FROM steps WHERE run_id = ?", (run_id,)) or 0) + 1
    conn.execute(
        "INSERT INTO steps (run_id, key, name, kind, status, seq, attempts, started_at, wake_at) "
        "VALUES (?, ?, ?, 'wait', 'waiting', ?, 1, ?, ?) ON CONFLICT (run_id, key) DO NOTHING",
        (run_id, key, name or key, seq, now, expires_at),
    )
    conn.execute("UPDATE runs SET cleanup = cleanup | ? WHERE id = ?", (ops_runs.CLEANUP_WAITS, run_id))
    ops_runs.insert_wait_txn(conn, f"{run_id}:{key}", run_id, key, event_name, expression, expires_at, None, keep_existing=True)


def step_row_txn(conn: db.Conn, run_id: str, key: str) -> StepState | None:
    return cast(StepState | None, conn.one(f"SELECT status, {ops_runs.STEP_OUTPUT} FROM steps WHERE run_id = ? AND key = ?", (run_id, key)))


def wake_if_wait_done_txn(conn: db.Conn, run_id: str, key: str, now: int) -> bool:
    """A prepared wait matched while its run still held its lease (so nothing woke it):
    make the suspended run due now. False while the run is still held or the wait open."""
    row = conn.one("SELECT status FROM steps WHERE run_id = ? AND key = ?", (run_id, key))
    if row is None or row["status"] != StepStatus.COMPLETED:
        return False
    held = conn.one("SELECT lease_owner FROM queue WHERE run_id = ?", (run_id,))
    if held is None:
        return True  # the run is done or gone
    if held["lease_owner"] is not None:
        return False
    ops_runs.make_due_txn(conn, run_id, now)
    return True


def publish_from_app_txn(conn: db.Conn, run_id: str, topic: str, data: str, now: int) -> int:
    """A message an SDK app published for one of its runs (Inngest realtime): into the run's
    stream, as ``ctx.publish`` does, while a worker executes the run (the app publishes from
    inside a call for that run). Returns the message's sequence number."""
    row = conn.one(
        "SELECT r.status, q.lease_owner FROM runs r LEFT JOIN queue q ON q.run_id = r.id WHERE r.id = ?", (run_id,)
    )
    if row is None:
        raise errors.NotFoundError(f"no run with id {run_id!r}")
    if row["status"] in TERMINAL or row["lease_owner"] is None:
        raise errors.ConflictError(
            f"run {run_id} is {row['status']}: realtime messages are published while its function executes"
        )
    seq = (conn.scalar("SELECT MAX(seq) AS seq FROM run_messages WHERE run_id = ?", (run_id,)) or 0) + 1
    conn.execute(
        "INSERT INTO run_messages (run_id, seq, topic, data, created_at) VALUES (?, ?, ?, ?, ?)",
        (run_id, seq, topic, data, now),
    )
    return int(seq)
