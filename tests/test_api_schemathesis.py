"""Schemathesis against the served OpenAPI document: generated requests (valid and
invalid) to a real server never get a 5xx, and every response conforms to the document."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from stepline.server import openapi
from stepline.server.common import ServerOptions
from tests import server_apps
from tests.server_live import LiveServer, serve  # noqa: F401 - fixture

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
