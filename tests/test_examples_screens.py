"""The screen-generation example: one step per screen, progress, retries alone, cost per job.

On the test kit: a provider hiccup's retry backoff passes when the test clock is moved,
and the model calls can be mocked by step id with no provider at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stepline.llm
from stepline.examples import jobs, screens
from stepline.llm import providers
from stepline.testing import Fail, FakeProvider, Reply, TestEngine, server_error


@pytest.fixture
def examples_db(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    monkeypatch.delenv("SCREENS_MODEL", raising=False)


@pytest.fixture
def fake(examples_db: None) -> Iterator[FakeProvider]:
    with FakeProvider(cost_per_mtok=3.0) as server:  # reports usage.cost, as OpenRouter does
        stepline.llm.set_default(server.llm())
        yield server
        stepline.llm.set_default(None)


async def test_screens_with_theme_progress_and_cost(db_url: str, fake: FakeProvider) -> None:
    fake.script(Reply(text=":root{--brand:#f00}"), Reply(text="<h1>home</h1>"), server_error(502), Reply(text="<h1>pricing</h1>"), Reply(text="<h1>faq</h1>"))
    data = {"job_id": "screens-1", "branding": {"name": "Acme"}, "screens": ["home", "pricing", "faq"], "include_theme": True}
    async with TestEngine(screens.app, db=db_url) as t:
        sent = await t.send({"name": "studio/generate.screens", "data": data})
        hiccup = await t.result(sent)
        assert hiccup.wait_reason == "retry_backoff" and hiccup.steps["generate-screen-1"].status == "retrying"
        await t.advance("1m")
        run = await t.wait(sent)
        usage = await t.engine.store.run_usage(run.id)
    assert run.status == "completed", run.error
    assert list(run.steps) == ["mark-processing", "generate-theme", "generate-screen-0", "generate-screen-1", "generate-screen-2", "complete-job"]
    attempts = {key: step.attempts for key, step in run.steps.items()}
    assert attempts["generate-screen-1"] == 2 and attempts["generate-screen-0"] == 1  # only the failed screen retried
    assert len(fake.requests) == 5
    assert "--brand" in fake.requests[1].body["messages"][0]["content"]  # the theme feeds the screens
    assert run.progress == 100 and run.progress_message == "generated 3 of 3 screens"

    output = run.output
    metas = [step.meta for step in run.steps.values() if step.kind == "ai.infer"]
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
    assert usage["calls"] == 4 and usage["cost_usd"] == pytest.approx(output["cost_usd"], abs=1e-6)  # one llm_usage row per model step


async def test_failed_screen_job_is_marked_failed(db_url: str, fake: FakeProvider) -> None:
    fake.on_model("fake-quick", Fail(status=401, message="Incorrect API key provided"))  # a rejected key: no retry
    async with TestEngine(screens.app, db=db_url) as t:
        run = await t.wait(await t.send({"name": "studio/generate.screens", "data": {"job_id": "screens-2", "screens": ["home"]}}))
        handlers = await t.runs("screen-generation-failure")
    assert run.status == "failed" and run.steps["generate-screen-0"].attempts == 1
    assert [h.status for h in handlers] == ["completed"]  # on_failure ran, and had ended when the engine settled
    job = jobs.get("screens-2")
    assert job is not None and job["status"] == "failed" and "API key was refused" in job["error"]


async def test_model_calls_mocked_by_step_id_need_no_provider(db_url: str, examples_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, _ in providers.ENV_VARS:
        monkeypatch.setenv(name, "")  # no provider configured at all
    stepline.llm.set_default(None)
    async with TestEngine(screens.app, db=db_url) as t:
        home = t.mock_step("generate-screen-0", return_value={"text": "<h1>home</h1>", "cost_usd": 0.25,
                                                              "usage": {"prompt_tokens": 100, "completion_tokens": 40}})
        pricing = t.mock_step("generate-screen-1", side_effect=[ConnectionError("the stream dropped"), {"text": "<h1>pricing</h1>", "cost_usd": 0.5}])
        sent = await t.send({"name": "studio/generate.screens", "data": {"job_id": "screens-3", "screens": ["home", "pricing"]}})
        await t.advance("1m")  # screen 1's retry backoff
        run = await t.wait(sent)
    assert run.status == "completed", run.error
    assert home.call_count == 1 and pricing.call_count == 2  # the finished screen was not generated again
    assert home.calls[0].kwargs["model"] == "fake-quick" and "home" in home.calls[0].kwargs["messages"][1]["content"]
    assert run.output["cost_usd"] == pytest.approx(0.75) and run.output["usage"]["prompt_tokens"] == 100
    assert run.steps["generate-screen-1"].attempt_errors[0].message == "the stream dropped"
    job = jobs.get("screens-3")
    assert job is not None and [s["html"] for s in job["output"]["screens"]] == ["<h1>home</h1>", "<h1>pricing</h1>"]
