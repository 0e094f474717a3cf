"""Hostile input, generated: every way an event or SDK request enters, against a real
server on loopback, on both backends.

The property: never a 5xx; every 4xx says what is wrong and where; every accepted event
reads back unchanged through the API, and the event list always answers. Generated
JSON reaches the edges on purpose: nesting around every depth limit, integers around
64 bits, NaN, lone surrogates and NUL, long dotted names and ids.

Examples are derandomized (the same on every run, so CI is reproducible); set
STEPLINE_FUZZ_EXAMPLES to run more of them locally.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline import errors
from stepline import event as event_mod
from tests import apps_hostile
from tests.server_live import LiveServer, run_of_event, run_status, serve  # noqa: F401 - fixture

EXAMPLES = int(os.environ.get("STEPLINE_FUZZ_EXAMPLES", "50"))  # per test and backend: 600 in all
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SDK = {"X-Inngest-SDK": "inngest-js:v3.27.0"}
MIN_TS, MAX_TS = event_mod.MIN_TS, event_mod.MAX_TS

# --- generated JSON ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Nest:
    """``inner`` inside ``depth`` arrays or objects: written as text (encoders stop near 255)."""

    depth: int
    inner: Any
    objects: bool

    def expanded(self) -> Any:
        value = self.inner
        for _ in range(self.depth):
            value = {"k": value} if self.objects else [value]
        return value


EDGE_INTS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30]
DEPTHS = [1, 2, 62, 63, 64, 65, 66, 67, 127, 253, 254, 255, 256, 1023, 1024, 1025, 3000]

texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # surrogates and NUL included
numbers = st.one_of(st.sampled_from(EDGE_INTS), st.integers(), st.floats())  # NaN and infinities included
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=20
)
nests = st.builds(Nest, st.sampled_from(DEPTHS), st.one_of(st.just({}), scalars), st.booleans())
datas = st.one_of(
    st.dictionaries(texts, st.one_of(json_values, nests), max_size=5),
    st.fixed_dictionaries({"d": st.sampled_from(EDGE_INTS), "n": st.sampled_from(EDGE_INTS), "floor": st.sampled_from(EDGE_INTS)}),
    st.fixed_dictionaries({}, optional={"user_id": st.one_of(texts, st.text(min_size=250, max_size=300), st.sampled_from(EDGE_INTS))}),
    nests, json_values,  # not objects: refused
)
names = st.one_of(
    st.sampled_from(["h/div", "h/ovf", "h/keys", "h/long-keys", "h/echo.a", "h/reply", "h/cancel.stop", "fuzz/x", "inngest/x", "", " "]),
    texts,
    st.builds(lambda stem, sep, n, tail: stem + sep * n + tail,
              st.sampled_from(["h/echo.", "fuzz/", ""]), st.sampled_from([".", "/"]), st.sampled_from([1, 120, 254, 255, 5000, 40_000]), texts),
    st.text(min_size=250, max_size=260),
)
event_ids = st.one_of(st.none(), st.just(""), texts, st.text(min_size=250, max_size=300), st.sampled_from(EDGE_INTS))
stamps = st.one_of(st.sampled_from([0, 0.0, -1, 1.5, MIN_TS - 1, MIN_TS, MAX_TS, MAX_TS + 1, 1e20, -1e20, "now", True]), st.integers(), st.floats())
events = st.fixed_dictionaries(
    {"name": names},
    optional={"data": st.one_of(st.none(), datas), "id": event_ids, "ts": stamps, "v": st.one_of(st.none(), texts, numbers),
              "user": st.one_of(st.none(), st.just({}), st.dictionaries(st.sampled_from(["id", "email"]), scalars, max_size=2)),
              "meta": json_values},
)
bodies = st.one_of(events, st.lists(events, max_size=4), json_values, nests)


def render(value: Any, ascii_only: bool) -> str:
    """JSON text for ``value`` as a sender might write it (NaN as ``NaN``, surrogates as they are)."""
    if isinstance(value, Nest):
        opener, closer = ('{"k": ', "}") if value.objects else ("[", "]")
        return opener * value.depth + render(value.inner, ascii_only) + closer * value.depth
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: {render(v, ascii_only)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def expanded(value: Any) -> Any:
    if isinstance(value, Nest):
        return value.expanded()
    if isinstance(value, dict):
        return {k: expanded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expanded(v) for v in value]
    return value


# --- what the server must answer ---------------------------------------------------------------

# A refusal says where the problem is: an event by its index, or the request body.
NAMED_PROBLEM = re.compile(r"^(event\[\d+\]|the request body|request body|event name )")


def assert_refusal_names_the_problem(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text
    assert reply.status_code in (400, 413), reply.text
    message = reply.json()["error"]
    assert isinstance(message, str) and NAMED_PROBLEM.match(message), message
    assert "internal error" not in message and not message.startswith("bad request:"), message


def expected_body(event: dict[str, Any], *, sdk: bool) -> dict[str, Any]:
    """The stored body an accepted event must read back as (documented normalisation)."""
    event = expanded(event)
    if sdk:  # the SDKs' "not set" values and their extra fields go
        event = {k: v for k, v in event.items() if k in ("name", "data", "id", "user", "ts", "v") and v is not None}
        if event.get("id") == "":
            del event["id"]
        if event.get("ts") in (0, 0.0):
            del event["ts"]
    if isinstance(event.get("data"), dict):  # the server's data._inngest goes, whoever sends it
        event["data"] = {k: v for k, v in event["data"].items() if k != "_inngest"}
    out: dict[str, Any] = {"name": event["name"], "data": event.get("data") or {}}
    if event.get("user"):
        out["user"] = event["user"]
    if event.get("id") is not None:
        out["id"] = event["id"]
    if event.get("ts") is not None:
        out["ts"] = int(event["ts"])
    if event.get("v") is not None:
        out["v"] = event["v"]
    return out


class Ingest:
    """One server, the events it accepted (by the sender's id, for de-duplication), and the checks."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=120)
        self.first_of_id: dict[str, str] = {}

    def check_accepted(self, sent: list[Any], ids: list[str], *, sdk: bool) -> None:
        assert len(ids) == len(sent)
        for event, event_id in zip(sent, ids, strict=True):
            want = expected_body(event, sdk=sdk)
            external = want.get("id")
            if external is not None and external in self.first_of_id:
                assert event_id == self.first_of_id[external]  # a repeated id is the first event
                continue
            if external is not None:
                self.first_of_id[external] = event_id
            detail = self.client.get(f"/api/v1/events/{event_id}")
            assert detail.status_code == 200, detail.text
            body = detail.json()["body"]
            if "ts" not in want:
                assert isinstance(body.pop("ts"), int)
            if "id" not in want:
                assert body.pop("id") == event_id
            assert body == want

    def check_reads(self) -> None:
        listed = self.client.get("/api/v1/events", params={"limit": 200})
        assert listed.status_code == 200, listed.text


@pytest.fixture
def ingest(serve) -> Iterator[Ingest]:  # noqa: F811
    """A server with a run waiting for ``h/reply`` and one cancellable by ``h/cancel.stop``,
    so generated events reach waits and cancel rules as well as triggers."""
    server: LiveServer = serve(apps_hostile.app)
    target = Ingest(server)
    client = target.client
    for name, status in (("h/wait.start", "waiting"), ("h/cancel.start", "sleeping")):
        event_id = client.post("/e/dev", json={"name": name, "data": {"floor": 0}}).json()["ids"][0]
        run_status(client, run_of_event(client, event_id)["id"], status)
    yield target
    target.client.close()


def post(target: Ingest, path: str, body: Any, ascii_only: bool, headers: dict[str, str] | None = None) -> httpx.Response:
    content = render(body, ascii_only).encode("utf-8", errors="surrogatepass")
    return target.client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})


