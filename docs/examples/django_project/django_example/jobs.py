"""The site's durable functions."""

from __future__ import annotations

from typing import Any

import stepline

app = stepline.App("django-example")


@app.function(id="summarise", trigger=stepline.TriggerEvent("doc/summarise"), retries=2)
async def summarise(ctx: stepline.Context) -> dict[str, Any]:
    text = str(ctx.event.data.get("text", ""))
    await ctx.set_progress(30, "counting")
    words = await ctx.step.run("count-words", lambda: len(text.split()))
    await ctx.set_progress(100, "done")
    return {"words": words, "summary": " ".join(text.split()[:8]), "user_id": ctx.event.data.get("user_id")}


@app.function(id="audit", trigger=stepline.TriggerEvent("doc/viewed"))
def audit(ctx: stepline.Context) -> str:  # a sync function: it runs in a thread
    return f"viewed {ctx.event.data.get('doc_id')}"
