"""A run's published messages are bounded: each one by ``STEPLINE_MAX_MESSAGE_BYTES`` (512 KiB,
what Inngest's realtime publish reads), and a stream reads a long history page by page
(at most 500 messages or about 1 MiB of text a read), never all of it at once."""

from __future__ import annotations

from typing import Any

import httpx

import stepline
from stepline.store import ops_read
from tests.helpers import send_and_wait
from tests.server_live import LiveServer, run_of_event, serve  # noqa: F401 - fixture
from tests.test_server_stream import sse

SMALL = 1200
BIG = 4
BIG_CHARS = 400_000  # two fit in a page's text, three do not


def _talker() -> stepline.App:
    app = stepline.App("talk")

    @app.function(id="talker", trigger=stepline.TriggerEvent("talk/go"), retries=0)
    async def talker(ctx: stepline.Context) -> int:
        for i in range(SMALL):
            await ctx.publish({"part": i})
        for _ in range(BIG):
            await ctx.publish("x" * BIG_CHARS, topic="big")
        return SMALL + BIG

    @app.function(id="shouter", trigger=stepline.TriggerEvent("talk/shout"), retries=3)
    async def shouter(ctx: stepline.Context) -> None:
        await ctx.publish({"fits": True})
        await ctx.publish("y" * 2000, topic="too-big")

    return app


async def test_a_long_history_is_read_in_bounded_pages_in_order(make_engine: Any) -> None:
    engine = await make_engine(_talker(), max_message_bytes=BIG_CHARS + 2)
    run = await send_and_wait(engine, {"name": "talk/go"}, "completed", timeout=60)
    pages: list[list[dict[str, Any]]] = []
    seq, more = 0, True
    while more:
        live = await engine.store.run_live(run["id"], seq)
        assert live is not None and live["messages"], (seq, pages[-1:])
        pages.append(live["messages"])
        seq, more = live["messages"][-1]["seq"], live["more_messages"]
    assert [m["seq"] for page in pages for m in page] == list(range(1, SMALL + BIG + 1))
    assert [len(p) for p in pages] == [ops_read.MESSAGE_PAGE_ROWS, ops_read.MESSAGE_PAGE_ROWS, SMALL - 2 * ops_read.MESSAGE_PAGE_ROWS + 2, 2]
    assert [m["topic"] for m in pages[-1]] == ["big", "big"]


async def test_a_message_over_the_limit_fails_its_run_naming_the_setting(make_engine: Any) -> None:
    engine = await make_engine(_talker(), max_message_bytes=1000)
    run = await send_and_wait(engine, {"name": "talk/shout"}, "failed")
    assert run["error"]["name"] == "LimitError"
    message = run["error"]["message"]
    assert "topic 'too-big' is 2002 bytes as JSON, over the limit of 1000 bytes" in message
    assert "STEPLINE_MAX_MESSAGE_BYTES" in message
    assert [m["topic"] for m in await engine.store.run_messages(run["id"])] == ["default"]  # the one that fit


def test_a_stream_of_a_long_history_sends_every_message_once_then_ends(serve) -> None:  # noqa: F811
    server: LiveServer = serve(_talker(), max_message_bytes=BIG_CHARS + 2)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        event_id = client.post("/e/dev", json={"name": "talk/go"}).json()["ids"][0]
        run = run_of_event(client, event_id)
        with client.stream("GET", f"/api/v1/runs/{run['id']}/stream") as response:
            assert response.status_code == 200
            events = list(sse(response))
    messages = [e for e in events if e["event"] == "message"]
    assert [int(e["id"]) for e in messages] == list(range(1, SMALL + BIG + 1))
    assert [e["data"]["data"]["part"] for e in messages[:SMALL]] == list(range(SMALL))
    assert all(len(e["data"]["data"]) == BIG_CHARS for e in messages[SMALL:])
    assert events[-1]["event"] == "end" and events[-1]["data"]["output"] == SMALL + BIG
