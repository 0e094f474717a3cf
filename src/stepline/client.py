"""Send events to a Stepline server over HTTP: ``Client`` (sync) and ``AsyncClient``.

Both share one pure core that builds the request and reads the reply; only the
transport differs. Sent from inside a traced request (OpenTelemetry), the request carries
its W3C trace context (``traceparent`` / ``tracestate`` headers), which the server stores
with each event so the runs they start join the sender's trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from stepline import errors
from stepline import event as event_mod
from stepline.event import Event
from stepline.observability import tracing

DEFAULT_URL = "http://127.0.0.1:8288"


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
    """Async client: ``await AsyncClient(url, event_key).send({...})``."""

    def __init__(self, url: str = DEFAULT_URL, event_key: str = "dev", *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._endpoint = f"{self.url}/e/{event_key}"
        self._http = httpx.AsyncClient(timeout=timeout)

    async def send(self, events: dict[str, Any] | Event | Sequence[dict[str, Any] | Event]) -> list[str]:
        try:
            response = await self._http.post(self._endpoint, json=_payload(events), headers=tracing.current_carrier())
        except httpx.HTTPError as exc:
            raise _translate(exc, self.url) from exc
        return _read_reply(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
