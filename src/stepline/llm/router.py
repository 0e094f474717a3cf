"""Quick models answer inline; slow models, reasoning models and big contexts are queued.

The usual rule of apps that queue their LLM calls, as one object a web route calls. ``USE_QUEUE=false`` sends every
call direct at once (the rollback switch); ``QUICK_MODELS`` / ``SLOW_MODELS``
(comma-separated) replace the lists without a deploy.
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from stepline import errors
from stepline.llm import budget, tokens
from stepline.llm.client import LLM, default_llm, normalise_messages

DEFAULT_EVENT = "llm/generate.requested"
# A direct call's reservation holds at least this long if its process dies before settling it.
DIRECT_RESERVATION_S = 900.0
_REASONING = re.compile(r"(^o\d)|(-r1\b)|reason|think|qwq", re.IGNORECASE)


class Sender(Protocol):
    """Something that sends events: a running ``stepline.App`` or a ``stepline.AsyncClient``."""

    async def send(self, events: Any) -> list[str]: ...


@runtime_checkable
class BudgetedSender(Protocol):
    """A sender that can also make a call under the app's budgets: a running ``stepline.App``,
    or a ``stepline.AsyncClient`` (under the budgets its server's registered functions declare)."""

    async def send(self, events: Any) -> list[str]: ...

    async def call_within_budgets(self, event: Any, spend: Any, call: Any, ttl_s: float = ...) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Route:
    queued: bool
    reason: str
    estimated_tokens: int


def _bare(model: str) -> str:
    """``deepseek/deepseek-r1`` -> ``deepseek-r1``: lists match with or without the vendor."""
    return model.rsplit("/", 1)[-1].lower()


def _env_list(env: Mapping[str, str], name: str) -> list[str] | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return [m.strip() for m in raw.split(",") if m.strip()]


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise errors.ConfigError(f"{name}={raw!r}: expected true or false")


def is_reasoning_model(model: str) -> bool:
    """o1/o3/o4, *-r1, *reasoner, *thinking, QwQ: slow by nature, so always queued."""
    return bool(_REASONING.search(model.rsplit("/", 1)[-1]))


class Router:
    """Decide per call: answer now (quick model) or queue a durable run and return a job id."""

    def __init__(
        self,
        *,
        quick_models: Iterable[str] = (),
        slow_models: Iterable[str] = (),
        token_threshold: int = 4000,
        use_queue: bool = True,
        sender: Sender | None = None,
        llm: LLM | None = None,
        event: str = DEFAULT_EVENT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        if isinstance(token_threshold, bool) or not isinstance(token_threshold, int) or token_threshold <= 0:
            raise errors.ConfigError(f"Router.token_threshold: expected a whole number > 0, got {token_threshold!r}")
        self.quick_models = _env_list(env, "QUICK_MODELS") or list(quick_models)
        self.slow_models = _env_list(env, "SLOW_MODELS") or list(slow_models)
        env_queue = _env_bool(env, "USE_QUEUE")
        self.use_queue = use_queue if env_queue is None else env_queue
        self.token_threshold = token_threshold
        self.sender = sender
        self.event = event
        self._llm = llm
        self._quick = {m.lower() for m in self.quick_models} | {_bare(m) for m in self.quick_models}
        self._slow = {m.lower() for m in self.slow_models} | {_bare(m) for m in self.slow_models}

    @property
    def llm(self) -> LLM:
        return self._llm or default_llm()

    def _listed(self, model: str, names: set[str]) -> bool:
        return model.lower() in names or _bare(model) in names

    def route(self, model: str, messages: Any) -> Route:
        """Where a call goes, and why."""
        estimate = tokens.estimate_messages(normalise_messages(messages))
        if not self.use_queue:
            return Route(False, "queue disabled (USE_QUEUE=false)", estimate)
        if self._listed(model, self._slow):
            return Route(True, "slow model", estimate)
        if is_reasoning_model(model):
            return Route(True, "reasoning model", estimate)
        if estimate > self.token_threshold:
            return Route(True, f"large context (~{estimate} tokens > {self.token_threshold})", estimate)
        if self._listed(model, self._quick):
            return Route(False, "quick model", estimate)
        return Route(True, "model not in quick_models", estimate)

    async def generate(
        self,
        *,
        user_id: str,
        model: str,
        messages: Any,
        job_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A quick model's completion (``status: "completed"``), or ``{"job_id", "status": "pending"}``.

        A queued call sends ``event`` with ``data = {job_id, user_id, model, messages,
        params, **data}``; the function it triggers does the call as a durable step.
        """
        chat = normalise_messages(messages)
        route = self.route(model, chat)
        job_id = job_id or uuid.uuid4().hex
        payload = {"job_id": job_id, "user_id": user_id, "model": model, "messages": chat, "params": params, **(data or {})}
        event = {"name": self.event, "data": payload, "user": {"id": user_id}}
        if not route.queued:
            try:
                result = await self._direct(event, model, chat, params)
            except errors.BudgetExceeded as exc:
                if exc.on_exceeded != "pause" or self.sender is None:
                    raise
                # Queued instead: its run waits until the budget has room, nothing is lost.
                route = Route(True, f"budget {exc.budget!r} has no room for key {exc.key!r}", route.estimated_tokens)
            else:
                return {"status": "completed", "job_id": None, "route": route.reason, **result}
        if self.sender is None:
            raise errors.ConfigError(
                "Router: this call must be queued but the router has no sender; pass sender= your running "
                "stepline.App or a stepline.AsyncClient"
            )
        ids = await self.sender.send(event)
        return {"job_id": job_id, "status": "pending", "event_id": ids[0], "model": model, "route": route.reason}

    async def _direct(self, event: dict[str, Any], model: str, chat: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """A quick call now; with a running App or an AsyncClient as the sender, under the
        budgets a run of ``event`` would meet, and filed in ``llm_usage`` with the user."""
        llm = self.llm

        async def call() -> dict[str, Any]:
            return (await llm.complete(model=model, messages=chat, **params)).to_dict()

        if not isinstance(self.sender, BudgetedSender):
            return await call()
        target, _ = llm.resolve(model)
        hold_s = max(DIRECT_RESERVATION_S, target.connect_timeout + target.read_timeout)
        return await self.sender.call_within_budgets(event, budget.spend(llm, model, chat, None, params), call, hold_s)
