"""``ctx.step.ai.infer``: a model call as a checkpointed step of kind ``ai.infer``.

The step's meta carries provider, model, normalised usage, cost and latency; the
engine files it in ``llm_usage``, where the API sums it per run, user, function
and day. With ``stream=True`` the text is published to the run's live stream as it
arrives (topic ``"ai"`` unless told otherwise) as ``{"step", "seq", "delta"}``, ending
with ``"done": true``; a retried attempt starts again at ``seq`` 0. The checkpoint
holds the final result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from stepline import errors
from stepline.context import Step
from stepline.llm import budget
from stepline.llm.client import LLM, default_llm

# Streamed text is published in pieces of at least this many characters or this
# many seconds apart, so a fast stream is not one database write per token.
FLUSH_CHARS = 64
FLUSH_SECONDS = 0.1


def usage_meta(result: dict[str, Any]) -> dict[str, Any]:
    """The step meta that ``llm_usage`` is filled from."""
    usage = result.get("usage") or {}
    return {
        "provider": result.get("provider"),
        "model": result.get("model"),
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "reasoning_tokens": usage.get("reasoning_tokens", 0),
            "cached_tokens": usage.get("cached_tokens", 0),
        },
        "cost_usd": result.get("cost_usd", 0.0),
        "cost_source": result.get("cost_source"),
        "latency_ms": result.get("latency_ms"),
        "finish_reason": result.get("finish_reason"),
    }


class _Publisher:
    """Coalesces stream deltas into a few ``publish`` calls."""

    def __init__(self, step: Step, step_id: str, topic: str) -> None:
        self._step, self._step_id, self._topic = step, step_id, topic
        self._buffer: list[str] = []
        self._size = 0
        self._last = time.monotonic()
        self.seq = 0

    async def delta(self, text: str) -> None:
        self._buffer.append(text)
        self._size += len(text)
        if self._size >= FLUSH_CHARS or time.monotonic() - self._last >= FLUSH_SECONDS:
            await self.flush()

    async def flush(self, **extra: Any) -> None:
        if not self._buffer and not extra:
            return
        message = {"step": self._step_id, "seq": self.seq, "delta": "".join(self._buffer), **extra}
        self._buffer, self._size, self._last = [], 0, time.monotonic()
        self.seq += 1
        await self._step.driver.publish(self._topic, message)


class AI:
    """``ctx.step.ai``: model calls as durable steps."""

    def __init__(self, step: Step) -> None:
        self._step = step

    def infer(
        self,
        step_id: str,
        *,
        model: str,
        messages: Any,
        stream: bool = False,
        topic: str = "ai",
        provider: str | None = None,
        llm: LLM | None = None,
        **params: Any,
    ) -> Awaitable[dict[str, Any]]:
        """Call ``model`` once per attempt and save the result; replays return it (await it).

        Returns ``{"text", "model", "provider", "finish_reason", "usage", "cost_usd",
        "cost_source", "latency_ms"}`` (plus ``reasoning`` / ``tool_calls`` when present).
        Retryable provider failures retry the step (429 waits as told); a stream that
        ends without its finish marker is a failed attempt.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise errors.ConfigError(
                f"step.ai.infer({step_id!r}) needs an async def handler; in a def handler, call "
                "stepline.llm.default_llm().complete(...) inside an async body given to ctx.step.run"
            ) from None
        return self._infer(step_id, model=model, messages=messages, stream=stream, topic=topic, provider=provider, llm=llm, **params)

    async def _infer(
        self,
        step_id: str,
        *,
        model: str,
        messages: Any,
        stream: bool,
        topic: str,
        provider: str | None,
        llm: LLM | None,
        **params: Any,
    ) -> dict[str, Any]:
        if not isinstance(step_id, str) or not step_id:
            raise errors.ConfigError(f"step.ai.infer: step id must be a non-empty string, got {step_id!r}")
        client = llm or default_llm()
        client.resolve(model, provider)  # a config error fails here, before any attempt

        async def compute() -> dict[str, Any]:
            publisher = _Publisher(self._step, step_id, topic) if stream else None
            completion = await client.complete(
                model=model,
                messages=messages,
                stream=stream,
                on_delta=None if publisher is None else publisher.delta,
                provider=provider,
                **params,
            )
            if publisher is not None:
                await publisher.flush(done=True, finish_reason=completion.finish_reason)
            return completion.to_dict()

        # Before each attempt its worst case is reserved on the function's budgets (if any).
        spend = budget.spend(client, model, messages, provider, params)
        result: dict[str, Any] = await self._step.driver.record_step(step_id, "ai.infer", compute, usage_meta, spend)
        return result


def register() -> None:
    Step.extensions["ai"] = AI
