"""What one ingest request may cost the server, whatever its body: multi-megabyte bodies of
millions of tiny values are parsed and validated off the event loop, and no check walks
them in a way that grows faster than the body (a refusal's search for the place of a bad
value stops after ``PATH_SEARCH_VALUES`` values). Control characters in names are refused."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

import stepline
from stepline import event as event_mod
from stepline import jsonutil
from stepline.server import common, create_app
from stepline.server.common import ServerOptions


@pytest.fixture
async def client(make_engine: Any) -> Any:
    engine = await make_engine(stepline.App("bounds"))
    app = create_app(engine, ServerOptions(dev=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        yield engine, http


def _threads_that_validate(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = engine.validate_events

    def validate(items: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(items)

    monkeypatch.setattr(engine, "validate_events", validate)
    return seen


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_large_body_is_parsed_and_validated_off_the_loop_and_a_small_one_on_it(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, http = client
    seen = _threads_that_validate(engine, monkeypatch)
    small = await http.post("/e/any", json={"name": "b/small", "data": {"n": 1}})
    big = await http.post("/e/any", json={"name": "b/big", "data": {"xs": [0] * 200_000}})
    assert small.status_code == 200 and big.status_code == 200, (small.text, big.text)
    loop_thread = threading.current_thread().name
    assert seen[0] == loop_thread and seen[1] != loop_thread, seen
    stored = await engine.store.get_event(big.json()["ids"][0])
    assert stored["name"] == "b/big"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_wide_integer_among_millions_of_values_is_refused_without_walking_them_all(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of 19 digits anywhere (even in a string) made the whole body be parsed again and
    walked with a path per value: 8 MB held the loop 15 s and took 2.8 GB."""
    _, http = client
    monkeypatch.setattr(jsonutil, "PATH_SEARCH_VALUES", 1000)
    walked: list[int] = []
    original = jsonutil._first_path

    def counted(value: Any, hit: Any) -> Any:
        calls = [0]

        def counting(x: Any) -> bool:
            calls[0] += 1
            return bool(hit(x))

        try:
            return original(value, counting)
        finally:
            walked.append(calls[0])

    monkeypatch.setattr(jsonutil, "_first_path", counted)
    zeros = [0] * 300_000
    body = '{"name": "b/x", "data": {"s": "1234567890123456789", "xs": ' + json.dumps(zeros) + "}}"
    reply = await http.post("/e/any", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text  # digits in a string: fine, and no search at all
    assert walked == []
    wide = body[:-3] + ", 123456789012345678901234567890]}}"
    reply = await http.post("/e/any", content=wide, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "123456789012345678901234567890" in reply.json()["error"], reply.text
    assert "64-bit" in reply.json()["error"] and " at " not in reply.json()["error"]  # past the budget: no place
    assert len(walked) == 1 and 0 < walked[0] <= 1000, walked  # the budget, not the 300,000 values
    near = '{"name": "b/x", "data": {"xs": [1, 2, {"v": 123456789012345678901234567890}]}}'
    reply = await http.post("/e/any", content=near, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "'body.data.xs[2].v'" in reply.json()["error"], reply.text


def test_a_bad_value_deep_in_a_large_event_is_named_within_the_budget_or_described_without_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jsonutil, "PATH_SEARCH_VALUES", 1000)
    near = {"a": [0] * 10 + [{"k": "x\x00"}]}
    assert jsonutil.storable_problem(near, max_depth=64, path="data") is not None
    assert "'data.a[10].k' contains a NUL" in str(jsonutil.storable_problem(near, max_depth=64, path="data"))
    far = {"a": [0] * 5000 + ["x\x00"]}
    problem = str(jsonutil.storable_problem(far, max_depth=64, path="data"))
    assert "past its first 1,000 values" in problem and "NUL" in problem
    with pytest.raises(stepline.EventError, match="over the event size limit"):  # the size first, at C speed
        event_mod.validate({"name": "b/x", "data": {"a": [0] * 600_000 + ["x\x00"]}})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name", ["a/b\n2026 ERROR forged line", "a/b\r", "a\tb", "a\x1bb", "a\u2028b", "a\x85b"])
async def test_control_characters_in_names_are_refused(client: Any, name: str) -> None:
    engine, http = client
    reply = await http.post("/e/any", json=[{"name": "b/kept"}, {"name": name}])
    assert reply.status_code == 400 and "control character" in reply.json()["error"], reply.text
    assert "b/kept" not in [e["name"] for e in await engine.store.list_events(limit=10)]


def test_the_off_loop_threshold_is_a_body_size() -> None:
    assert 16 * 1024 <= common.OFF_LOOP_BYTES <= 1024 * 1024
