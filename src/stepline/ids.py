"""Sortable unique ids (ULID) for events, runs and workers: python-ulid's, which are
increasing within a millisecond (and safe across threads)."""

from __future__ import annotations

from ulid import ULID


def new_id() -> str:
    return str(ULID())
