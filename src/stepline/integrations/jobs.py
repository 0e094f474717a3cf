"""The job-status pattern of apps that queue their LLM calls, ready made: a route starts a job (sends the event, takes
the run it started) and hands the page a job id and a short-lived run token; the page polls
the job's status or subscribes to its Server-Sent Events with that token, which reads that
one job and nothing else. The job's shape is such apps' job table's: status pending /
processing / completed / failed / cancelled, progress, output, error, tokens and cost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from stepline import errors
from stepline.integrations.core import Connection
from stepline.server import tokens
from stepline.store.records import TERMINAL, RunStatus

# Run statuses as such apps' job tables name them.
JOB_STATUS = {
    "queued": "pending",
    "running": "processing",
    "sleeping": "processing",
    "waiting": "processing",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
FINAL = TERMINAL
DEFAULT_TTL = tokens.DEFAULT_TTL


class JobError(errors.SteplineError):
    """A job request the app should answer with ``status`` (404: no job; 401: bad token;
    409: the event started no run)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def job_event(body: Any, allowed: frozenset[str] | None, user_id: str | None) -> dict[str, Any]:
    """The event a request to start a job asks for (``{"name", "data"}``), or a ``JobError``
    (400) saying what is wrong: only the names the app allows, and the user id the app
    gives (the signed-in user), never the client's word for it."""
    name = body.get("name") if isinstance(body, dict) else None
    data = body.get("data", {}) if isinstance(body, dict) else None
    if not isinstance(name, str) or not isinstance(data, dict):
        raise JobError(400, "expected {\"name\": <event name>, \"data\": {...}}")
    if allowed is not None and name not in allowed:
        raise JobError(400, f"{name!r} is not a job this app starts; one of {sorted(allowed)}")
    if user_id is not None:
        data = {**data, "user_id": user_id}
    return {"name": name, "data": data}


def job_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run as such apps' job rows show it."""
    usage = run.get("usage") or {}
    error = run.get("error")
    return {
        "job_id": run["id"],
        "status": JOB_STATUS.get(run["status"], run["status"]),
        "progress": run.get("progress") or (100 if run["status"] == RunStatus.COMPLETED else 0),
        "progress_message": run.get("progress_message"),
        "output": run.get("output"),
        "error": None if not error else str(error.get("message") or error.get("name") or "failed"),
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "cost_usd": usage.get("cost_usd", 0.0),
        },
        "created_at": run.get("created_at"),
        "updated_at": run.get("updated_at"),
        "completed_at": run.get("ended_at"),
    }


@dataclasses.dataclass(frozen=True)
class Jobs:
    """Start jobs and read them for browsers, over one ``Connection``.

    ``base_path``: where the app serves the job routes (``{base_path}/{job_id}`` and
    ``.../stream``), used to build the URLs handed to the page.
    """

    connection: Connection
    base_path: str = "/jobs"
    ttl: float = DEFAULT_TTL

    async def start(self, event: dict[str, Any], *, function_id: str | None = None) -> dict[str, Any]:
        """Send ``event`` and return the job the page follows: ``{job_id, event_id, token,
        status_url, stream_url, status}``. ``function_id``: which run, when the event starts
        several (default: the first)."""
        [event_id] = await self.connection.send(event)
        runs = await self.connection.runs_of(event_id)  # committed with the event: there at once
        chosen = [r for r in runs if function_id is None or r["function_id"] == function_id]
        if not chosen:
            raise JobError(409, f"the event {event.get('name')!r} started no job{' of ' + function_id if function_id else ''}")
        run_id = chosen[0]["id"]
        token = tokens.mint_run_token(run_id, self.connection.signing_key, ttl=self.ttl)
        base = self.base_path.rstrip("/")
        return {
            "job_id": run_id,
            "event_id": event_id,
            "status": JOB_STATUS.get(chosen[0]["status"], "pending"),
            "token": token,
            "status_url": f"{base}/{run_id}?token={token}",
            "stream_url": f"{base}/{run_id}/stream?token={token}",
        }

    def check(self, job_id: str, token: str | None) -> None:
        """The token must be one this app minted for this job and not expired."""
        if not token or not tokens.verify_run_token(token, job_id, self.connection.signing_key):
            raise JobError(401, "the job token is missing, wrong, expired or for another job: start the job again")

    async def status(self, job_id: str, token: str | None) -> dict[str, Any]:
        self.check(job_id, token)
        try:
            return job_view(await self.connection.run(job_id))
        except errors.NotFoundError as exc:
            raise JobError(404, f"no job {job_id}") from exc

    async def updates(self, job_id: str, token: str | None, *, poll: float = 0.5) -> AsyncIterator[dict[str, Any]]:
        """The job's status each time it changes, until it is final (the last one yielded)."""
        self.check(job_id, token)
        last = None
        while True:
            job = await self.status(job_id, token)
            if job != last:
                yield job
                last = job
            if job["status"] in FINAL:
                return
            await asyncio.sleep(poll)


def sse(job: dict[str, Any]) -> str:
    """One Server-Sent Event for a job's status (``event: end`` once it is final)."""
    kind = "end" if job["status"] in FINAL else "status"
    return f"event: {kind}\ndata: {json.dumps(job)}\n\n"


# The page side of the pattern: poll the status URL every 2 s, or subscribe to the stream.
PAGE_SCRIPT = """
async function followJob(job, onUpdate) {          // job: what the start route returned
  if (window.EventSource) {
    const es = new EventSource(job.stream_url);
    for (const kind of ["status", "end"]) es.addEventListener(kind, (ev) => {
      const state = JSON.parse(ev.data); onUpdate(state); if (kind === "end") es.close(); });
    return;
  }
  for (;;) {                                         // no EventSource: poll every 2 s
    const state = await (await fetch(job.status_url)).json(); onUpdate(state);
    if (["completed", "failed", "cancelled"].includes(state.status)) return;
    await new Promise((r) => setTimeout(r, 2000));
  }
}
"""
