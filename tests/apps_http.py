"""An app for HTTP and CLI tests."""

from __future__ import annotations

import stepline

app = stepline.App("http")


@app.function(id="echo", trigger=stepline.TriggerEvent("http/echo"))
async def echo(ctx: stepline.Context) -> dict:
    text = await ctx.step.run("upper", lambda: str(ctx.event.data.get("text", "")).upper())
    await ctx.set_progress(100, "echoed")
    return {"text": text}


@app.function(id="nap", trigger=stepline.TriggerEvent("http/nap"))
async def nap(ctx: stepline.Context) -> None:
    await ctx.step.sleep("long", "1h")
