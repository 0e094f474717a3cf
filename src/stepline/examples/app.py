"""The app ``stepline dev`` serves when given none: the seeds' patterns, offline.

Everything external here is SIMULATED (a slow, flaky model; a paginated API) so
the examples run with no network and no keys:

- ``llm/generate.requested``  one LLM-style generation: validate → call the
  (simulated) model with retries → store; cancellable with ``llm/generate.cancel``.
- ``screens/generate.requested``  one step per item, progress after each.
- ``crawl/requested``  a paginated fetch, one step per page and a 1 s pause between
  pages; after a crash it resumes from the last completed page.

Try: ``stepline send llm/generate.requested --data '{"user_id":"u1","prompt":"hi"}'``
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import stepline

app = stepline.App("examples")


class SimulatedModelBusy(Exception):
    """The simulated model answered 503: retryable."""


async def simulated_model(prompt: str, *, failure_rate: float = 0.2) -> dict[str, Any]:
    """SIMULATED slow LLM: 0.5-1.5 s per call, fails `failure_rate` of the time."""
    await asyncio.sleep(random.uniform(0.5, 1.5))
    if random.random() < failure_rate:
        raise SimulatedModelBusy("simulated model: 503 overloaded, try again")
    words = prompt.split()
    return {
        "text": f"(simulated reply to {len(words)} word(s)) " + " ".join(reversed(words)),
        "usage": {"prompt_tokens": len(words) * 2, "completion_tokens": len(words) * 3},
    }


def validate_context(data: dict[str, Any]) -> dict[str, Any]:
    prompt = str(data.get("prompt", "")).strip()
    if not prompt:
        raise stepline.NonRetriableError("the event has no prompt: send data.prompt")
    return {"user_id": data.get("user_id"), "prompt": prompt[:10_000]}


@app.function(
    id="llm-generate",
    trigger=stepline.TriggerEvent("llm/generate.requested"),
    retries=3,
    cancel_on=stepline.CancelOn("llm/generate.cancel", match="data.job_id"),
)
async def llm_generate(ctx: stepline.Context) -> dict[str, Any]:
    request = await ctx.step.run("validate-context", validate_context, ctx.event.data)
    await ctx.set_progress(10, "calling the model")
    reply = await ctx.step.run("call-model", simulated_model, request["prompt"])
    await ctx.set_progress(90, "storing the result")
    stored = await ctx.step.run("store-result", lambda: {"chars": len(reply["text"])})
    await ctx.set_progress(100, "done")
    return {"text": reply["text"], "usage": reply["usage"], "stored": stored}


@app.function(id="generate-screens", trigger=stepline.TriggerEvent("screens/generate.requested"), retries=2)
async def generate_screens(ctx: stepline.Context) -> dict[str, Any]:
    screens = list(ctx.event.data.get("screens") or ["home", "settings", "profile"])
    results = []
    for index, screen in enumerate(screens):
        result = await ctx.step.run("generate-screen", simulated_model, f"screen {screen}", failure_rate=0.1)
        results.append({"screen": screen, "text": result["text"]})
        await ctx.set_progress(100 * (index + 1) / len(screens), f"generated {index + 1} of {len(screens)}")
    return {"screens": results}


def fetch_page(page: int, total: int) -> dict[str, Any]:
    """SIMULATED paginated API: `total` pages of three items each."""
    return {"page": page, "items": [f"item-{page}-{i}" for i in range(3)], "has_more": page + 1 < total}


@app.function(id="paginated-fetch", trigger=stepline.TriggerEvent("crawl/requested"), retries=3)
async def paginated_fetch(ctx: stepline.Context) -> dict[str, Any]:
    total = int(ctx.event.data.get("pages", 3))
    page, items = 0, 0
    while True:
        result = await ctx.step.run("fetch-page", fetch_page, page, total)
        items += len(result["items"])
        await ctx.set_progress(min(100.0, 100 * (page + 1) / total), f"page {page + 1} of {total}")
        if not result["has_more"]:
            break
        await ctx.step.sleep("pause", "1s")
        page += 1
    return {"pages": page + 1, "items": items}
