"""The Flask integration on both backends: Flask's test client, and the app served for
real by Werkzeug for the Server-Sent Events; a worker in the app, or a Stepline server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from stepline import errors
from stepline.integrations.flask import Stepline
from tests.asgi_live import load_example
from tests.server_live import serve  # noqa: F401 - fixture

example = load_example("flask_app")


@pytest.fixture
def flask_app(db_url: str) -> Iterator[Any]:
    app = example.create_app({"APPS": [example.jobs], "DB": db_url, "SIGNING_KEY": "test-key"})
    yield app
    app.extensions["stepline"].close()


def test_routes_send_and_start_jobs_and_pages_follow_them(flask_app: Any) -> None:
    client = flask_app.test_client()
    job = client.post("/summarise", json={"text": "one two three four"}).get_json()
    assert job["status_url"].startswith("/jobs/") and job["token"].startswith("slr1.")
    stream = client.get(job["stream_url"])
    assert stream.mimetype == "text/event-stream"
    blocks = [b.split("\n") for b in stream.get_data(as_text=True).strip().split("\n\n")]
    kind, final = blocks[-1][0], json.loads(blocks[-1][1].removeprefix("data: "))
    assert kind == "event: end" and final["status"] == "completed"
    assert final["output"] == {"words": 4, "summary": "one two three four", "user_id": "u-demo"}
    assert client.get(job["status_url"]).get_json() == final
    assert client.get(f"/jobs/{job['job_id']}").status_code == 401
    refused = client.post("/jobs", json={"name": "admin/drop", "data": {}})
    assert refused.status_code == 400 and "not a job this app starts" in refused.get_json()["error"]
    assert len(client.post("/docs/d1/viewed").get_json()["ids"]) == 1


def test_served_by_werkzeug_the_stream_arrives_over_http(flask_app: Any) -> None:
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        started = httpx.post(f"{url}/jobs", json={"name": "doc/summarise", "data": {"text": "x y", "user_id": "mallory"}}).json()
        kinds, last = [], None
        with httpx.stream("GET", url + started["stream_url"], timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                elif line.startswith("data: "):
                    last = json.loads(line[6:])
        assert kinds[-1] == "end" and last is not None and last["output"]["user_id"] == "u-demo"
    finally:
        server.shutdown()
        thread.join(10)


def test_an_app_that_talks_to_a_stepline_server(serve) -> None:  # noqa: F811
    server = serve(example.jobs)
    app = example.create_app({"URL": server.url, "RUN_WORKER": False})
    try:
        client = app.test_client()
        job = client.post("/summarise", json={"text": "through the server"}).get_json()
        blocks = client.get(job["stream_url"]).get_data(as_text=True).strip().split("\n\n")
        assert json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))["output"]["words"] == 3
    finally:
        app.extensions["stepline"].close()


def test_a_typo_in_the_config_is_named() -> None:
    from flask import Flask

    app = Flask("typo")
    app.config["STEPLINE"] = {"DB": "x.db", "EVENTKEY": "k"}
    with pytest.raises(errors.ConfigError, match=r"unknown key\(s\) \['EVENTKEY'\]"):
        Stepline(app)
