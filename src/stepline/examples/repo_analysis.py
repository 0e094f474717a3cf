"""Repository analysis (Vibe Coding Profile): five durable steps against a paginated API.

load-job-context → fetch-commit-list (every page) → fetch-commit-details →
compute-analysis → save-results. Each step's result is checkpointed, so a crash
mid-way resumes from the last completed step. A 403 with ``X-RateLimit-Reset``
becomes ``RetryAfterError`` for exactly the time until the reset; ``on_failure``
marks the job ``error`` with the message.

The API is SIMULATED (``fake_api.py``) unless ``data.api_url`` or ``REPO_API_URL`` says otherwise.

Try: ``stepline send repo/analyze.requested --data '{"job_id":"j1","user_id":"u1","repo":"acme/web"}'``
"""

from __future__ import annotations

import collections
import datetime as dt
import os
from typing import Any

import httpx

import stepline
from stepline.examples import fake_api, jobs

app = stepline.App("repo-analysis")
KIND = "repo-analysis"
PER_PAGE = 5


def api_url(data: dict[str, Any]) -> str:
    return str(data.get("api_url") or os.environ.get("REPO_API_URL") or fake_api.shared_url()).rstrip("/")


def check(response: httpx.Response) -> Any:
    """The JSON body, or the error the engine should act on."""
    if response.status_code == 403 and response.headers.get("x-ratelimit-remaining") == "0":
        reset = dt.datetime.fromtimestamp(int(response.headers["x-ratelimit-reset"]), dt.UTC)
        raise stepline.RetryAfterError(f"API rate limit: retrying at the reset time {reset.isoformat()}", reset)
    if response.status_code in (401, 404):
        raise stepline.NonRetriableError(f"{response.request.url} answered {response.status_code}: check the repository name and the token")
    response.raise_for_status()  # 5xx and the rest: retried with backoff
    return response.json()


async def load_job_context(data: dict[str, Any]) -> dict[str, Any]:
    job_id = str(data["job_id"])
    if "/" not in str(data.get("repo", "")):
        raise stepline.NonRetriableError("data.repo must look like owner/name")
    jobs.upsert(job_id, kind=KIND, user_id=data.get("user_id"), status="processing", input={"repo": data["repo"]})
    return {"job_id": job_id, "repo": data["repo"], "api_url": api_url(data)}


async def fetch_commit_list(job: dict[str, Any]) -> list[dict[str, Any]]:
    commits: list[dict[str, Any]] = []
    url: str | None = f"{job['api_url']}/repos/{job['repo']}/commits?page=1&per_page={PER_PAGE}"
    async with httpx.AsyncClient(timeout=30) as client:
        while url:
            response = await client.get(url)
            commits += [{"sha": c["sha"], "date": c["commit"]["author"]["date"]} for c in check(response)]
            url = response.links.get("next", {}).get("url")
    return commits


async def fetch_commit_details(job: dict[str, Any], commits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    details = []
    async with httpx.AsyncClient(timeout=30) as client:
        for commit in commits:
            body = check(await client.get(f"{job['api_url']}/repos/{job['repo']}/commits/{commit['sha']}"))
            details.append({**commit, "files": [f["filename"] for f in body["files"]],
                            "changed": sum(f["additions"] + f["deletions"] for f in body["files"])})
    return details


def compute_analysis(details: list[dict[str, Any]]) -> dict[str, Any]:
    areas = collections.Counter(path.split("/")[1] for d in details for path in d["files"])
    hours = collections.Counter(int(d["date"][11:13]) for d in details)
    busiest = max(hours, key=lambda h: hours[h]) if hours else None
    vibe = "night owl" if busiest is not None and busiest >= 18 else "early bird" if busiest is not None and busiest < 11 else "steady"
    return {
        "commits": len(details),
        "lines_changed": sum(d["changed"] for d in details),
        "top_areas": [area for area, _ in areas.most_common(3)],
        "busiest_hour": busiest,
        "vibe": vibe,
    }


def save_results(job_id: str, analysis: dict[str, Any]) -> str:
    return str(jobs.upsert(job_id, status="completed", progress=100, output=analysis)["status"])


def mark_errored(ctx: stepline.Context) -> None:
    """on_failure: the job row says ``error`` with the message, as the seed's hook does."""
    original = ctx.event.data.get("event", {}).get("data", {})
    message = str(ctx.event.data.get("error", {}).get("message", "failed"))
    jobs.upsert(str(original.get("job_id") or ctx.event.data.get("run_id")), kind=KIND, status="error", error=message)


@app.function(
    id="analyze-repo",
    trigger=stepline.TriggerEvent("repo/analyze.requested"),
    retries=5,
    on_failure=mark_errored,
)
async def analyze_repo(ctx: stepline.Context) -> dict[str, Any]:
    data = {**ctx.event.data, "job_id": ctx.event.data.get("job_id") or ctx.run_id}
    job = await ctx.step.run("load-job-context", load_job_context, data)
    commits = await ctx.step.run("fetch-commit-list", fetch_commit_list, job)
    await ctx.set_progress(30, f"{len(commits)} commits listed")
    details = await ctx.step.run("fetch-commit-details", fetch_commit_details, job, commits)
    await ctx.set_progress(70, "details fetched")
    analysis: dict[str, Any] = await ctx.step.run("compute-analysis", compute_analysis, details)
    await ctx.step.run("save-results", save_results, job["job_id"], analysis)
    await ctx.set_progress(100, "done")
    return analysis


@app.function(
    id="analyze-repo-cancelled",
    trigger=stepline.TriggerEvent("stepline/function.cancelled", if_="event.data.function_id == 'analyze-repo'"),
)
def mark_cancelled(ctx: stepline.Context) -> None:
    """A run cancelled from the API, the CLI or the dashboard: the job row says so, not ``processing``."""
    jobs.mark_cancelled(ctx.event.data, "job_id", kind=KIND)
