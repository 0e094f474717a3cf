"""Totals that workers count and ``/metrics`` reports: lease losses and retries per function.

They are kept in the ``counters`` row of ``maintenance`` (its ``state``: a JSON list of
``[name, function id, detail, total]``), so every process's counts meet in the database
without a table of their own; a worker adds what it counted since its last flush in one
short transaction, under the row's lock.
"""

from __future__ import annotations

from stepline import jsonutil
from stepline.store import db

TASK = "counters"

Key = tuple[str, str, str]


def add_txn(conn: db.Conn, *, deltas: dict[Key, int], now: int) -> None:
    """Add ``deltas`` to the totals."""
    if not deltas:
        return
    conn.execute("INSERT INTO maintenance (task) VALUES (?) ON CONFLICT (task) DO NOTHING", (TASK,))
    row = conn.one("SELECT state FROM maintenance WHERE task = ? " + conn.row_lock(), (TASK,))
    totals = _totals(None if row is None else row["state"])
    for key, n in deltas.items():
        totals[key] = totals.get(key, 0) + n
    state = [[*key, n] for key, n in sorted(totals.items())]
    conn.execute(
        "UPDATE maintenance SET state = ?, last_finished_at = ? WHERE task = ?", (jsonutil.dumps(state), now, TASK)
    )


def totals_txn(conn: db.Conn) -> dict[Key, int]:
    row = conn.one("SELECT state FROM maintenance WHERE task = ?", (TASK,))
    return _totals(None if row is None else row["state"])


def _totals(state: str | None) -> dict[Key, int]:
    rows = jsonutil.loads(state) if state else []
    if not isinstance(rows, list):  # a fresh row holds '{}'
        return {}
    return {(str(name), str(function_id), str(detail)): int(n) for name, function_id, detail, n in rows}
