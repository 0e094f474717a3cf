"""The paginated-query example: a page per step with a durable 1 s pause, rate-limit pause, resume from the cursor.

On the test kit: the pauses and retry backoffs pass when the test clock is moved, not in real time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stepline.examples import jobs, paginated_query
from stepline.examples.fake_api import FakeAPI
from stepline.testing import TestEngine


@pytest.fixture
def api(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    with FakeAPI() as server:
        yield server


def query(api: FakeAPI, query_id: str, pages: int) -> dict[str, Any]:
    return paginated_query.resume_event(query_id, pages=pages, api_url=api.url)  # the example's 1 s pause


def page_hits(api: FakeAPI, query_id: str) -> dict[int, int]:
    prefix = f"/queries/{query_id}?page="
    return {int(path[len(prefix):]): n for path, n in api.hits.items() if path.startswith(prefix)}


async def test_pages_until_has_more_is_false(db_url: str, api: FakeAPI) -> None:
    async with TestEngine(paginated_query.app, db=db_url) as t:
        sent = await t.send(query(api, "q1", pages=3))
        after_first_page = await t.result(sent)
        assert after_first_page.status == "sleeping" and page_hits(api, "q1") == {0: 1}  # the pause is a durable sleep
        await t.advance("1s")
        assert page_hits(api, "q1") == {0: 1, 1: 1}
        await t.advance("1s")
        run = await t.wait(sent)
    assert run.status == "completed", run.error
    assert run.output == {"query_id": "q1", "status": "completed", "pages": 3, "rows": 9}
    kinds = [(key.split(":")[0], step.kind) for key, step in run.steps.items()]
    assert [k for k in kinds if k[0] in ("execute-page", "rate-limit-delay")] == [
        ("execute-page", "run"), ("rate-limit-delay", "sleep"), ("execute-page", "run"), ("rate-limit-delay", "sleep"), ("execute-page", "run"),
    ]
    assert run.progress == 100 and run.progress_message == "page 3 of 3: 9 rows"
    assert page_hits(api, "q1") == {0: 1, 1: 1, 2: 1}
    job = jobs.get("q1")
    assert job is not None and job["status"] == "completed" and jobs.row_count("q1") == 9


async def test_rate_limit_pauses_and_resume_continues_from_the_last_page(db_url: str, api: FakeAPI) -> None:
    api.rate_limit("/queries/q3", after=2, reset_in=30)  # pages 0 and 1 pass, page 2 is rate-limited
    async with TestEngine(paginated_query.app, db=db_url) as t:
        first = await t.send(query(api, "q3", pages=4))
        await t.advance("1s")
        await t.advance("1s")
        paused = await t.wait(first)
        assert paused.status == "completed"
        assert paused.output == {"query_id": "q3", "status": "paused", "next_page": 2}
        job = jobs.get("q3")
        assert job is not None and job["status"] == "paused" and "rate limited on page 2" in job["error"]
        assert job["cursor"] == 2 and jobs.row_count("q3") == 6
        failed_page = paused.step("execute-page:2")
        assert failed_page.attempts == 1 and failed_page.error is not None and failed_page.error.name == "QueryRateLimited"

        second = await t.send(query(api, "q3", pages=4))  # the seed's "Resume" button
        await t.advance("1s")
        resumed = await t.wait(second)
    assert resumed.status == "completed", resumed.error
    assert resumed.output == {"query_id": "q3", "status": "completed", "pages": 4, "rows": 12}
    assert page_hits(api, "q3") == {0: 1, 1: 1, 2: 2, 3: 1}  # pages 0 and 1 were not fetched again
    assert (jobs.get("q3") or {})["status"] == "completed" and jobs.row_count("q3") == 12


async def test_network_errors_retry_the_page(db_url: str, api: FakeAPI) -> None:
    api.stop()  # nothing listening: connection refused
    async with TestEngine(paginated_query.app, db=db_url) as t:
        sent = await t.send(query(api, "q4", pages=1))
        for _ in range(3):  # retries=3, each after its backoff
            assert (await t.result(sent)).wait_reason == "retry_backoff"
            await t.advance("1m")
        run = await t.wait(sent)
    assert run.status == "failed"
    page = run.steps["execute-page"]
    assert page.attempts == 4 and page.error is not None and page.error.name == "ConnectError"
    assert [e.name for e in page.attempt_errors] == ["ConnectError"] * 4
    assert (jobs.get("q4") or {})["status"] == "failed"
