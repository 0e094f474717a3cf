"""The chat example: the FastAPI routes over the Router, the queued function, poll and cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import stepline.llm
from stepline.examples import chat, chat_api, jobs
from stepline.testing import FakeProvider, Reply, server_error
from tests.helpers import eventually, runs_for_event, wait_run


@pytest.fixture
def fake(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STEPLINE_EXAMPLES_DB", str(tmp_path / "examples.db"))
    for name in ("USE_QUEUE", "QUICK_MODELS", "SLOW_MODELS", "CHAT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with FakeProvider() as server:
        stepline.llm.set_default(server.llm())
        yield server
        stepline.llm.set_default(None)


@pytest.fixture
async def web(make_engine, fake: FakeProvider) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    engine = await make_engine(chat.app)
    api = chat_api.create_api(chat.make_router(chat.app), chat.app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://chat") as client:
        yield engine, client


async def poll_job(client: httpx.AsyncClient, job_id: str, *statuses: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = (await client.get(f"/chat/jobs/{job_id}")).json()
        return job if job["status"] in statuses else None

    return await eventually(check, what=f"job {job_id} to be {statuses}")


async def test_quick_model_answers_inline(web, fake: FakeProvider) -> None:
    engine, client = web
    reply = (await client.post("/chat", json={"user_id": "u1", "model": "fake-quick", "prompt": "hello"})).json()
    assert reply["status"] == "completed" and reply["route"] == "quick model"
    assert reply["text"] == "Simulated reply from fake-quick: hello"
    job = (await client.get(f"/chat/jobs/{reply['job_id']}")).json()
    assert job["status"] == "completed" and job["output"]["text"] == reply["text"]
    assert await engine.list_runs() == []  # nothing was queued


async def test_slow_model_is_queued_and_polled_to_completion(web, fake: FakeProvider) -> None:
    engine, client = web
    fake.script(server_error(503), Reply(text="a considered answer"))  # one provider hiccup, retried by the step
    reply = (await client.post("/chat", json={"user_id": "u2", "model": "fake-slow", "prompt": "think hard"})).json()
    assert reply["status"] == "pending" and reply["route"] == "slow model"
    job = await poll_job(client, reply["job_id"], "completed", "failed")
    assert job["status"] == "completed" and job["output"]["text"] == "a considered answer"
    assert job["prompt_tokens"] > 0 and job["completion_tokens"] > 0
    run = (await runs_for_event(engine, reply["event_id"]))[0]
    run = await wait_run(engine, run["id"])
    assert run["status"] == "completed" and run["user_id"] == "u2"
    assert [s["id"] for s in run["steps"]] == ["validate-context", "mark-processing", "call-model", "store-result", "notify"]
    call = run["steps"][2]
    assert call["kind"] == "ai.infer" and call["attempts"] == 2
    topics = [m["topic"] for m in await engine.store.run_messages(run["id"])]
    assert "ai" in topics and topics[-1] == "status"


async def test_reasoning_models_and_large_contexts_are_queued(web, fake: FakeProvider) -> None:
    _, client = web
    reasoning = (await client.post("/chat", json={"user_id": "u3", "model": "o3-mini", "prompt": "x"})).json()
    assert reasoning["status"] == "pending" and reasoning["route"] == "reasoning model"
    big = (await client.post("/chat", json={"user_id": "u3", "model": "fake-quick", "prompt": "word " * 20000})).json()
    assert big["status"] == "pending" and big["route"].startswith("large context")
    for job_id in (reasoning["job_id"], big["job_id"]):
        assert (await poll_job(client, job_id, "completed", "failed"))["status"] == "completed"


async def test_cancel_stops_a_queued_generation(web, fake: FakeProvider) -> None:
    engine, client = web
    fake.on_model("fake-slow", Reply(text="never finished", delay=60))
    reply = (await client.post("/chat", json={"user_id": "u4", "model": "fake-slow", "prompt": "long one"})).json()
    await eventually(lambda: _value(len(fake.requests) == 1), what="the model call to start")
    cancelled = (await client.post(f"/chat/jobs/{reply['job_id']}/cancel")).json()
    assert cancelled == {"job_id": reply["job_id"], "status": "cancelling"}
    run = (await runs_for_event(engine, reply["event_id"]))[0]
    run = await wait_run(engine, run["id"])
    assert run["status"] == "cancelled"
    await poll_job(client, reply["job_id"], "cancelled")  # told by stepline/function.cancelled
    await eventually(lambda: _value(fake.disconnects == 1), what="the provider call to be abandoned")


async def test_a_cancel_event_from_elsewhere_marks_the_job_cancelled(web, fake: FakeProvider) -> None:
    """cancel_on, sent by any service (not the page's cancel route): the job row must not stay processing."""
    engine, client = web
    fake.on_model("fake-slow", Reply(text="never finished", delay=60))
    reply = (await client.post("/chat", json={"user_id": "u6", "model": "fake-slow", "prompt": "long one"})).json()
    await poll_job(client, reply["job_id"], "processing")
    await engine.send({"name": "llm/generate.cancel", "data": {"job_id": reply["job_id"]}})
    assert (await poll_job(client, reply["job_id"], "cancelled", "completed", "failed"))["status"] == "cancelled"


async def test_use_queue_false_sends_everything_direct(make_engine, fake: FakeProvider) -> None:
    await make_engine(chat.app)
    router = chat.make_router(chat.app, env={"USE_QUEUE": "false"})
    reply = await router.generate(user_id="u5", model="fake-slow", messages=[{"role": "user", "content": "now"}])
    assert reply["status"] == "completed" and reply["route"].startswith("queue disabled")
    swapped = chat.make_router(chat.app, env={"QUICK_MODELS": "fake-slow", "SLOW_MODELS": "fake-quick"})
    assert not swapped.route("fake-slow", "x").queued and swapped.route("fake-quick", "x").queued


async def test_a_bad_request_marks_the_job_failed(web, fake: FakeProvider) -> None:
    engine, client = web
    job_id = "job-without-prompt"
    jobs.upsert(job_id, kind="chat", status="pending")
    await engine.send({"name": "llm/generate.requested", "data": {"job_id": job_id, "user_id": "u6"}})
    job = await poll_job(client, job_id, "failed")
    assert "neither messages nor a prompt" in job["error"]


async def _value(value: Any) -> Any:
    return value
