"""The screen-generation example: one step per screen, progress, retries alone, cost per job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stepline.llm
from stepline.examples import jobs, screens
from stepline.testing import Fail, FakeProvider, Reply, server_error
from tests.helpers import eventually, send_and_wait


@pytest.fixture
def fake(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    monkeypatch.delenv("SCREENS_MODEL", raising=False)
    with FakeProvider(cost_per_mtok=3.0) as server:  # reports usage.cost, as OpenRouter does
        stepline.llm.set_default(server.llm())
        yield server
        stepline.llm.set_default(None)


async def test_screens_with_theme_progress_and_cost(make_engine, fake: FakeProvider) -> None:
    engine = await make_engine(screens.app)
    fake.script(Reply(text=":root{--brand:#f00}"), Reply(text="<h1>home</h1>"), server_error(502), Reply(text="<h1>pricing</h1>"), Reply(text="<h1>faq</h1>"))
    data = {"job_id": "screens-1", "branding": {"name": "Acme"}, "screens": ["home", "pricing", "faq"], "include_theme": True}
    run = await send_and_wait(engine, {"name": "studio/generate.screens", "data": data})
    assert run["status"] == "completed", run["error"]
    ids = [s["id"] for s in run["steps"]]
    assert ids == ["mark-processing", "generate-theme", "generate-screen-0", "generate-screen-1", "generate-screen-2", "complete-job"]
    attempts = {s["id"]: s["attempts"] for s in run["steps"]}
    assert attempts["generate-screen-1"] == 2 and attempts["generate-screen-0"] == 1  # only the failed screen retried
    assert len(fake.requests) == 5
    assert "--brand" in fake.requests[1].body["messages"][0]["content"]  # the theme feeds the screens
    assert run["progress"] == 100 and run["progress_message"] == "generated 3 of 3 screens"

    output = run["output"]
    metas = [s["meta"] for s in run["steps"] if s["kind"] == "ai.infer"]
    assert output["screen_count"] == 3
    assert output["usage"]["prompt_tokens"] == sum(m["usage"]["prompt_tokens"] for m in metas)
    assert output["cost_usd"] == pytest.approx(sum(m["cost_usd"] for m in metas)) and output["cost_usd"] > 0
    job = jobs.get("screens-1")
    assert job is not None and job["status"] == "completed" and job["progress"] == 100
    assert [s["html"] for s in job["output"]["screens"]] == ["<h1>home</h1>", "<h1>pricing</h1>", "<h1>faq</h1>"]
    assert job["cost_usd"] == pytest.approx(output["cost_usd"])

    metrics = jobs.metrics(screens.KIND)
    assert metrics["jobs"] == 1 and metrics["success_rate"] == 100.0
    assert metrics["average_duration_s"] is not None
    assert metrics["daily"][0]["cost"] == pytest.approx(output["cost_usd"])

    usage = await engine.store.db.read(lambda conn: conn.all("SELECT step_key, cost_usd FROM llm_usage WHERE run_id = ?", (run["id"],)))
    assert sorted(r["step_key"] for r in usage) == ["generate-screen-0", "generate-screen-1", "generate-screen-2", "generate-theme"]


async def test_failed_screen_job_is_marked_failed(make_engine, fake: FakeProvider) -> None:
    engine = await make_engine(screens.app)
    fake.on_model("fake-quick", Fail(status=401, message="Incorrect API key provided"))  # a rejected key: no retry
    data = {"job_id": "screens-2", "screens": ["home"]}
    run = await send_and_wait(engine, {"name": "studio/generate.screens", "data": data})
    assert run["status"] == "failed"

    async def marked() -> bool:
        job = jobs.get("screens-2")
        return job is not None and job["status"] == "failed"

    await eventually(marked, what="on_failure to mark the job failed")
    assert "API key was refused" in (jobs.get("screens-2") or {})["error"]
