"""Storage: the store protocol, its records, and the SQLite and PostgreSQL backends."""

from stepline.store.records import (
    ClaimedRun,
    JournalEntry,
    Lease,
    Renewal,
    RunStatus,
    StepResult,
    StepStatus,
    Suspension,
    WaitReason,
)
from stepline.store.store import Store, now_ms, open_store

__all__ = ["ClaimedRun", "JournalEntry", "Lease", "Renewal", "RunStatus", "StepResult", "StepStatus", "Store", "Suspension", "WaitReason", "now_ms", "open_store"]