def as_list(body: Any) -> list[Any]:
    return body if isinstance(body, list) else [body]


# --- the ways in ---------------------------------------------------------------------------------


@FUZZ
@given(body=bodies, ascii_only=st.booleans())
def test_native_event_route(ingest: Ingest, body: Any, ascii_only: bool) -> None:
    reply = post(ingest, "/e/dev", body, ascii_only)
    if reply.status_code == 200:
        ingest.check_accepted(as_list(body), reply.json()["ids"], sdk=False)
    else:
        assert_refusal_names_the_problem(reply)
    ingest.check_reads()


@FUZZ
@given(body=bodies, ascii_only=st.booleans())
def test_sdk_shaped_event_route(ingest: Ingest, body: Any, ascii_only: bool) -> None:
    reply = post(ingest, "/e/dev", body, ascii_only, SDK)
    if reply.status_code == 200:
        ingest.check_accepted(as_list(body), reply.json()["ids"], sdk=True)
    else:
        assert_refusal_names_the_problem(reply)
        assert reply.json()["ids"] == [] and reply.json()["status"] == reply.status_code
    ingest.check_reads()


@FUZZ
@given(body=st.lists(events, min_size=1, max_size=3), ascii_only=st.booleans())
def test_api_event_route(ingest: Ingest, body: Any, ascii_only: bool) -> None:
    reply = post(ingest, "/api/v1/events", body, ascii_only)
    if reply.status_code == 200:
        ingest.check_accepted(body, reply.json()["ids"], sdk=False)
    else:
        assert_refusal_names_the_problem(reply)
    ingest.check_reads()


python_values = st.recursive(
    st.one_of(scalars, st.tuples(scalars)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.one_of(texts, st.integers()), inner, max_size=3)),
    max_leaves=12,
)


