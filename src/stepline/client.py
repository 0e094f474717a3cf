"""Send events to a Stepline server over HTTP: ``Client`` (sync) and ``AsyncClient``.

Both share one pure core that builds the request and reads the reply; only the
transport differs. Sent from inside a traced request (OpenTelemetry), the request carries
its W3C trace context (``traceparent`` / ``tracestate`` headers), which the server stores
with each event so the runs they start join the sender's trace.

``AsyncClient.call_within_budgets`` also makes a model call under the server's cost
budgets (a web process's ``Router`` quick path): reserve its worst case
(``POST /api/v1/budget-reservations``), call, settle what it cost
(``POST /api/v1/budget-reservations/{id}/settle``). Those routes take the API token;
without it, the event key lets quick calls through for events that no budget applies
to (not filed in ``llm_usage``), and a call that budgets apply to raises ``ConfigError``
naming the token. The ``Router`` is async, so the sync ``Client`` only sends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from stepline import errors
from stepline import event as event_mod
from stepline.budgets import Charge, Spend
from stepline.event import Event
from stepline.observability import tracing

DEFAULT_URL = "http://127.0.0.1:8288"
RESERVATIONS = "/api/v1/budget-reservations"
EVENT_KEY_HEADER = "x-stepline-event-key"  # reservations by a client without the API token
USAGE_FIELDS = ("provider", "model", "usage", "cost_usd", "latency_ms")  # what llm_usage files of a call
MAX_HOLD_S = 86_400.0  # the longest hold a server grants a reservation (ttl_s)
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cache_write_tokens", "total_tokens")


def _payload(events: dict[str, Any] | Event | Sequence[dict[str, Any] | Event]) -> list[dict[str, Any]]:
    items = [events] if isinstance(events, (dict, Event)) else list(events)
    # Validate here too, so a bad event fails in the caller with the same message.
    return [event_mod.validate(item, index=i).to_dict() for i, item in enumerate(items)]


def _read_reply(response: httpx.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    if response.status_code >= 400:
        message = body.get("error") if isinstance(body, dict) else str(body)
        if response.status_code in (400, 413):
            raise errors.EventError(f"the server refused the events ({response.status_code}): {message}")
        raise errors.SteplineError(f"sending events failed ({response.status_code}): {message}")
    return list(body["ids"])


def _reservation(event: Mapping[str, Any] | Event, spend: Spend, ttl_s: float) -> dict[str, Any]:
    """The body that reserves a call's worst case for ``event``."""
    body = event_mod.validate(event).to_dict()
    worst = spend.worst
    hold_s = min(max(ttl_s, 1.0), MAX_HOLD_S)
    return {"event": body, "usd": worst.usd, "tokens": worst.tokens, "describe": spend.describe[:1000], "ttl_s": hold_s}


def _settlement(reserved: Mapping[str, Any], cost: Charge, result: Mapping[str, Any] | None) -> dict[str, Any]:
    """The body that settles a reservation: what the call cost, and a completed call's usage."""
    usage = None if result is None else {name: result.get(name) for name in USAGE_FIELDS}
    if usage is not None:
        tokens = usage["usage"] if isinstance(usage["usage"], Mapping) else {}
        usage["usage"] = {k: v for k, v in tokens.items() if k in TOKEN_FIELDS and isinstance(v, int) and not isinstance(v, bool)}
    return {"holds": reserved["holds"], "usd": cost.usd, "tokens": cost.tokens, "user_id": reserved["user_id"], "usage": usage}


