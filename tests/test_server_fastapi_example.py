"""The documented FastAPI pattern, run for real: route sends the event and returns job id
+ run token; the "page" polls and subscribes to Stepline with the token alone."""

from __future__ import annotations

import importlib.util
import json
import os
from types import ModuleType

import httpx

from stepline.server.common import ServerOptions
from tests import server_apps
from tests.server_live import serve  # noqa: F401 - fixture

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "examples", "fastapi_job_status.py")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_job_status", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_fastapi_job_status_example(serve) -> None:  # noqa: F811
    server = serve(server_apps.app, options=ServerOptions(dev=False, event_key="ek", api_token="tok"), signing_key="sk")
    example = load_example()
    web = example.create_app(stepline_url=server.url, event_key="ek", api_token="tok", signing_key="sk", event_name="srv/greet")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://app") as app_client:
        job = (await app_client.post("/generate", json={"prompt": "hi"})).json()
        assert "<progress" in (await app_client.get("/")).text
    async with httpx.AsyncClient(timeout=30) as browser:  # holds nothing but the job's URLs
        async with browser.stream("GET", job["stream_url"]) as stream:
            text = (await stream.aread()).decode().replace("\r\n", "\n")
        end = next(block for block in text.split("\n\n") if block.startswith("id:") and "event: end" in block)
        final = json.loads(end.split("data: ", 1)[1])
        assert final["status"] == "completed" and final["output"] == {"greeting": "Hello, world"}
        polled = await browser.get(job["status_url"])
        assert polled.status_code == 200 and polled.json()["id"] == job["job_id"]
        assert polled.headers["access-control-allow-origin"] == "*"
        assert (await browser.get(job["status_url"].split("?")[0])).status_code == 401


async def test_the_example_works_against_stepline_dev_without_keys(serve) -> None:  # noqa: F811
    """`stepline dev` signs run tokens with a key of its own: the example then asks it for
    one, and the page reads the run with it."""
    server = serve(server_apps.app, options=ServerOptions(dev=True))
    web = load_example().create_app(stepline_url=server.url, event_key="dev", api_token="", signing_key="", event_name="srv/greet")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://app") as app_client:
        reply = await app_client.post("/generate", json={"prompt": "hi"})
        assert reply.status_code == 200, reply.text
        job = reply.json()
    async with httpx.AsyncClient(timeout=30) as browser:
        polled = await browser.get(job["status_url"])
        assert polled.status_code == 200 and polled.json()["id"] == job["job_id"]
    assert "JSON.parse(ev.data).data.delta" in load_example().PAGE  # what ai.infer(stream=True) publishes
