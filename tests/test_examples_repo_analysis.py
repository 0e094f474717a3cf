"""The repository-analysis example: five durable steps, exact rate-limit waits, on_failure, crash resume.

The rate limit and on_failure run on the test kit (the wait until the reset passes when the
test clock is moved); the crash needs two engines and runs on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stepline.examples import jobs, repo_analysis
from stepline.examples.fake_api import COMMITS_PER_REPO, FakeAPI
from stepline.testing import TestEngine
from tests.helpers import eventually, runs_for_event, wait_run

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


async def test_rate_limit_waits_until_the_reset_then_completes(db_url: str, api: FakeAPI) -> None:
    api.rate_limit("/repos/acme/web/commits/", times=1, reset_in=30)  # the first detail request hits the limit
    async with TestEngine(repo_analysis.app, db=db_url) as t:
        sent = await t.send(event(api, "repo-1"))
        limited = await t.result(sent)
        details = limited.steps["fetch-commit-details"]
        assert limited.wait_reason == "retry_backoff" and details.status == "retrying"
        await t.advance("20s")
        assert (await t.result(sent)).steps["fetch-commit-details"].attempts == 1  # not yet: the reset is 30 s away
        await t.advance("1m")  # past the reset (counted from the real time the API answered)
        run = await t.wait(sent)
    assert run.status == "completed", run.error
    assert list(run.steps) == STEPS
    details = run.steps["fetch-commit-details"]
    assert details.attempts == 2
    error = details.attempt_errors[0]
    assert error.name == "RetryAfterError" and "retrying at the reset time" in error.message
    assert run.output["commits"] == COMMITS_PER_REPO and run.output["vibe"]
    assert list_hits(api) == [1, 1, 1]  # three pages, each fetched once
    job = jobs.get("repo-1")
    assert job is not None and job["status"] == "completed" and job["output"] == run.output


async def test_on_failure_marks_the_job_errored(db_url: str, api: FakeAPI) -> None:
    async with TestEngine(repo_analysis.app, db=db_url) as t:
        run = await t.wait(await t.send(event(api, "repo-2", repo="acme/web/oops")))
        handlers = await t.runs("analyze-repo-failure")
    assert run.status == "failed"
    assert [h.status for h in handlers] == ["completed"]  # it had ended when the engine settled
    job = jobs.get("repo-2")
    assert job is not None and job["status"] == "error"
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