def _read_budget_reply(response: httpx.Response, doing: str) -> dict[str, Any]:
    """A reservation route's answer; a refusal becomes ``BudgetExceeded`` with its fields."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    if not isinstance(body, dict):
        body = {"error": str(body)}
    if response.status_code < 400:
        return body
    message = str(body.get("error"))
    refusal = body.get("budget_exceeded")
    if response.status_code == 402 and isinstance(refusal, dict):
        raise errors.BudgetExceeded(
            message, budget=str(refusal.get("budget")), key=str(refusal.get("key")),
            spent_usd=float(refusal.get("spent_usd") or 0.0), spent_tokens=int(refusal.get("spent_tokens") or 0),
            limit_usd=refusal.get("limit_usd"), limit_tokens=refusal.get("limit_tokens"),
            on_exceeded=str(refusal.get("on_exceeded") or "fail"),
        )
    if response.status_code in (401, 403):
        raise errors.ConfigError(
            f"{doing} was refused ({response.status_code}: {message}); model calls under the server's budgets "
            "need its API token: AsyncClient(url, event_key, api_token=<STEPLINE_API_TOKEN>)"
        )
    raise errors.SteplineError(f"{doing} failed ({response.status_code}): {message}")


def _translate(exc: httpx.HTTPError, url: str) -> errors.SteplineError:
    error = errors.SteplineError(f"cannot reach the Stepline server at {url}: {exc}; is `stepline dev` running?")
    error.__cause__ = exc
    return error


class Client:
    """Sync client: ``Client(url, event_key).send({...})`` returns the event ids."""

    def __init__(self, url: str = DEFAULT_URL, event_key: str = "dev", *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._endpoint = f"{self.url}/e/{event_key}"
        self._http = httpx.Client(timeout=timeout)

    def send(self, events: dict[str, Any] | Event | Sequence[dict[str, Any] | Event]) -> list[str]:
        try:
            response = self._http.post(self._endpoint, json=_payload(events), headers=tracing.current_carrier())
        except httpx.HTTPError as exc:
            raise _translate(exc, self.url) from exc
        return _read_reply(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Async client: ``await AsyncClient(url, event_key).send({...})``.

    ``api_token``: the server's API token, which ``call_within_budgets`` (a ``Router``'s
    quick calls under the budgets) needs on a production server for events that budgets
    apply to, and to file quick calls' usage; without it such calls raise ``ConfigError``
    before the model is called, and calls that no budget applies to go through unfiled.
    """

    def __init__(
        self, url: str = DEFAULT_URL, event_key: str = "dev", *, api_token: str | None = None, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self._endpoint = f"{self.url}/e/{event_key}"
        # Without the API token, reservations carry the event key, which is enough for
        # events that no budget applies to (the server says so; nothing is held or filed).
        self._api_headers = {"authorization": f"Bearer {api_token}"} if api_token else {EVENT_KEY_HEADER: event_key}
        self._http = httpx.AsyncClient(timeout=timeout)

    async def send(self, events: dict[str, Any] | Event | Sequence[dict[str, Any] | Event]) -> list[str]:
        try:
            response = await self._http.post(self._endpoint, json=_payload(events), headers=tracing.current_carrier())
        except httpx.HTTPError as exc:
            raise _translate(exc, self.url) from exc
        return _read_reply(response)

    async def call_within_budgets(
        self, event: Mapping[str, Any] | Event, spend: Spend, call: Callable[[], Awaitable[dict[str, Any]]],
        ttl_s: float = 900.0,
    ) -> dict[str, Any]:
        """Make a model call outside any run (``Router``'s quick path) under the budgets a run
        of ``event`` would meet on the server (those its registered functions declare): the
        call's worst case is reserved first, its cost settled after, and it is filed in
        ``llm_usage`` with the event's user. Raises ``BudgetExceeded`` (with the budget, key,
        spend, limit and ``on_exceeded``) when a budget has no room, before calling;
        ``ttl_s``: how long the reservation holds if this process never settles it."""
        reserved = await self._budget_call(RESERVATIONS, _reservation(event, spend, ttl_s), "reserving a model call's budget")
        if reserved.get("id") is None:  # no budget applies and no API token: nothing to hold or settle
            return await call()
        settle = f"{RESERVATIONS}/{reserved['id']}/settle"
        try:
            result = await call()
        except Exception as exc:
            await self._budget_call(settle, _settlement(reserved, spend.billed(exc), None), "settling a failed model call")
            raise
        await self._budget_call(settle, _settlement(reserved, spend.actual(result), result), "settling a model call")
        return result

    async def _budget_call(self, path: str, body: dict[str, Any], doing: str) -> dict[str, Any]:
        try:
            response = await self._http.post(f"{self.url}{path}", json=body, headers=self._api_headers)
        except httpx.HTTPError as exc:
            raise _translate(exc, self.url) from exc
        return _read_budget_reply(response, doing)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
