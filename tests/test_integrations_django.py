"""The Django integration with Django's own test client, on both backends: sync and async
views that send and start jobs, the job routes (token-checked status, Server-Sent Events),
settings checked by name, and `manage.py stepline_worker` running the functions as a
process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.test import AsyncClient, Client, override_settings

from stepline import errors
from tests.helpers import wait_for

PROJECT = Path(__file__).resolve().parent.parent / "docs" / "examples" / "django_project"
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_example.settings")
django.setup()

from stepline.integrations import django as stepline_django  # noqa: E402 - after django.setup()


@pytest.fixture
def stepline_settings(db_url: str) -> Iterator[dict[str, Any]]:
    values = {"APPS": ["django_example.jobs:app"], "DB": db_url, "SIGNING_KEY": "test-key", "RUN_WORKER": True}
    with override_settings(STEPLINE=values):
        yield values
    stepline_django.close()


def _events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    text = b"".join(response.streaming_content).decode()
    out = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_sync_views_start_jobs_and_pages_follow_them(stepline_settings: dict[str, Any]) -> None:
    client = Client()
    job = client.post("/summarise", {"text": "one two three"}, content_type="application/json").json()
    assert set(job) >= {"job_id", "token", "status_url", "stream_url"} and job["status_url"].startswith("/jobs/")
    stream = client.get(job["stream_url"])
    assert stream["Content-Type"] == "text/event-stream"
    kind, final = _events(stream)[-1]
    assert kind == "end" and final["status"] == "completed"
    assert final["output"] == {"words": 3, "summary": "one two three", "user_id": "u-demo"}
    assert client.get(job["status_url"]).json() == final
    assert client.get(f"/jobs/{job['job_id']}").status_code == 401  # no token
    assert client.get(f"/jobs/{job['job_id']}?token=slr1.x.1.y").status_code == 401

    started = client.post("/jobs/", {"name": "doc/summarise", "data": {"text": "a", "user_id": "mallory"}},
                          content_type="application/json")
    assert started.status_code == 200, started.content
    assert _events(client.get(started.json()["stream_url"]))[-1][1]["output"]["user_id"] == "u-demo"
    refused = client.post("/jobs/", {"name": "other/thing", "data": {}}, content_type="application/json")
    assert refused.status_code == 400 and "not a job this app starts" in refused.json()["error"]

    [event_id] = client.post("/docs/d1/viewed").json()["ids"]
    runs = stepline_django.connection().call(stepline_django.connection().connection.runs_of(event_id))
    assert [r["function_id"] for r in runs] == ["audit"]


async def test_async_views_send_and_start_jobs(stepline_settings: dict[str, Any]) -> None:
    client = AsyncClient()
    job = (await client.post("/summarise-async", {"text": "four five"}, content_type="application/json")).json()
    final = wait_for(lambda: (s := stepline_django.job_status(job["job_id"], job["token"]))["status"] == "completed" and s,
                     what="the job started from an async view")
    assert final["output"]["words"] == 2
    sent = (await client.post("/docs/d2/viewed-async")).json()["ids"]
    assert len(sent) == 1


def test_a_typo_in_the_settings_is_named(db_url: str) -> None:
    with override_settings(STEPLINE={"APPS": ["django_example.jobs:app"], "DB": db_url, "RUN_WORKKER": True}):
        with pytest.raises(errors.ConfigError, match=r"unknown key\(s\) \['RUN_WORKKER'\]"):
            stepline_django.options()
    with override_settings(STEPLINE={"APPS": ["django_example.jobs:nope"], "DB": db_url}):
        with pytest.raises(errors.ConfigError, match="is not a stepline.App"):
            stepline_django.options()


def test_the_worker_command_runs_what_views_send(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "STEPLINE_DB": db_url, "STEPLINE_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "django_example.settings"}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "manage.py", "stepline_worker", "--concurrency", "4"], cwd=PROJECT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        with override_settings(STEPLINE={"APPS": ["django_example.jobs:app"], "DB": db_url, "SIGNING_KEY": "k"}):
            client = Client()
            job = client.post("/summarise", {"text": "run by the worker"}, content_type="application/json").json()
            done = wait_for(lambda: (s := client.get(job["status_url"]).json())["status"] == "completed" and s,
                            timeout=60, what="the worker process to run the job",
                            diagnose=lambda: (tmp_path / "worker.log").read_text())
            assert done["output"]["words"] == 4
            stepline_django.close()
    finally:
        worker.terminate()
        assert worker.wait(20) == 0, (tmp_path / "worker.log").read_text()
        log.close()
