"""Concurrency slots of a run's parallel steps.

A leased run holds one slot on each of its concurrency keys (counted from its lease, see
``flow.slots_in_use_many``); that slot covers its code and one step executing at a time.
Each further step executing at once takes a slot of its own on the same keys (Inngest
counts each step executing), kept as ``queue.step_slots`` on the run's row: a count that
belongs to the lease, so that a claim (a takeover after a crash included) starts it at
zero, and a run without a lease holds none, whatever the count says.
"""

from __future__ import annotations

from stepline.store import db, flow
from stepline.store.ops_exec import check_held
from stepline.store.records import Lease


def take_txn(conn: db.Conn, lease: Lease, now: int) -> bool:
    """One more slot on each of the run's keys for a step, if every key has one free;
    ``LeaseLost`` when the run is no longer this lease's."""
    check_held(conn, lease)  # its queue row locked first, then its keys: the order a claim takes them in
    row = conn.one("SELECT ck1, cl1, ck2, cl2 FROM queue WHERE run_id = ?", (lease.run_id,))
    assert row is not None  # held just above
    limits = {row[k]: row[c] for k, c in (("ck1", "cl1"), ("ck2", "cl2")) if row[k] is not None}
    if limits:
        keys = sorted(limits)
        conn.lock_many([("concurrency", key) for key in keys])  # sorted: as claims take them
        in_use = flow.slots_in_use_many(conn, keys)
        if any(in_use[key] >= int(limits[key]) for key in keys):
            return False
    conn.execute("UPDATE queue SET step_slots = step_slots + 1 WHERE run_id = ?", (lease.run_id,))
    return True


def give_txn(conn: db.Conn, lease: Lease, now: int) -> None:
    """A step gives its slot back: the next run parked on each key may start. A lease lost
    meanwhile has nothing to give (its successor's count started at zero)."""
    epoch = "" if lease.epoch is None else "AND lease_epoch = ? "
    params = (lease.run_id, lease.owner) if lease.epoch is None else (lease.run_id, lease.owner, lease.epoch)
    if not conn.rowcount(
        f"UPDATE queue SET step_slots = step_slots - 1 WHERE run_id = ? AND lease_owner = ? {epoch}AND step_slots > 0", params
    ):
        return
    row = conn.one("SELECT ck1, ck2 FROM queue WHERE run_id = ?", (lease.run_id,))
    for key in (row or {}).values():
        if key is not None:
            flow.unpark(conn, key, 1, now)
