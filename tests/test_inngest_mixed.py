"""One engine, two ways to define functions: SDK and native functions call each other."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import stepline
from tests.inngest_apps import py_app
from tests.inngest_apps.harness import Server, ThreadServer, free_port, stepline_server

native = stepline.App("native")


@native.function(id="shout", trigger=stepline.TriggerEvent("native/shout"))
async def shout(ctx: stepline.Context) -> str:
    return await ctx.step.run("upper", lambda: str(ctx.event.data["text"]).upper())


@native.function(id="ask-sdk", trigger=stepline.TriggerEvent("native/ask-sdk"))
async def ask_sdk(ctx: stepline.Context) -> dict:
    return await ctx.step.invoke("child", function="py-app-child", data={"n": 4})


@pytest.fixture
async def env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    async with stepline_server(db_url, apps=[native]) as server:
        monkeypatch.setenv("INNGEST_DEV", server.url)
        port = free_port()
        with ThreadServer(py_app.build(py_app.Recorder()), port):
            await server.sync(f"http://127.0.0.1:{port}/api/inngest")
            yield server


async def test_sdk_function_invokes_a_native_function(env: Server) -> None:
    run = await env.finished((await env.run_for(await env.send("py/mixed"), "py-app-mixed"))["id"])
    assert run["status"] == "completed" and run["output"] == "HI", run


async def test_native_function_invokes_an_sdk_function(env: Server) -> None:
    run = await env.finished((await env.run_for(await env.send("native/ask-sdk"), "ask-sdk"))["id"])
    assert run["status"] == "completed", run
    assert run["output"] == {"doubled": 8, "event": "inngest/function.invoked"}
