"""Screen generation (AppForge): one model step per screen, progress after each, cost per job.

An optional theme step first, then ``generate-screen-{i}`` for each screen (a
failed screen retries alone; the finished ones are never generated again), at most
5 jobs at once. The job row gets the summed tokens and cost; ``jobs.metrics
("screen-generation")`` gives the job table's success rate, average duration and daily cost.

Try: ``stepline send studio/generate.screens --data '{"branding":{"name":"Acme"},"screens":["home","pricing"],"include_theme":true}'``
"""

from __future__ import annotations

import os
from typing import Any

import stepline
from stepline.examples import jobs

app = stepline.App("screens")
KIND = "screen-generation"


def model() -> str:
    return os.environ.get("SCREENS_MODEL", "").strip() or "fake-quick"


def theme_prompt(branding: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You design UI themes. Answer with CSS custom properties only."},
        {"role": "user", "content": f"A theme for the brand {branding}"},
    ]


def screen_prompt(branding: dict[str, Any], screen: Any, theme: str | None) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You write one self-contained HTML screen." + (f" Use this theme: {theme[:2000]}" if theme else "")},
        {"role": "user", "content": f"Brand: {branding}. Screen: {screen}"},
    ]


def mark_failed(ctx: stepline.Context) -> None:
    original = ctx.event.data.get("event", {}).get("data", {})
    job_id = original.get("job_id") or ctx.event.data.get("run_id")
    jobs.upsert(str(job_id), kind=KIND, status="failed", error=str(ctx.event.data.get("error", {}).get("message", "failed")))


@app.function(
    id="screen-generation",
    trigger=[stepline.TriggerEvent("studio/generate.screens"), stepline.TriggerEvent("screens/generate.requested")],
    retries=3,
    concurrency=[stepline.Concurrency(limit=5)],
    on_failure=mark_failed,
)
async def generate_screens(ctx: stepline.Context) -> dict[str, Any]:
    data = ctx.event.data
    job_id = str(data.get("job_id") or ctx.run_id)
    branding = data.get("branding") or {}
    screens = list(data.get("screens") or ["home", "settings", "profile"])
    await ctx.step.run("mark-processing", lambda: jobs.upsert(job_id, kind=KIND, status="processing", progress=0, input=data)["status"])

    replies = []
    theme = None
    if data.get("include_theme"):
        reply = await ctx.step.ai.infer("generate-theme", model=model(), messages=theme_prompt(branding))
        theme = reply["text"]
        replies.append(reply)
    results = []
    for index, screen in enumerate(screens):
        reply = await ctx.step.ai.infer(f"generate-screen-{index}", model=model(), messages=screen_prompt(branding, screen, theme))
        replies.append(reply)
        results.append({"screen": screen, "html": reply["text"]})
        await ctx.set_progress(round(100 * (index + 1) / len(screens)), f"generated {index + 1} of {len(screens)} screens")

    usage = {
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in replies),
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in replies),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    cost = round(sum(r["cost_usd"] for r in replies), 10)
    await ctx.step.run(
        "complete-job",
        lambda: jobs.upsert(job_id, status="completed", progress=100, output={"screens": results, "theme": theme},
                            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"], cost_usd=cost)["status"],
    )
    return {"job_id": job_id, "screen_count": len(results), "usage": usage, "cost_usd": cost}


@app.function(
    id="screen-generation-cancelled",
    trigger=stepline.TriggerEvent("stepline/function.cancelled", if_="event.data.function_id == 'screen-generation'"),
)
def mark_cancelled(ctx: stepline.Context) -> None:
    """A run cancelled from the API, the CLI or the dashboard: the job row says so, not ``processing``."""
    jobs.mark_cancelled(ctx.event.data, "job_id", kind=KIND)
