"""Traces: a web request and the background work it caused are one trace.

The spans are collected with the OpenTelemetry SDK's in-memory exporter, from a tracer
provider set for this process (it stays set for the rest of the session: the engine
must behave the same with tracing on). The sender side is real: a web app served by
uvicorn on loopback sends over HTTP with ``stepline.AsyncClient`` to a Stepline server
on loopback, or ``app.send`` in-process, inside a span of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import stepline
from stepline.server.common import ServerOptions
from tests.asgi_live import running
from tests.helpers import eventually, runs_for_event, wait_for, wait_run
from tests.server_live import run_of_event, run_status, serve  # noqa: F401 - fixture
from tests.test_crash import REPO

EXPORTER = InMemorySpanExporter()


def _provider() -> TracerProvider:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _provider()
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def web_tracer() -> trace.Tracer:
    return _provider().get_tracer("tests.web")


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def of_run(exporter: InMemorySpanExporter, run_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("stepline.run.id") == run_id]


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


# --- one trace from a web request over HTTP to the run's steps ------------------------------

signup = stepline.App("obs-signup")


async def _welcome(user: str) -> str:
    return f"welcome {user}"


@signup.function(id="onboard", trigger=stepline.TriggerEvent("obs/signed-up"), retries=0)
async def onboard(ctx: stepline.Context) -> str:
    text = await ctx.step.run("welcome", _welcome, ctx.event.data["user"])
    await ctx.step.sleep("pause", "0.3s")
    await ctx.step.run("follow-up", _welcome, "again")
    return text


def web_app(stepline_url: str) -> Starlette:
    """The user's web app: its request handler (a SERVER span, as an instrumentation
    would make) sends an event to Stepline over HTTP."""

    async def sign_up(request: Request) -> JSONResponse:
        with web_tracer().start_as_current_span("POST /signup", kind=trace.SpanKind.SERVER) as span:
            async with stepline.AsyncClient(stepline_url, "ek") as client:
                (event_id,) = await client.send({"name": "obs/signed-up", "data": {"user": "ada"}})
            return JSONResponse({"event_id": event_id, "trace_id": format(span.get_span_context().trace_id, "032x")})

    return Starlette(routes=[Route("/signup", sign_up, methods=["POST"])])


def test_a_web_request_and_the_run_it_caused_are_one_trace(serve: Any, spans: InMemorySpanExporter) -> None:  # noqa: F811
    server = serve(signup, options=ServerOptions(dev=False, event_key="ek", api_token="tok"))
    with running(web_app(server.url), lifespan="off") as web_url:
        reply = httpx.post(f"{web_url}/signup").json()
    with httpx.Client(base_url=server.url, headers={"authorization": "Bearer tok"}) as api:
        run = run_of_event(api, reply["event_id"])
        assert run_status(api, run["id"])["status"] == "completed"
        stored = api.get(f"/api/v1/events/{reply['event_id']}").json()["body"]
    (web,) = named(spans, "POST /signup")
    web_trace, web_span = ids(web)
    assert format(web_trace, "032x") == reply["trace_id"]
    assert stored["trace"]["traceparent"].startswith(f"00-{reply['trace_id']}-{web_span:016x}-")  # stored with the event

    segments = wait_for(lambda: named(spans, "process onboard") if len(named(spans, "process onboard")) == 2 else None,
                        what="two segments of the run (before and after the sleep)")
    steps = [s for s in of_run(spans, run["id"]) if s.name.startswith("step ")]
    assert sorted(s.name for s in steps) == ["step follow-up", "step welcome"]  # the replayed step made no span
    for span in segments + steps:
        assert ids(span)[0] == web_trace  # one trace: the request, the run, its steps
    for segment in segments:
        assert segment.kind == trace.SpanKind.CONSUMER
        assert segment.parent is not None and segment.parent.span_id == web_span
        assert (segment.attributes or {})["stepline.function.id"] == "onboard"
        assert segment.end_time is not None
    first, second = sorted(segments, key=lambda s: s.start_time or 0)
    assert (first.attributes or {})["stepline.run.outcome"] == "suspended"  # ended at the sleep: no span across it
    assert (second.attributes or {})["stepline.run.outcome"] == "completed"
    assert (first.end_time or 0) <= (second.start_time or 0)
    for step in steps:
        segment = first if step.name == "step welcome" else second
        assert step.kind == trace.SpanKind.INTERNAL
        assert step.parent is not None and step.parent.span_id == ids(segment)[1]
        attributes = dict(step.attributes or {})
        assert attributes["stepline.run.id"] == run["id"]
        assert attributes["stepline.function.id"] == "onboard"
        assert attributes["stepline.step.key"] == step.name.removeprefix("step ")
        assert attributes["stepline.step.attempt"] == 1
        assert isinstance(attributes["stepline.lease.epoch"], int)


# --- the HTTP ingest: headers, the event's own trace, what it refuses -----------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OWN = "00-11111111111111111111111111111111-2222222222222222-01"


def test_the_ingest_takes_the_request_headers_unless_the_event_has_its_own_trace(
    serve: Any, spans: InMemorySpanExporter  # noqa: F811
) -> None:
    server = serve(signup)
    with httpx.Client(base_url=server.url) as client:
        headers = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE", "baggage": "user=ada"}
        by_header, own, malformed = (
            client.post("/e/dev", json=[{"name": "nothing/listens", "data": {}}, {"name": "nothing/listens", "trace": {"traceparent": OWN}}],
                        headers=headers).json()["ids"]
            + client.post("/e/dev", json={"name": "nothing/listens"}, headers={"traceparent": "00-zz-01"}).json()["ids"]
        )
        bodies = {i: client.get(f"/api/v1/events/{i}").json()["body"] for i in (by_header, own, malformed)}
        assert bodies[by_header]["trace"] == {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"}  # no baggage
        assert bodies[own]["trace"] == {"traceparent": OWN}
        assert "trace" not in bodies[malformed]  # a malformed header is ignored

        (event_id,) = client.post("/e/dev", json={"name": "obs/signed-up", "data": {"user": "bo"}}, headers=headers).json()["ids"]
        run = run_of_event(client, event_id)
        run_status(client, run["id"])
    segment = wait_for(lambda: [s for s in of_run(spans, run["id"]) if s.name == "process onboard"], what="the run's span")[0]
    assert format(ids(segment)[0], "032x") == TRACEPARENT.split("-")[1]
    assert segment.parent is not None and format(segment.parent.span_id, "016x") == TRACEPARENT.split("-")[2]


@pytest.mark.parametrize(
    ("trace_field", "problem"),
    [
        ("00-abc", "trace' must be an object"),
        ({"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "version 00"),
        ({"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"}, "non-zero ids"),
        ({"traceparent": TRACEPARENT, "baggage": "user=ada"}, "baggage is not stored"),
        ({"traceparent": TRACEPARENT, "tracestate": 7}, "'trace.tracestate' must be a string"),
    ],
)
def test_a_malformed_trace_in_an_event_is_refused_with_what_to_fix(serve: Any, trace_field: Any, problem: str) -> None:  # noqa: F811
    server = serve(signup)
    with httpx.Client(base_url=server.url) as client:
        reply = client.post("/e/dev", json={"name": "obs/signed-up", "data": {}, "trace": trace_field})
        assert reply.status_code == 400
        assert problem in reply.json()["error"]
        assert client.get("/api/v1/events").json()["data"] == []  # nothing stored


def test_a_long_tracestate_is_cut_to_whole_members(serve: Any) -> None:  # noqa: F811
    server = serve(signup)
    members = [f"v{i:02d}=" + "x" * 60 for i in range(20)]  # 20 members of 64 bytes
    with httpx.Client(base_url=server.url) as client:
        (event_id,) = client.post("/e/dev", json={"name": "nothing/listens", "trace": {"traceparent": OWN, "tracestate": ",".join(members)}}).json()["ids"]
        kept = client.get(f"/api/v1/events/{event_id}").json()["body"]["trace"]["tracestate"]
    assert kept == ",".join(members[:7])  # 7 × 64 + 6 commas ≤ 512 < 8 members


# --- in-process senders, batches -------------------------------------------------------------

chain = stepline.App("obs-chain")


@chain.function(id="parent", trigger=stepline.TriggerEvent("obs/parent"), retries=0)
async def parent(ctx: stepline.Context) -> None:
    await ctx.step.send_event("fan-out", {"name": "obs/child", "data": {}})


@chain.function(id="child", trigger=stepline.TriggerEvent("obs/child"), retries=0)
async def child(ctx: stepline.Context) -> str:
    return await ctx.step.run("work", _welcome, "child")


@chain.function(id="batched", trigger=stepline.TriggerEvent("obs/item"), retries=0, batch_events=stepline.Batch(max_size=2, timeout="10s"))
async def batched(ctx: stepline.Context) -> int:
    return len(ctx.events)


async def test_app_send_and_step_send_event_carry_the_trace(make_engine: Any, spans: InMemorySpanExporter) -> None:
    engine = await make_engine(chain)
    with web_tracer().start_as_current_span("POST /start", kind=trace.SpanKind.SERVER) as request_span:
        (event_id,) = await chain.send({"name": "obs/parent", "data": {}})
    (run,) = await runs_for_event(engine, event_id)
    await wait_run(engine, run["id"])
    child_runs = await eventually(
        lambda: _finished_children(engine), what="the child run that step.send_event started"
    )
    request_trace = request_span.get_span_context().trace_id
    parent_segment = await eventually(lambda: [s for s in of_run(spans, run["id"]) if s.name == "process parent"], what="the parent's span")
    child_segment = await eventually(lambda: [s for s in of_run(spans, child_runs[0]["id"]) if s.name == "process child"], what="the child's span")
    assert ids(parent_segment[0])[0] == request_trace
    assert parent_segment[0].parent is not None and parent_segment[0].parent.span_id == request_span.get_span_context().span_id
    assert ids(child_segment[0])[0] == request_trace  # the event a step sent carried the run's trace on
    assert child_segment[0].parent is not None and child_segment[0].parent.span_id == ids(parent_segment[0])[1]


async def _finished_children(engine: Any) -> list[dict[str, Any]]:
    return [r for r in await engine.list_runs(function_id="child") if r["status"] == "completed"]


async def test_a_batch_run_is_a_new_trace_linked_to_each_event(make_engine: Any, spans: InMemorySpanExporter) -> None:
    engine = await make_engine(chain)
    senders = []
    for n in range(2):
        with web_tracer().start_as_current_span(f"request {n}") as span:
            await chain.send({"name": "obs/item", "data": {"n": n}})
            senders.append(span.get_span_context())
    runs = await eventually(lambda: _finished(engine, "batched"), what="the batch's run")
    segment = await eventually(lambda: [s for s in of_run(spans, runs[0]["id"]) if s.name == "process batched"], what="the batch's span")
    assert segment[0].parent is None  # a root of its own ...
    assert ids(segment[0])[0] not in {s.trace_id for s in senders}
    linked = {(link.context.trace_id, link.context.span_id) for link in segment[0].links}
    assert linked == {(s.trace_id, s.span_id) for s in senders}  # ... linked to both senders


@chain.function(id="debounced", trigger=stepline.TriggerEvent("obs/typing"), retries=0, debounce=stepline.Debounce(period="0.2s"))
async def debounced(ctx: stepline.Context) -> str:
    return str(ctx.event.data["text"])


async def test_a_debounced_run_is_a_new_trace_linked_to_its_event(make_engine: Any, spans: InMemorySpanExporter) -> None:
    engine = await make_engine(chain)
    with web_tracer().start_as_current_span("keystroke") as span:
        await chain.send({"name": "obs/typing", "data": {"text": "hello"}})
    sender = span.get_span_context()
    runs = await eventually(lambda: _finished(engine, "debounced"), what="the debounced run")
    segment = await eventually(lambda: [s for s in of_run(spans, runs[0]["id"]) if s.name == "process debounced"], what="its span")
    assert segment[0].parent is None and ids(segment[0])[0] != sender.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in segment[0].links] == [(sender.trace_id, sender.span_id)]


async def _finished(engine: Any, function_id: str) -> list[dict[str, Any]]:
    return [r for r in await engine.list_runs(function_id=function_id) if r["status"] == "completed"]


# --- without OpenTelemetry --------------------------------------------------------------------

_WITHOUT_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import stepline
from stepline.engine import Engine
from stepline.observability import tracing
from stepline.settings import Settings
from stepline.store import open_store

app = stepline.App("no-otel")

async def hello() -> str:
    return "hello"

@app.function(id="plain", trigger=stepline.TriggerEvent("plain/go"), retries=0)
async def plain(ctx):
    await ctx.step.send_event("pass-on", {"name": "plain/next"})
    return await ctx.step.run("hello", hello)

async def main() -> None:
    assert tracing.tracer() is None and tracing.current_carrier() is None
    engine = Engine(open_store(sys.argv[1]), Settings(db=sys.argv[1], poll_interval=0.05), [app])
    await engine.start()
    try:
        trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        event_id = await app.send({"name": "plain/go", "trace": trace})
        for _ in range(500):
            runs = (await engine.store.get_event(event_id[0]))["runs"]
            if runs and runs[0]["status"] == "completed":
                (sent,) = await engine.store.list_events(name="plain/next")
                print("OUTPUT", runs[0]["output"], (await engine.store.get_event(event_id[0]))["body"]["trace"] == trace,
                      sent["body"].get("trace") == trace)
                return
            await asyncio.sleep(0.02)
        raise SystemExit("the run did not complete")
    finally:
        await engine.stop()

asyncio.run(main())
"""


def test_without_opentelemetry_runs_go_on_and_the_trace_is_stored_and_passed_on(db_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src"), REPO]))
    done = subprocess.run([sys.executable, "-c", _WITHOUT_OTEL, db_url], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "OUTPUT hello True True" in done.stdout  # stored, and passed on by step.send_event

