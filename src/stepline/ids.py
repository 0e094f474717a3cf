"""Sortable unique ids (ULID) for events, runs and workers."""

from __future__ import annotations

from ulid import ULID


def new_id() -> str:
    return str(ULID())
