"""The paginated-query example: a page per step with a pause, rate-limit pause, resume from the cursor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stepline.examples import jobs, paginated_query
from stepline.examples.fake_api import FakeAPI
from tests.helpers import send_and_wait

PAUSE = "100ms"  # the example's default is 1 s between pages


@pytest.fixture
def api(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    with FakeAPI() as server:
        yield server


def query(api: FakeAPI, query_id: str, pages: int) -> dict[str, Any]:
    return paginated_query.resume_event(query_id, pages=pages, api_url=api.url, pause=PAUSE)


def page_hits(api: FakeAPI, query_id: str) -> dict[int, int]:
    prefix = f"/queries/{query_id}?page="
    return {int(path[len(prefix):]): n for path, n in api.hits.items() if path.startswith(prefix)}


async def test_pages_until_has_more_is_false(make_engine, api: FakeAPI) -> None:
    engine = await make_engine(paginated_query.app)
    run = await send_and_wait(engine, query(api, "q1", pages=3))
    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"query_id": "q1", "status": "completed", "pages": 3, "rows": 9}
    kinds = [(s["id"].split(":")[0], s["kind"]) for s in run["steps"]]
    assert [k for k in kinds if k[0] in ("execute-page", "rate-limit-delay")] == [
        ("execute-page", "run"), ("rate-limit-delay", "sleep"), ("execute-page", "run"), ("rate-limit-delay", "sleep"), ("execute-page", "run"),
    ]
    assert run["progress"] == 100 and run["progress_message"] == "page 3 of 3: 9 rows"
    assert page_hits(api, "q1") == {0: 1, 1: 1, 2: 1}
    job = jobs.get("q1")
    assert job is not None and job["status"] == "completed" and jobs.row_count("q1") == 9


async def test_rate_limit_pauses_and_resume_continues_from_the_last_page(make_engine, api: FakeAPI) -> None:
    engine = await make_engine(paginated_query.app)
    api.rate_limit("/queries/q3", after=2, reset_in=30)  # pages 0 and 1 pass, page 2 is rate-limited
    paused = await send_and_wait(engine, query(api, "q3", pages=4))
    assert paused["status"] == "completed"
    assert paused["output"] == {"query_id": "q3", "status": "paused", "next_page": 2}
    job = jobs.get("q3")
    assert job is not None and job["status"] == "paused" and "rate limited on page 2" in job["error"]
    assert job["cursor"] == 2 and jobs.row_count("q3") == 6
    failed_page = next(s for s in paused["steps"] if s["id"] == "execute-page:2")
    assert failed_page["attempts"] == 1 and failed_page["error"]["name"] == "QueryRateLimited"

    resumed = await send_and_wait(engine, query(api, "q3", pages=4))  # the seed's "Resume" button
    assert resumed["status"] == "completed", resumed["error"]
    assert resumed["output"] == {"query_id": "q3", "status": "completed", "pages": 4, "rows": 12}
    assert page_hits(api, "q3") == {0: 1, 1: 1, 2: 2, 3: 1}  # pages 0 and 1 were not fetched again
    assert (jobs.get("q3") or {})["status"] == "completed" and jobs.row_count("q3") == 12


async def test_network_errors_retry_the_page(make_engine, api: FakeAPI) -> None:
    engine = await make_engine(paginated_query.app)
    api.stop()  # nothing listening: connection refused
    event = query(api, "q4", pages=1)
    run = await send_and_wait(engine, event)
    assert run["status"] == "failed"
    page = next(s for s in run["steps"] if s["id"] == "execute-page")
    assert page["attempts"] == 4 and page["error"]["name"] == "ConnectError"  # retries=3
    assert (jobs.get("q4") or {})["status"] == "failed"
