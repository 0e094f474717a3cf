"""Storage: the store protocol, its records, and the SQLite and PostgreSQL backends."""

from stepline.store.records import (
    FINISH_TIMEOUT,
    ClaimedRun,
    EventView,
    JournalEntry,
    Lease,
    Renewal,
    RunStatus,
    RunView,
    StepResult,
    StepStatus,
    StepView,
    Suspension,
    WaitReason,
)
from stepline.store.store import Store, now_ms, open_store, wait_for_database

__all__ = ["FINISH_TIMEOUT", "ClaimedRun", "EventView", "JournalEntry", "Lease", "Renewal", "RunStatus", "RunView", "StepResult", "StepStatus", "StepView", "Store", "Suspension", "WaitReason", "now_ms", "open_store", "wait_for_database"]
