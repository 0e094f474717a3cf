"""What the SDK sees for each finished step (its "memo"), from the run's journal."""

from __future__ import annotations

from typing import Any

from stepline import jsonutil
from stepline.inngest import events
from stepline.inngest.protocol import normalize_error
from stepline.store.records import JournalRow, StepStatus

INVOKE_TIMEOUT = {
    "name": "InngestInvokeTimeoutError",
    "message": "Timed out waiting for invoked function to complete",
    "error": "InngestInvokeTimeoutError: Timed out waiting for invoked function to complete",
}


def error_memo(error: Any, kind: str) -> dict[str, Any]:
    if kind == "invoke" and isinstance(error, dict):
        if error.get("name") == "InvokeTimeout":
            return {"error": dict(INVOKE_TIMEOUT)}
        invoked = error.get("invoked")
        if isinstance(invoked, dict) and isinstance(invoked.get("error"), dict) and invoked["error"]:
            # Inngest resumes the invoke with the invoked run's error as that run reported it
            # (its message unprefixed, its cause and fields kept), not the engine's summary.
            return {"error": normalize_error(invoked["error"])}
    return {"error": normalize_error(error)}


def memo_of(row: JournalRow) -> Any:
    """A finished journal row as the SDK expects it: ``{data}``, ``{error}``, an event or null."""
    kind = row["kind"]
    if row["status"] == "failed":
        return error_memo(jsonutil.loads(row["error"]) or {}, kind)
    output = jsonutil.loads(row["output"])
    if kind == "sleep":
        return None
    if kind == "wait":
        return wait_memo(output)
    return {"data": output}


def wait_memo(body: Any) -> Any:
    """A matched event as the SDK expects it; for a signal, ``{"data": {signal, data}}``."""
    if body is None:
        return None
    if body.get("name") == events.SIGNAL_EVENT:
        data = body.get("data") or {}
        return {"data": {"signal": data.get("signal"), "data": data.get("data")}}
    return events.to_sdk(body)


def finished(row: JournalRow) -> bool:
    return row["status"] in (StepStatus.COMPLETED, StepStatus.FAILED)
