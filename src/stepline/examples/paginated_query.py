"""Paginated query (query combos): one step per page, a 1 s pause between pages, resumable.

Each ``execute-page`` step fetches a page, stores its rows and moves the query's
cursor in one transaction, so the checkpoint and the app's data agree. The loop
pauses 1 s (a durable sleep: the worker is free meanwhile) until ``has_more`` is
false. Network errors retry (3 attempts); a rate-limit answer pauses the query
(status ``paused``); sending ``query/execute.requested`` again for the same
``query_id`` resumes from the last checkpointed page. Progress is on the run and
on the query's row.

The API is SIMULATED (``fake_api.py``) unless ``data.api_url`` or ``QUERY_API_URL`` says otherwise.

Try: ``stepline send query/execute.requested --data '{"query_id":"q1","pages":4}'``
(``crawl/requested`` with ``{"pages": 3}`` starts one too).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

import stepline
from stepline.examples import fake_api, jobs

app = stepline.App("query-combos")
KIND = "query"


class QueryRateLimited(stepline.NonRetriableError):
    """The API's rate limit: the query pauses until it is resumed."""


def resume_event(query_id: str, **data: Any) -> dict[str, Any]:
    """The event that resumes a paused query (the seed's POST /api/queries/{id}/resume)."""
    return {"name": "query/execute.requested", "data": {"query_id": query_id, **data}}


def update(query_id: str, **fields: Any) -> str:
    return str(jobs.upsert(query_id, **fields)["status"])


def load_query(query_id: str, data: dict[str, Any]) -> dict[str, Any]:
    job = jobs.get(query_id)
    if job is not None and job["status"] == "completed":
        return {"next_page": None, "rows": jobs.row_count(query_id)}
    job = jobs.upsert(query_id, kind=KIND, user_id=data.get("user_id"), status="processing", error=None,
                      input={"pages": data.get("pages")}, cursor=(job or {}).get("cursor") or 0)
    return {"next_page": job["cursor"], "rows": jobs.row_count(query_id)}


async def execute_page(query_id: str, page: int, url: str, pages: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{url}/queries/{query_id}", params={"page": page, "pages": pages})
    if response.status_code == 429:
        raise QueryRateLimited(f"rate limited on page {page} (retry-after {response.headers.get('retry-after', '?')} s): the query is paused; resume it later")
    if 400 <= response.status_code < 500:
        raise stepline.NonRetriableError(f"page {page}: the API answered {response.status_code}: {response.text[:200]}")
    response.raise_for_status()  # 5xx: retried
    body = response.json()
    rows = jobs.add_rows(query_id, page, body["items"], page + 1)
    return {"page": page, "inserted": len(body["items"]), "rows": rows, "has_more": body["has_more"], "total_pages": body.get("total_pages")}


@app.function(
    id="execute-query",
    trigger=[stepline.TriggerEvent("query/execute.requested"), stepline.TriggerEvent("crawl/requested")],
    retries=3,
    concurrency=[stepline.Concurrency(limit=1, key="event.data.query_id")],
)
async def execute_query(ctx: stepline.Context) -> dict[str, Any]:
    data = ctx.event.data
    query_id = str(data.get("query_id") or ctx.run_id)
    url = str(data.get("api_url") or os.environ.get("QUERY_API_URL") or fake_api.shared_url()).rstrip("/")
    pages = int(data.get("pages", 3))
    state = await ctx.step.run("load-query", load_query, query_id, data)
    page = state["next_page"]
    if page is None:
        return {"query_id": query_id, "status": "completed", "rows": state["rows"]}
    while True:
        try:
            result = await ctx.step.run("execute-page", execute_page, query_id, page, url, pages)
        except stepline.StepError as exc:
            if exc.name != "QueryRateLimited":
                await ctx.step.run("mark-failed", update, query_id, status="failed", error=exc.error_message)
                raise
            await ctx.step.run("pause-query", update, query_id, status="paused", error=exc.error_message)
            return {"query_id": query_id, "status": "paused", "next_page": page}
        total = result["total_pages"] or page + 1
        progress = round(100 * (page + 1) / total)
        await ctx.set_progress(min(progress, 100), f"page {page + 1} of {total}: {result['rows']} rows")
        await ctx.step.run("save-progress", update, query_id, progress=min(progress, 100))
        if not result["has_more"]:
            break
        await ctx.step.sleep("rate-limit-delay", data.get("pause", "1s"))
        page += 1
    await ctx.step.run("complete-query", update, query_id, status="completed", progress=100)
    return {"query_id": query_id, "status": "completed", "pages": page + 1, "rows": result["rows"]}


@app.function(
    id="execute-query-cancelled",
    trigger=stepline.TriggerEvent("stepline/function.cancelled", if_="event.data.function_id == 'execute-query'"),
)
def mark_cancelled(ctx: stepline.Context) -> None:
    """A run cancelled from the API, the CLI or the dashboard: the job row says so, not ``processing``."""
    jobs.mark_cancelled(ctx.event.data, "query_id", kind=KIND)
