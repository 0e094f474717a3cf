"""The worst inputs an event key holder can send cost `stepline start` a bounded amount of
memory, on both backends: each is refused, the server stays up, and what it had accepted
is still there. (A 40 KB name of dots once cost 1.35 GB: one string per wildcard prefix.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from stepline.inngest import signing
from tests.cli_server import API_TOKEN, EVENT_KEY, cli_server  # noqa: F401 - fixture

SIGNING_KEY = "signkey-prod-" + "ab" * 32
BUDGET_KIB = 96 * 1024  # the peak resident memory the worst inputs below may add, all together
SDK = {"X-Inngest-SDK": "inngest-js:v3.27.0"}


def deep_objects(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def deep_siblings(depth: int) -> str:
    """``[[], [[], [[], ...]]]``: deep without a run of opening brackets."""
    return "[[], " * depth + "[]" + "]" * depth


REFUSED = (400, 413)
WORST: list[tuple[str, str, tuple[int, ...]]] = [
    ("a 40 KB name of dots", '{"name": "h/' + "." * 40_000 + '"}', REFUSED),
    ("a 40 KB name of slashes under a wildcard", '{"name": "h/echo.' + "/" * 40_000 + '"}', REFUSED),
    ("a 900 KB id", '{"name": "h/x", "id": "' + "i" * 900_000 + '"}', REFUSED),
    ("a 900 KB user id", '{"name": "h/x", "data": {"user_id": "' + "u" * 900_000 + '"}}', REFUSED),
    ("data 1,000 levels deep", '{"name": "h/x", "data": ' + deep_objects(1000) + "}", REFUSED),
    ("data 100,000 levels deep", '{"name": "h/x", "data": ' + deep_objects(100_000) + "}", REFUSED),
    ("data 5,000 sibling levels deep", '{"name": "h/x", "data": {"x": ' + deep_siblings(5000) + "}}", REFUSED),
    ("an integer of 400 digits", '{"name": "h/x", "data": {"n": ' + "9" * 400 + "}}", REFUSED),
    # Within the limits, so accepted: 2,000 names of 250 dots each, all different.
    ("a batch of long dotted names", "[" + ", ".join('{"name": "h/' + "." * 246 + f'{i:04d}"}}' for i in range(2000)) + "]", (200,)),
]


def test_the_worst_inputs_stay_within_a_memory_budget(cli_server: Any) -> None:  # noqa: F811
    server = cli_server(mode="start", app="tests.apps_hostile:app", env={"STEPLINE_INNGEST_SIGNING_KEY": SIGNING_KEY})
    client = httpx.Client(base_url=server.url, timeout=300, headers={"authorization": f"Bearer {API_TOKEN}"})
    kept = [client.post(f"/e/{EVENT_KEY}", json={"name": "h/echo.kept", "data": {"i": i}}).json()["ids"][0] for i in range(20)]
    baseline = server.rss_peak_kib()
    for what, body, statuses in WORST:
        for headers in ({}, SDK):
            reply = client.post(f"/e/{EVENT_KEY}", content=body.encode(), headers={"content-type": "application/json", **headers})
            assert reply.status_code in statuses, (what, reply.status_code, reply.text[:300])
    registration = '{"url": "http://127.0.0.1:9/api/inngest", "appName": "x", "functions": [' + deep_objects(1000) + "]}"
    reply = client.post("/fn/register", content=registration.encode(),
                        headers={"content-type": "application/json", "authorization": f"Bearer {signing.hashed_key(SIGNING_KEY)}"})
    assert reply.status_code == 400, reply.text[:300]
    grown = server.rss_peak_kib() - baseline
    assert grown < BUDGET_KIB, f"the worst inputs raised the server's peak memory by {grown:,} KiB"
    assert client.get("/health").status_code == 200
    for i, event_id in enumerate(kept):
        assert client.get(f"/api/v1/events/{event_id}").json()["body"]["data"] == {"i": i}


def _tiny_objects_body(events: int = 8) -> bytes:
    """``events`` events of ~1 MiB each, all empty objects: 8 MiB that parse to ~200 MB."""
    value = "[" + ",".join(["{}"] * 340_000) + "]"
    return ("[" + ",".join(f'{{"name": "h/x", "data": {{"a": {value}}}}}' for _ in range(events)) + "]").encode()


def test_bodies_of_tiny_values_sent_at_once_hold_a_bounded_memory(cli_server: Any) -> None:  # noqa: F811
    """The body buffer (STEPLINE_MAX_BODY_BUFFER, 256 MiB) counted bytes, so it let 30 bodies
    of 8 MiB in at once: 16 of tiny values took 3 GB parsed. Their values now count too:
    those that do not fit wait for room (10 s, then 503 with Retry-After), and every one is
    stored."""
    server = cli_server(mode="start", app="tests.apps_hostile:app")  # the buffer's default: 256 MiB
    body = _tiny_objects_body()
    assert len(body) > 5_000_000
    baseline = server.rss_peak_kib()
    stored: list[str] = []

    def send_until_taken() -> None:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            for _ in range(200):
                reply = client.post(f"/e/{EVENT_KEY}", content=body, headers={"content-type": "application/json"})
                if reply.status_code == 503:
                    assert reply.headers["retry-after"] == "1" and "STEPLINE_MAX_BODY_BUFFER" in reply.text, reply.text
                    time.sleep(1)
                    continue
                assert reply.status_code == 200, reply.text[:300]
                stored.extend(reply.json()["ids"])
                return
            raise AssertionError("a body was never taken")

    threads = [threading.Thread(target=send_until_taken) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grown_mib = (server.rss_peak_kib() - baseline) // 1024
    assert len(stored) == 96
    assert grown_mib < 800, f"12 such bodies at once raised the server's peak memory by {grown_mib} MiB"
