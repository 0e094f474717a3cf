"""Dashboard sessions: one row per logged-in browser, keyed by a hash of its cookie's id."""

from __future__ import annotations

from stepline.store import db


def create_txn(conn: db.Conn, id_hash: str, now: int, expires_at: int) -> None:
    conn.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (now,))  # the few that lapsed
    conn.execute(
        "INSERT INTO dashboard_sessions (id_hash, created_at, expires_at) VALUES (?, ?, ?)", (id_hash, now, expires_at)
    )


def is_valid_txn(conn: db.Conn, id_hash: str, now: int) -> bool:
    return conn.one("SELECT 1 AS ok FROM dashboard_sessions WHERE id_hash = ? AND expires_at > ?", (id_hash, now)) is not None


def revoke_txn(conn: db.Conn, id_hash: str) -> None:
    conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (id_hash,))
