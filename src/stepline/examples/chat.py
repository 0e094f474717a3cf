"""Chat (Hexframe): quick models answer inline, slow ones become a durable, cancellable job.

The web side (``chat_api.py``) asks ``router.generate(...)``: a quick model's reply
comes straight back; a slow model, a reasoning model or a context over 4,000
tokens sends ``llm/generate.requested`` and returns ``{"job_id", "status": "pending"}``.
This function then runs validate-context → call-model → store-result → notify,
throttled to 5 runs a minute per user, retried 3 times, cancelled by
``llm/generate.cancel`` with the same ``job_id``. The model's text streams to the
run's live stream while it is written; the job row is what the page polls.

Try: ``stepline send llm/generate.requested --data '{"user_id":"u1","prompt":"hello"}'``
"""

from __future__ import annotations

import os
from typing import Any

import stepline
from stepline.examples import jobs
from stepline.llm import Router

app = stepline.App("chat")

QUICK_MODELS = ["fake-quick", "gpt-4o-mini", "gpt-3.5-turbo", "claude-3-haiku"]
SLOW_MODELS = ["fake-slow", "deepseek/deepseek-r1", "o1-preview", "claude-3-opus"]


def default_model() -> str:
    return os.environ.get("CHAT_MODEL", "").strip() or "fake-slow"


def make_router(sender: Any, **options: Any) -> Router:
    """The routing rule (``stepline.llm.router``); USE_QUEUE / QUICK_MODELS / SLOW_MODELS override it from the env."""
    return Router(quick_models=QUICK_MODELS, slow_models=SLOW_MODELS, token_threshold=4000, sender=sender, **options)


def validate_context(data: dict[str, Any]) -> dict[str, Any]:
    messages = data.get("messages")
    if not messages:
        prompt = str(data.get("prompt", "")).strip()
        if not prompt:
            raise stepline.NonRetriableError("the event has neither messages nor a prompt: send data.messages or data.prompt")
        messages = [{"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and m.get("role") for m in messages):
        raise stepline.NonRetriableError("data.messages must be a list of {role, content} objects")
    params = {k: v for k, v in (data.get("params") or {}).items() if k in ("temperature", "max_tokens", "max_completion_tokens", "top_p", "stop")}
    return {"messages": messages[-50:], "model": data.get("model") or default_model(), "params": params}


def store_result(job_id: str, user_id: str | None, reply: dict[str, Any]) -> dict[str, Any]:
    usage = reply["usage"]
    jobs.upsert(
        job_id,
        kind="chat",
        user_id=user_id,
        status="completed",
        progress=100,
        output={"text": reply["text"], "model": reply["model"], "finish_reason": reply["finish_reason"]},
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        cost_usd=reply["cost_usd"],
    )
    return {"job_id": job_id, "stored": True}


def mark_failed(ctx: stepline.Context) -> None:
    """on_failure: the page stops polling with the error message."""
    original = ctx.event.data.get("event", {}).get("data", {})
    job_id = original.get("job_id")
    if job_id:
        jobs.upsert(job_id, kind="chat", status="failed", error=str(ctx.event.data.get("error", {}).get("message", "failed")))


@app.function(
    id="llm-generate",
    trigger=stepline.TriggerEvent("llm/generate.requested"),
    retries=3,
    throttle=stepline.Throttle(limit=5, period="1m", key="event.data.user_id"),
    cancel_on=[stepline.CancelOn("llm/generate.cancel", match="data.job_id")],
    on_failure=mark_failed,
)
async def generate(ctx: stepline.Context) -> dict[str, Any]:
    data = ctx.event.data
    job_id = str(data.get("job_id") or ctx.run_id)
    user_id = data.get("user_id")
    request = await ctx.step.run("validate-context", validate_context, data)
    await ctx.step.run("mark-processing", lambda: jobs.upsert(job_id, kind="chat", user_id=user_id, status="processing", progress=10)["status"])
    await ctx.set_progress(10, f"calling {request['model']}")
    reply = await ctx.step.ai.infer("call-model", model=request["model"], messages=request["messages"], stream=True, **request["params"])
    await ctx.set_progress(90, "storing the result")
    await ctx.step.run("store-result", store_result, job_id, user_id, reply)

    async def notify() -> dict[str, Any]:
        await ctx.publish({"job_id": job_id, "status": "completed"}, topic="status")
        return {"notified": True}

    await ctx.step.run("notify", notify)
    await ctx.set_progress(100, "done")
    return {"job_id": job_id, "text": reply["text"], "usage": reply["usage"], "cost_usd": reply["cost_usd"]}


@app.function(
    id="llm-generate-cancelled",
    trigger=stepline.TriggerEvent("stepline/function.cancelled", if_="event.data.function_id == 'llm-generate'"),
)
def mark_cancelled(ctx: stepline.Context) -> None:
    """A generation cancelled (``llm/generate.cancel``, the API, a timeout): the page stops polling."""
    jobs.mark_cancelled(ctx.event.data, "job_id", kind="chat")