def plain(value: Any) -> Any:
    """What JSON makes of a Python value (tuples are arrays)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@FUZZ
@given(name=names, data=st.one_of(st.dictionaries(texts, python_values, max_size=4), nests.map(Nest.expanded)))
def test_in_process_send(ingest: Ingest, name: str, data: Any) -> None:
    event = {"name": name, "data": data}
    try:
        event_id = ingest.server.call(lambda engine: engine.send(event))
    except errors.EventError as exc:
        assert NAMED_PROBLEM.match(str(exc)), str(exc)
        return
    body = ingest.client.get(f"/api/v1/events/{event_id}").json()["body"]
    assert body["name"] == name and body["data"] == plain(data)
    assert not any(isinstance(x, float) and math.isnan(x) for x in _leaves(body["data"]))


def _leaves(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
        else:
            yield current


step = st.fixed_dictionaries({"step": st.fixed_dictionaries(
    {"id": st.just("step"), "runtime": st.fixed_dictionaries({"url": st.sampled_from(["http://127.0.0.1:9/api/inngest", 1, ""])})}
)})
sdk_functions = st.fixed_dictionaries(
    {"id": st.one_of(texts, st.text(min_size=250, max_size=300)), "steps": step,
     "triggers": st.lists(st.one_of(st.fixed_dictionaries({"event": names}, optional={"expression": texts}),
                                    st.fixed_dictionaries({"cron": texts}), json_values), max_size=2)},
    optional={"name": texts, "concurrency": json_values, "cancel": json_values, "priority": json_values,
              "debounce": json_values, "idempotency": texts, "extra": st.one_of(json_values, nests)},
)
registrations = st.one_of(
    st.fixed_dictionaries({"url": st.sampled_from(["http://127.0.0.1:9/api/inngest", "nope"]),
                           "appName": st.one_of(st.just("fuzz-app"), texts), "functions": st.lists(sdk_functions, max_size=2)},
                          optional={"sdk": texts, "v": texts, "framework": texts}),
    json_values, nests,
)


@FUZZ
@given(body=registrations, ascii_only=st.booleans())
def test_sdk_registration_route(ingest: Ingest, body: Any, ascii_only: bool) -> None:
    reply = post(ingest, "/fn/register", body, ascii_only)
    assert reply.status_code < 500, reply.text
    if reply.status_code != 200:
        message = reply.json()["error"]
        assert isinstance(message, str) and message and "internal error" not in message, message
    ingest.check_reads()


@FUZZ
@given(signal=st.one_of(texts, json_values), data=st.one_of(json_values, nests), slug=st.one_of(texts, st.just("echo")),
       ascii_only=st.booleans())
def test_signal_and_invoke_routes(ingest: Ingest, signal: Any, data: Any, slug: str, ascii_only: bool) -> None:
    for path, body in (("/v1/signals", {"signal": signal, "data": data}), ("/invoke/" + quote(slug, safe=""), {"data": data})):
        reply = post(ingest, path, body, ascii_only)
        assert reply.status_code < 500, reply.text
        if reply.status_code >= 400:
            message = reply.json()["error"]
            assert isinstance(message, str) and message and "internal error" not in message, message
    ingest.check_reads()


def query_value(text: str) -> str:
    """``text`` percent-encoded as UTF-8, lone surrogates as the bytes a careless client sends."""
    return quote(text.encode("utf-8", errors="surrogatepass"), safe="")


@FUZZ
@given(
    route=st.sampled_from(["cancel", "replay", "rerun-from-failed-step", "token", "bulk-cancel"]),
    body=st.one_of(json_values, nests, st.fixed_dictionaries({}, optional={
        "reason": st.one_of(texts, json_values), "function_id": st.one_of(texts, json_values), "since": st.one_of(stamps, texts),
        "until": st.one_of(stamps, texts), "limit": numbers, "ttl": numbers})),
    query=st.fixed_dictionaries({}, optional={k: texts for k in ("name", "since", "until", "cursor", "limit", "status", "user_id", "function_id")}),
    ascii_only=st.booleans(),
)
def test_api_routes(ingest: Ingest, route: str, body: Any, query: dict[str, str], ascii_only: bool) -> None:
    run_id = ingest.client.get("/api/v1/runs", params={"limit": 1}).json()["data"][0]["id"]
    path = "/api/v1/runs/bulk-cancel" if route == "bulk-cancel" else f"/api/v1/runs/{run_id}/{route}"
    replies = [post(ingest, path, body, ascii_only)]
    params = "&".join(f"{k}={query_value(v)}" for k, v in query.items())
    for read in ("/api/v1/events", "/api/v1/runs", "/api/v1/events/" + query_value(query.get("cursor", "x")),
                 "/api/v1/runs/" + query_value(query.get("name", "x")), "/api/v1/functions/" + query_value(query.get("user_id", "x"))):
        replies.append(ingest.client.get(f"{read}?{params}"))
    for reply in replies:
        assert reply.status_code < 500, (reply.request.url, reply.text)
        if reply.status_code >= 400:
            message = reply.json()["error"]
            assert isinstance(message, str) and message and "internal error" not in message, message
    ingest.check_reads()
