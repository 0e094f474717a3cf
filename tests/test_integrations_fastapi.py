"""The FastAPI integration run for real (uvicorn, the app's lifespan) on both backends:
a worker embedded in the app, or a Stepline server elsewhere; the job-status routes
(start, token-checked status, Server-Sent Events until the end) and the dependency."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.asgi_live import load_example, running
from tests.server_live import serve  # noqa: F401 - fixture

example = load_example("fastapi_app")


def follow(url: str, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of a job stream, read until it closes."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with httpx.stream("GET", url + path, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def check_job_routes(url: str) -> None:
    job = httpx.post(f"{url}/summarise", json={"text": "durable steps make long jobs safe"}).json()
    assert job["status"] in ("pending", "processing", "completed") and job["token"].startswith("slr1.")
    events = follow(url, job["stream_url"])
    kind, final = events[-1]
    assert kind == "end" and all(k == "status" for k, _ in events[:-1])
    assert final["status"] == "completed" and final["progress"] == 100
    assert final["output"] == {"words": 6, "summary": "durable steps make long jobs safe", "user_id": "u-demo"}
    assert httpx.get(url + job["status_url"]).json() == final

    # A token reads its own job only; none, a wrong one or another job's is refused.
    other = httpx.post(f"{url}/summarise", json={"text": "x"}).json()
    assert httpx.get(f"{url}/jobs/{job['job_id']}").status_code == 401
    assert httpx.get(f"{url}/jobs/{job['job_id']}?token={other['token']}").status_code == 401
    assert httpx.get(f"{url}/jobs/{job['job_id']}/stream?token=slr1.nope").status_code == 401

    # The ready start route: allowed events only, and the user is the app's, not the client's.
    started = httpx.post(f"{url}/jobs", json={"name": "doc/summarise", "data": {"text": "a b", "user_id": "mallory"}})
    assert started.status_code == 200, started.text
    done = follow(url, started.json()["stream_url"])[-1][1]
    assert done["output"]["user_id"] == "u-demo"
    refused = httpx.post(f"{url}/jobs", json={"name": "admin/drop-tables", "data": {}})
    assert refused.status_code == 400 and "not a job this app starts" in refused.json()["error"]
    assert len(httpx.post(f"{url}/events/doc/summarise", json={"text": "fire and forget"}).json()["ids"]) == 1


def test_a_worker_embedded_in_the_app(db_url: str) -> None:
    with running(example.create_app(url=None, db=db_url)) as url:
        check_job_routes(url)


def test_an_app_that_talks_to_a_stepline_server(serve) -> None:  # noqa: F811
    server = serve(example.jobs)  # the functions run in the server's worker
    with running(example.create_app(url=server.url, run_worker=False)) as url:
        check_job_routes(url)


def test_a_plain_starlette_app_with_the_lifespan_and_job_routes(db_url: str) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from stepline.integrations.fastapi import get_stepline, job_routes, stepline_lifespan

    async def summarise(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(await get_stepline(request).start_job({"name": "doc/summarise", "data": {"text": body["text"]}}))

    app = Starlette(
        routes=[Route("/summarise", summarise, methods=["POST"]), job_routes("/jobs", events=["doc/summarise"])],
        lifespan=stepline_lifespan(apps=[example.jobs], db=db_url),
    )
    with running(app) as url:
        job = httpx.post(f"{url}/summarise", json={"text": "plain starlette works"}).json()
        kind, final = follow(url, job["stream_url"])[-1]
        assert kind == "end" and final["output"]["words"] == 3
        assert httpx.post(f"{url}/jobs/", json={"name": "doc/summarise", "data": {"text": "a"}}).status_code == 200
        assert httpx.get(f"{url}/jobs/{job['job_id']}?token=wrong").status_code == 401
