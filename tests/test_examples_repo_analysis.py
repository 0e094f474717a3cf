"""The repository-analysis example: five durable steps, exact rate-limit waits, on_failure, crash resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stepline.examples import jobs, repo_analysis
from stepline.examples.fake_api import COMMITS_PER_REPO, FakeAPI
from tests.helpers import eventually, runs_for_event, send_and_wait, wait_run

STEPS = ["load-job-context", "fetch-commit-list", "fetch-commit-details", "compute-analysis", "save-results"]


@pytest.fixture
def api(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    with FakeAPI() as server:
        yield server


def event(api: FakeAPI, job_id: str, repo: str = "acme/web") -> dict[str, Any]:
    return {"name": "repo/analyze.requested", "data": {"job_id": job_id, "user_id": "u1", "repo": repo, "api_url": api.url}}


def list_hits(api: FakeAPI) -> list[int]:
    return [count for path, count in sorted(api.hits.items()) if path.startswith("/repos/acme/web/commits?")]


async def test_rate_limit_waits_until_the_reset_then_completes(make_engine, api: FakeAPI) -> None:
    api.rate_limit("/repos/acme/web/commits/", times=1, reset_in=1)  # the first detail request hits the limit
    engine = await make_engine(repo_analysis.app)
    run = await send_and_wait(engine, event(api, "repo-1"))
    assert run["status"] == "completed", run["error"]
    assert [s["id"] for s in run["steps"]] == STEPS
    details = run["steps"][2]
    assert details["attempts"] == 2
    error = details["attempt_history"][0]["error"]
    assert error["name"] == "RetryAfterError" and "retrying at the reset time" in error["message"]
    assert run["output"]["commits"] == COMMITS_PER_REPO and run["output"]["vibe"]
    assert list_hits(api) == [1, 1, 1]  # three pages, each fetched once
    job = jobs.get("repo-1")
    assert job is not None and job["status"] == "completed" and job["output"] == run["output"]


async def test_on_failure_marks_the_job_errored(make_engine, api: FakeAPI) -> None:
    engine = await make_engine(repo_analysis.app)
    run = await send_and_wait(engine, event(api, "repo-2", repo="acme/web/oops"))
    assert run["status"] == "failed"

    async def errored() -> dict[str, Any] | None:
        job = jobs.get("repo-2")
        return job if job and job["status"] == "error" else None

    job = await eventually(errored, what="on_failure to mark the job")
    assert "answered 404" in job["error"] and "check the repository name" in job["error"]


async def test_crash_mid_way_resumes_from_the_last_completed_step(make_engine, api: FakeAPI) -> None:
    api.delay("/repos/acme/web/commits/", 60, times=1)  # the first detail request hangs
    first = await make_engine(repo_analysis.app)
    event_id = await first.send(event(api, "repo-3"))
    run = (await runs_for_event(first, event_id))[0]

    async def stuck_in_details() -> bool:
        return any(path.startswith("/repos/acme/web/commits/") for path in api.hits)

    await eventually(stuck_in_details, what="the details step to start")
    await first.stop(grace=0.1)  # the worker goes away with fetch-commit-details in flight

    second = await make_engine(repo_analysis.app)
    done = await wait_run(second, run["id"])
    assert done["status"] == "completed", done["error"]
    assert [s["id"] for s in done["steps"]] == STEPS
    assert list_hits(api) == [1, 1, 1]  # the committed commit-list step did not run again
    detail_hits = [count for path, count in api.hits.items() if path.startswith("/repos/acme/web/commits/")]
    assert len(detail_hits) == COMMITS_PER_REPO and max(detail_hits) == 2  # only the in-flight request repeated
