"""How the CLI writes runs and events for people: ``stepline runs show``, ``stepline send``
(``--wait``) and ``stepline runs show EVENT_ID``. Pure functions over the API's JSON.

Each line is one line on the terminal: what came from apps and senders (error messages,
which may quote an event's data, progress messages, step names) has its control and bidi
characters written as escapes (``shown_text.escape``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from stepline import shown_text
from stepline.budgets import usd
from stepline.store.records import TERMINAL, RunStatus

# What each wait reason means, said in full (store.records.WaitReason).
WAIT_TEXT = {
    "queued": "waiting for a worker",
    "retry_backoff": "waiting to retry a failed step",
    "scheduled": "sleeping, or scheduled to start later",
    "waiting_for_event": "waiting for an event",
    "invoking": "waiting for an invoked run",
    "throttled": "waiting for its throttle slot",
    "concurrency_limited": "waiting for a concurrency slot",
    "debouncing": "debouncing: a later event may take its place",
    "batching": "collecting events into a batch",
    "budget_exceeded": "paused until a budget has room",
    "function_paused": "its function is paused; it starts when the function is resumed",
}


def when(iso: str | None) -> str:
    """A time as the API gives it (ISO 8601, UTC), or a dash for none."""
    return iso if iso else "—"


def _parse(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def relative(iso: str, now: dt.datetime) -> str:
    """``in 59m 58s`` or ``3s ago``."""
    seconds = int((_parse(iso) - now).total_seconds())
    size = abs(seconds)
    hours, rest = divmod(size, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def duration(ms: int | None) -> str:
    if ms is None:
        return ""
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def status_text(run: dict[str, Any]) -> str:
    reason = run.get("wait_reason")
    if not reason or run["status"] in TERMINAL:
        return str(run["status"])
    return f"{run['status']} ({reason}: {WAIT_TEXT.get(reason, reason.replace('_', ' '))})"


def error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('name') or 'Error'}: {error.get('message') or ''}".rstrip(": ")


def step_label(step: dict[str, Any]) -> str:
    """A step as people know it: its key (``fetch-page:1``), or its name when the key is an
    id nobody reads (an Inngest SDK step's hash)."""
    key, name = str(step["id"]), str(step.get("name") or step["id"])
    return key if key.split(":")[0] == name or key == name else name


def usage_text(usage: dict[str, Any]) -> str:
    calls = f" over {usage['calls']} calls" if usage.get("calls", 1) > 1 else ""
    reasoning = f" ({usage['reasoning_tokens']} reasoning)" if usage.get("reasoning_tokens") else ""
    provider = f" ({usage['provider']})" if usage.get("provider") else ""
    return (
        f"model {usage['model']}{provider}: "
        f"{usage['prompt_tokens']} in / {usage['completion_tokens']} out tokens{reasoning}, {usd(usage['cost_usd'])}{calls}"
    )


def run_lines(run: dict[str, Any], now: dt.datetime | None = None) -> list[str]:
    """``stepline runs show``: the run, when it starts (if queued for later), its steps with
    their attempts and model calls, function-level retries, usage, output and error."""
    now = now or dt.datetime.now(dt.UTC)
    event = run.get("event") or {}
    lines = [
        f"run {run['id']}  function {run['function_id']}  status {status_text(run)}",
        f"event {event.get('name', '?')} {run['event_id']}  created {when(run['created_at'])}  "
        f"started {when(run['started_at'])}  ended {when(run['ended_at'])}"
        + (f"  took {duration(run['duration_ms'])}" if run.get("duration_ms") is not None else ""),
    ]
    due = (run.get("schedule") or {}).get("due_at")
    if due and run["status"] not in TERMINAL and _parse(due) > now:
        verb = "wakes" if run["status"] == "sleeping" else "starts"
        lines.append(f"{verb} at {due} ({relative(due, now)})")
    if run.get("progress") is not None:
        lines.append(f"progress {run['progress']:.0f}% {run.get('progress_message') or ''}".rstrip())
    step_usage = run.get("step_usage") or {}
    lines.append("steps:" if run["steps"] else "steps: none yet")
    for step in run["steps"]:
        lines.append(
            f"  {step_label(step):<30} {step['kind']:<10} {step['status']:<10} attempts={step['attempts']:<3} "
            f"{duration(step['duration_ms'])}".rstrip()
        )
        if step["id"] in step_usage:
            lines.append(f"      {usage_text(step_usage[step['id']])}")
        history = step.get("attempt_history") or []
        for attempt in history:
            if attempt.get("error") and not (attempt is history[-1] and step["status"] == "failed"):
                lines.append(f"      attempt {attempt['attempt']} failed at {when(attempt['ended_at'])}: {error_text(attempt['error'])}")
        if step["status"] == "retrying" and step.get("wake_at"):
            lines.append(f"      next attempt at {step['wake_at']} ({relative(step['wake_at'], now)})")
        if step["error"] and step["status"] == "failed":
            lines.append(f"      error: {error_text(step['error'])}")
    retries = run.get("function_attempts") or []
    if retries:
        lines.append("function retries (the whole function ran again):")
        lines.extend(f"  attempt {a['attempt']} failed at {when(a.get('at'))}: {error_text(a.get('error'))}" for a in retries)
    usage = run.get("usage") or {}
    if usage.get("calls"):
        lines.append(f"usage {usage['calls']} model call(s), {usage['total_tokens']} tokens, {usd(usage['cost_usd'])}")
    if run.get("output") is not None:
        lines.append("output: " + json.dumps(run["output"]))
    if run.get("error") is not None:
        lines.append(f"error: {error_text(run['error'])}")
    return _escaped(lines)


def event_lines(event: dict[str, Any]) -> list[str]:
    """``stepline runs show EVENT_ID``: say that it is an event, and list its runs."""
    lines = [f"{event['id']} is an event id ({event['name']}, received {when(event['received_at'])}), not a run id."]
    if event["runs"]:
        lines.append(f"It started {len(event['runs'])} run(s):")
        lines.extend(f"  {r['id']}  {r['function_id']:<24} {status_text(r)}" for r in event["runs"])
        lines.append(f"Show one with: stepline runs show {event['runs'][0]['id']}")
    else:
        lines.append(f"It started no runs: {event.get('why_no_runs') or 'no function matched it'}")
    for outcome in event.get("skipped_functions") or []:
        if event["runs"]:
            lines.append(f"  skipped {outcome['function_id']}: {outcome['reason']}")
    cancelled = event.get("cancelled_runs") or []
    if cancelled:
        lines.append(f"It cancelled {len(cancelled)} run(s):")
        lines.extend(f"  {r['id']}  {r['function_id']:<24} {r['status']}" for r in cancelled)
    return _escaped(lines)


def started_lines(event: dict[str, Any]) -> list[str]:
    """What ``stepline send`` tells of the runs an event started (or why none)."""
    if not event["runs"]:
        return _escaped([f"started no runs: {event.get('why_no_runs') or 'no function matched it'}"])
    return _escaped([f"run {r['id']} {r['function_id']} {status_text(r)}" for r in event["runs"]])


def outcome_lines(run: dict[str, Any]) -> list[str]:
    """What ``stepline send --wait`` prints once a run has ended."""
    lines = [f"run {run['id']} {run['function_id']} {run['status']}" + (f" in {duration(run['duration_ms'])}" if run.get("duration_ms") is not None else "")]
    if run["status"] == RunStatus.COMPLETED:
        lines.append("  output: " + json.dumps(run.get("output")))
    elif run.get("error"):
        lines.append(f"  error: {error_text(run['error'])}")
    return _escaped(lines)


def _escaped(lines: list[str]) -> list[str]:
    return [shown_text.escape(line) for line in lines]
