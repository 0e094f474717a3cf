"""Schemathesis against the served OpenAPI document: generated requests (valid and
invalid) to a real server never get a 5xx, and every response conforms to the document."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from stepline import errors
from stepline.server import common, openapi
from stepline.server.common import ServerOptions
from tests import server_apps
from tests.server_live import LiveServer, serve, wait_for  # noqa: F401 - fixture

schema = schemathesis.openapi.from_dict(openapi.document())
# Valid and invalid requests alike, NUL characters included: bad input must be a 4xx.
schema.config.generation.update(modes=list(schemathesis.GenerationMode), allow_x00=True)

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
TOKEN = "schema-token"


@pytest.fixture(params=["dev", "production"])
def api_server(request: pytest.FixtureRequest, serve) -> Iterator[tuple[LiveServer, dict[str, str]]]:  # noqa: F811
    """A server with a few runs in it, in dev mode (open) or production mode (bearer token)."""
    if request.param == "dev":
        server, headers = serve(server_apps.app), {}
    else:
        server = serve(server_apps.app, options=ServerOptions(dev=False, event_key="ek", api_token=TOKEN))
        headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        client.post("/api/v1/events", json=[{"name": "srv/greet", "data": {"user_id": "u1"}}, {"name": "srv/nap"}]).raise_for_status()
    yield server, headers


def test_the_served_document_is_the_one_tested(serve) -> None:  # noqa: F811
    server = serve(server_apps.app)
    assert httpx.get(f"{server.url}/api/v1/openapi.json").json() == openapi.document()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_api_conforms_to_its_document(case: schemathesis.Case, api_server: tuple[LiveServer, dict[str, str]]) -> None:
    server, headers = api_server
    response = case.call(base_url=server.url, headers=headers, timeout=15)
    case.validate_response(response, checks=CHECKS)


# --- what the document says of inputs is what the server takes ------------------------------

TIME_PATTERN = re.compile(openapi.TIME_Q["pattern"])


def server_takes_time(text: str) -> bool:
    try:
        common.parse_time(text, "until")
    except errors.RequestError:
        return False
    return True


def test_the_time_pattern_takes_exactly_the_dates_that_exist() -> None:
    """The pattern took any dd 00-99 (2026-02-31), and '\\d' Unicode digits: generated 'valid' requests got 400s."""
    for year in (1, 4, 100, 400, 1900, 2000, 2023, 2024, 2026, 9999):
        for month in range(14):
            for day in range(33):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                assert bool(TIME_PATTERN.fullmatch(text)) == server_takes_time(text), text
    for text in ("0000-01-01", "2026-01-01T24:00", "2026-01-01T12:60", "2026-01-01T00:00:60", "2026-01-01T00:00+24:00"):
        assert not TIME_PATTERN.fullmatch(text) and not server_takes_time(text), text
    for text in ("", "1767225600000", "2024-02-29T23:59:59.999999+05:30", "2000-02-29T00:00Z"):
        assert TIME_PATTERN.fullmatch(text) and server_takes_time(text), text


@given(st.from_regex(TIME_PATTERN, fullmatch=True))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_every_time_the_pattern_takes_the_server_takes(text: str) -> None:
    assert server_takes_time(text), text


def test_empty_filters_and_null_event_fields_are_taken_as_absent_as_documented(serve) -> None:  # noqa: F811
    server = serve(server_apps.app)
    document = openapi.document()
    event_in = document["components"]["schemas"]["EventIn"]["properties"]
    assert all(event_in[field].get("nullable") for field in ("data", "user", "id", "ts", "v", "trace"))
    windows = {p["name"]: p["schema"] for p in document["paths"]["/api/v1/metrics"]["get"]["parameters"]}
    assert "" in windows["window"]["enum"] and TIME_PATTERN.fullmatch("")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        null_fields = {"name": "srv/greet", "data": None, "user": None, "id": None, "ts": None, "v": None, "trace": None}
        assert client.post("/api/v1/events", json=[null_fields]).status_code == 200
        assert client.get("/api/v1/runs", params={"until": "", "since": ""}).status_code == 200
        assert client.get("/api/v1/metrics", params={"window": ""}).json()["window_seconds"] == 3600


def test_the_run_streams_document_describes_its_events(serve) -> None:  # noqa: F811
    """It said only 'a string': not which events come, nor what their data hold."""
    server = serve(server_apps.app)
    stream = openapi.document()["paths"]["/api/v1/runs/{run_id}/stream"]["get"]
    described = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    for name in ("status", "message", "end", "expired", "Last-Event-ID"):
        assert name in described["description"], name
    example = dict(line.split(": ", 1) for line in described["example"].strip().splitlines())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        event_id = client.post("/api/v1/events", json=[{"name": "srv/greet"}]).json()["ids"][0]
        run_id = wait_for(lambda: (client.get(f"/api/v1/events/{event_id}").json().get("runs") or [None])[0])["id"]
        with client.stream("GET", f"/api/v1/runs/{run_id}/stream") as reply:
            first: dict[str, str] = {}
            for line in reply.iter_lines():
                if not line and first.get("event") in ("status", "end"):
                    break
                if not line:
                    first = {}  # a message event (the run publishes): the status comes next
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    first[key] = value
    assert set(first) == set(example), (first, stream)
    assert set(json.loads(example["data"])) == set(json.loads(first["data"]))
    after = {p["name"]: p["schema"] for p in stream["parameters"]}["after"]
    assert re.fullmatch(after["pattern"], "")  # taken as absent, as the stream does
