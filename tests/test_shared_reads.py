"""The dashboard's and /metrics' costly reads are read once for all their viewers
(``server/shared_reads.py``); cheap ones stay each request's own, as fresh as the database."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import stepline
from stepline.server import shared_reads
from stepline.server.shared_reads import SharedReads
from tests.helpers import counting_statements
from tests.server_live import run_of_event, run_status, serve  # noqa: F401 - fixture


class Clock:
    """Monotonic seconds that move only when told (a read's cost is what it advances)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reads:
    """A read that counts its calls and costs ``took`` seconds of the clock."""

    def __init__(self, clock: Clock, took: float) -> None:
        self.clock, self.took, self.calls = clock, took, 0
        self.gate: asyncio.Event | None = None  # when set, each read waits for it
        self.fail: Exception | None = None

    async def __call__(self) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        self.clock.now += self.took
        if self.fail is not None:
            raise self.fail
        return self.calls


async def test_cheap_reads_are_each_requests_own() -> None:
    clock = Clock()
    shared, read = SharedReads(clock), Reads(clock, took=0.01)
    answers = [await shared.get("k", read) for _ in range(3)]
    assert [a.value for a in answers] == [1, 2, 3]
    assert not any(a.shared for a in answers)


async def test_a_costly_read_is_served_again_for_ten_times_as_long_as_it_took() -> None:
    clock = Clock()
    shared, read = SharedReads(clock), Reads(clock, took=0.2)
    first = await shared.get("k", read)
    assert (first.value, first.shared) == (1, False)
    clock.now += 1.5
    again = await shared.get("k", read)
    assert (again.value, again.shared, read.calls) == (1, True, 1)
    assert again.age == pytest.approx(1.5)
    assert (await shared.get("other", read)).value == 2  # another key reads for itself
    clock.now += 0.6  # 2.1 s after the read ended: past 10 × 0.2 s
    assert (await shared.get("k", read)).value == 3


async def test_a_very_costly_read_is_not_served_past_the_cap() -> None:
    clock = Clock()
    shared, read = SharedReads(clock), Reads(clock, took=10.0)
    await shared.get("k", read)
    clock.now += shared_reads.MAX_AGE_SECONDS - 1
    assert (await shared.get("k", read)).shared
    clock.now += 2
    assert not (await shared.get("k", read)).shared
    assert read.calls == 2


async def test_requests_during_a_costly_read_wait_for_it_and_a_leaver_does_not_stop_it() -> None:
    clock = Clock()
    shared, read = SharedReads(clock), Reads(clock, took=0.2)
    await shared.get("k", read)  # costly: the key's next reads are shared
    clock.now += 10  # its answer is stale
    read.gate = asyncio.Event()
    first = asyncio.ensure_future(shared.get("k", read))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(shared.get("k", read)) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()  # the viewer who started the read goes away
    read.gate.set()
    answers = await asyncio.gather(*waiting)
    assert read.calls == 2
    assert [a.value for a in answers] == [2] * 5
    assert all(a.shared for a in answers)
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_failed_read_fails_those_waiting_and_is_not_kept() -> None:
    clock = Clock()
    shared, read = SharedReads(clock), Reads(clock, took=0.2)
    await shared.get("k", read)
    clock.now += 10
    read.gate, read.fail = asyncio.Event(), RuntimeError("database gone")
    waiting = [asyncio.ensure_future(shared.get("k", read)) for _ in range(3)]
    await asyncio.sleep(0)
    read.gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert [str(o) for o in outcomes] == ["database gone"] * 3
    read.gate, read.fail = None, None
    assert (await shared.get("k", read)).value == 3  # read again, not the failure


# --- over HTTP -------------------------------------------------------------------------------

app = stepline.App("shared-reads")


@app.function(id="counted", trigger=stepline.TriggerEvent("shared/counted"))
async def counted(ctx: stepline.Context) -> str:
    return "done"


def _completed(client: httpx.Client) -> int:
    listed = client.get("/api/v1/functions")
    assert listed.status_code == 200, listed.text
    assert "age" not in listed.headers  # each request's own read
    (fn,) = [f for f in listed.json()["data"] if f["id"] == "counted"]
    return int(fn["counts"]["completed_last_hour"])


def test_a_cheap_function_list_shows_each_run_as_soon_as_it_ends(serve: Any) -> None:  # noqa: F811
    server = serve(app)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for n in range(1, 4):
            sent = client.post("/api/v1/events", json={"name": "shared/counted", "data": {}})
            assert sent.status_code == 200, sent.text
            run_status(client, run_of_event(client, sent.json()["ids"][0])["id"], "completed")
            assert _completed(client) == n


def test_costly_reads_are_read_once_for_all_and_say_their_age(
    serve: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # Every read counts as costly and stays fresh for the test's length: what a database
    # with a long history gets, without the wait of filling one.
    monkeypatch.setattr(shared_reads, "COSTLY_SECONDS", 0.0)
    monkeypatch.setattr(shared_reads, "REUSE_FACTOR", 1e9)
    monkeypatch.setattr(shared_reads, "MAX_AGE_SECONDS", 3600.0)
    server = serve(app, run_worker=False)  # nothing reads beside the requests counted
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ("/api/v1/functions", "/metrics", "/api/v1/metrics?days=3"):
            with counting_statements() as first_reads:
                first = client.get(path)
            assert first.status_code == 200 and "age" not in first.headers, (path, first.text)
            assert first_reads[0] > 0
            with counting_statements() as again_reads:
                again = client.get(path)
            assert again.status_code == 200, again.text
            assert again_reads[0] == 0, (path, again_reads)
            assert int(again.headers["age"]) >= 0
            assert again.content == first.content
        # One function's page is read from the list's answer.
        with counting_statements() as one_reads:
            one = client.get("/api/v1/functions/counted")
        assert one.status_code == 200 and "age" in one.headers and one_reads[0] == 0, one.text
        assert one.json()["id"] == "counted"
        # A different question is its own read: another window of days.
        other = client.get("/api/v1/metrics?days=7")
        assert "age" not in other.headers and other.json()["days"] == 7
        assert client.get("/api/v1/metrics?days=3").json()["days"] == 3
        # The shared answer is the one read: a run queued since is not in it.
        assert client.post("/api/v1/events", json={"name": "shared/counted", "data": {}}).status_code == 200
        listed = client.get("/api/v1/functions")
        assert "age" in listed.headers
        assert [f["counts"]["queued"] for f in listed.json()["data"] if f["id"] == "counted"] == [0]
