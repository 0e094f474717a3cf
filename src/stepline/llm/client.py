"""``LLM``: one small async HTTP client for every configured provider.

It makes exactly one HTTP attempt per call: retries belong to the step that made
the call, so the journal sees (and records) every attempt. Failures come out as
the classes in ``stepline.llm.errors``, which the engine already knows how to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from stepline import errors
from stepline.llm import errors as llm_errors
from stepline.llm import providers as providers_mod
from stepline.llm import sse, tokens, wire_anthropic, wire_openai
from stepline.llm.pricing import Price, PriceTable
from stepline.llm.providers import Provider
from stepline.llm.types import Completion, Usage

OnDelta = Callable[[str], Awaitable[None]]

# Mid-stream error types (no HTTP status of their own) mapped to the status they mean.
_ERROR_TYPE_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "server_error": 500,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "billing_error": 402,
    "request_too_large": 413,
}


def normalise_messages(messages: Any) -> list[dict[str, Any]]:
    """A prompt string becomes one user message; a list must hold ``{role, content}`` dicts."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise errors.ConfigError(f"messages: expected a non-empty list of {{role, content}} dicts or a string, got {messages!r}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise errors.ConfigError(f"messages[{i}]: expected a dict with 'role' and 'content', got {message!r}")
        out.append(dict(message))
    return out


class LLM:
    """Chat completions over the configured providers, one attempt per call.

    ``LLM()`` reads the environment (see ``stepline.llm.providers.ENV_VARS``);
    ``LLM([Provider(...)], default=..., prices={...})`` configures it in code.
    """

    def __init__(
        self,
        providers: Sequence[Provider] | None = None,
        *,
        default: str | None = None,
        prices: Mapping[str, Price] | PriceTable | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        env_default = None
        if providers is None:
            providers, env_default = providers_mod.from_env()
        self.providers: dict[str, Provider] = {}
        for provider in providers:
            if provider.name in self.providers:
                raise errors.ConfigError(f"LLM: provider {provider.name!r} is configured twice")
            self.providers[provider.name] = provider
        self.default = default or env_default or (next(iter(self.providers)) if self.providers else None)
        if self.default is not None and self.default not in self.providers:
            raise errors.ConfigError(f"LLM: default={self.default!r} is not one of the providers {sorted(self.providers)}")
        if isinstance(prices, PriceTable):
            self.prices = prices
        else:
            self.prices = PriceTable(prices) if prices is not None else PriceTable.from_env()
        self._transport = transport
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()

    def resolve(self, model: str, provider: str | None = None) -> tuple[Provider, str]:
        """The provider a model string goes to, and the model name it is sent as."""
        if not isinstance(model, str) or not model:
            raise errors.ConfigError(f"model: expected a model name, got {model!r}")
        if provider is None:
            prefix, sep, rest = model.partition(":")
            if sep and prefix in self.providers:
                provider, model = prefix, rest
        name = provider or self.default
        if name is None:
            raise errors.ConfigError(
                "no LLM provider is configured: set OPENROUTER_API_KEY, OPENAI_API_KEY or ANTHROPIC_API_KEY, "
                "or STEPLINE_LLM_BASE_URL for a self-hosted server (vLLM, Ollama, llama.cpp); in tests use "
                "stepline.testing.FakeProvider, or mock the step by id with stepline.testing.TestEngine.mock_step"
            )
        if name not in self.providers:
            raise errors.ConfigError(f"model {model!r}: provider {name!r} is not configured (configured: {sorted(self.providers)})")
        return self.providers[name], model

    def _client(self) -> httpx.AsyncClient:
        # httpx clients belong to one event loop; keep one per loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(transport=self._transport, limits=httpx.Limits(max_connections=200))
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close this event loop's connections."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def complete(
        self,
        *,
        model: str,
        messages: Any,
        stream: bool = False,
        on_delta: OnDelta | None = None,
        provider: str | None = None,
        **params: Any,
    ) -> Completion:
        """One call. With ``stream=True``, ``on_delta(text)`` gets each piece as it arrives."""
        # The call runs in its own task and is cancelled exactly once, however often the
        # caller is: a second cancellation landing inside the HTTP library's cleanup leaves
        # the connection open, and the provider keeps generating (and billing).
        call = asyncio.ensure_future(self._complete(model, messages, stream, on_delta, provider, params))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.cancel()
            while not call.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({call})
            raise

    async def _complete(
        self, model: str, messages: Any, stream: bool, on_delta: OnDelta | None, provider: str | None, params: dict[str, Any]
    ) -> Completion:
        target, model_name = self.resolve(model, provider)
        chat = normalise_messages(messages)
        wire = wire_anthropic if target.wire == "anthropic" else wire_openai
        url, headers, body = wire.request(target, model_name, chat, stream, params)
        timeout = httpx.Timeout(connect=target.connect_timeout, read=target.read_timeout, write=30.0, pool=target.connect_timeout)
        started = time.monotonic()
        client = self._client()
        request = client.build_request("POST", url, headers=headers, content=orjson.dumps(body), timeout=timeout)
        acc: Any = wire_openai.Accumulator() if target.wire == "openai" else wire_anthropic.Accumulator()
        try:
            try:
                response = await client.send(request, stream=True)
                try:
                    if response.status_code >= 400:
                        raise self._status_error(target, model_name, response.status_code, response.headers, await response.aread())
                    content_type = response.headers.get("content-type", "")
                    if stream and "text/event-stream" in content_type:
                        await self._read_stream(target, model_name, response, on_delta, acc)
                    else:
                        acc = self._read_body(target, model_name, await response.aread())
                        if stream and on_delta is not None and "".join(acc.text):
                            await on_delta("".join(acc.text))  # the server ignored stream=True
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                raise llm_errors.connection_failed(target.name, target.base_url, exc) from exc
            return self._completion(target, model_name, acc, int((time.monotonic() - started) * 1000))
        except Exception as exc:
            billed = self._billed(target, model_name, chat, acc)
            if billed is not None:
                exc.billed = billed  # type: ignore[attr-defined]  # read by budgets and recorded on the attempt
            raise

    # --- reading ---------------------------------------------------------------------

    def _status_error(self, target: Provider, model: str, status: int, headers: Mapping[str, str], body: Any) -> Exception:
        key_hint = next((k.key_var for k in providers_mod.KNOWN if k.name == target.name), "STEPLINE_LLM_API_KEY or Provider.api_key")
        return llm_errors.from_status(target.name, status, headers, body, model=model, base_url=target.base_url, key_hint=key_hint)

    def _embedded_error(self, target: Provider, model: str, data: dict[str, Any]) -> Exception:
        error = data.get("error") if isinstance(data.get("error"), dict) else data
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else _ERROR_TYPE_STATUS.get(str((error or {}).get("type")), 500)
        return self._status_error(target, model, status, {}, data)

    def _read_body(self, target: Provider, model: str, raw: bytes) -> Any:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise llm_errors.truncated(target.name, f"the response body is not complete JSON ({len(raw)} bytes: {exc})") from exc
        if not isinstance(data, dict):
            raise llm_errors.truncated(target.name, "the response body is not a JSON object")
        if target.wire == "openai":
            if wire_openai.error_in(data):
                raise self._embedded_error(target, model, data)
            acc: Any = wire_openai.Accumulator()
        else:
            if data.get("type") == "error":
                raise self._embedded_error(target, model, data)
            acc = wire_anthropic.Accumulator()
        acc.body(data)
        return acc

    async def _read_stream(self, target: Provider, model: str, response: httpx.Response, on_delta: OnDelta | None, acc: Any) -> Any:
        async for name, data in sse.events(response.aiter_lines()):
            if data.strip() == "[DONE]":
                break
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # a malformed line; completeness is judged by the finish marker
            if not isinstance(parsed, dict):
                continue
            if name == "error" or parsed.get("type") == "error" or (target.wire == "openai" and wire_openai.error_in(parsed)):
                raise self._embedded_error(target, model, parsed)
            new = acc.chunk(parsed) if target.wire == "openai" else acc.event(name, parsed)
            if new and on_delta is not None:
                await on_delta(new)
        return acc

    def _billed(self, target: Provider, model: str, chat: list[dict[str, Any]], acc: Any) -> dict[str, Any] | None:
        """What a failed call was billed, once output had begun (a stream cut, a body
        without its finish marker): the usage the provider reported, else an estimate
        from the prompt and the text received. None when no output came."""
        text = "".join(acc.text) + "".join(acc.reasoning)
        if target.wire == "openai":
            usage, reported = wire_openai.usage(acc.usage_raw)
        else:
            usage, reported = wire_anthropic.usage(acc.usage_raw), None
        estimated = usage.completion_tokens == 0
        if estimated:
            if not text:
                return None
            usage = Usage(
                prompt_tokens=usage.prompt_tokens or tokens.estimate_messages(chat),
                completion_tokens=tokens.estimate_text(text),
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        cost, source = self.prices.cost(target, model, usage, reported)
        return {
            "provider": target.name, "model": model, "usage": usage.to_dict(), "cost_usd": cost, "cost_source": source,
            "estimated": estimated,
        }

    def _completion(self, target: Provider, model: str, acc: Any, latency_ms: int) -> Completion:
        if target.wire == "openai":
            complete = acc.finish_reason is not None
            usage, reported = wire_openai.usage(acc.usage_raw)
        else:
            complete = acc.done
            usage, reported = wire_anthropic.usage(acc.usage_raw), None
        if not complete:
            received = len("".join(acc.text))
            raise llm_errors.truncated(target.name, f"the response ended without a finish marker after {received} characters")
        cost, source = self.prices.cost(target, model, usage, reported)
        return Completion(
            text="".join(acc.text),
            model=model,
            provider=target.name,
            finish_reason=acc.finish_reason,
            usage=usage,
            cost_usd=cost,
            cost_source=source,
            latency_ms=latency_ms,
            reasoning="".join(acc.reasoning) or None,
            tool_calls=[acc.tool_calls[i] for i in sorted(acc.tool_calls)],
            id=acc.id,
        )


# --- the process default, for ctx.step.ai and Router without an explicit LLM ---------

_default: LLM | None = None
_default_from_env: tuple[LLM, tuple[str, ...]] | None = None


def _env_fingerprint() -> tuple[str, ...]:
    return tuple(os.environ.get(name, "") for name, _ in providers_mod.ENV_VARS)


def set_default(llm: LLM | None) -> None:
    """Make ``llm`` what ``ctx.step.ai`` and ``Router`` use when given none (None: back to env)."""
    global _default
    _default = llm


def default_llm() -> LLM:
    """The LLM set with ``set_default``, else one built from the environment (rebuilt if it changes)."""
    global _default_from_env
    if _default is not None:
        return _default
    fingerprint = _env_fingerprint()
    if _default_from_env is None or _default_from_env[1] != fingerprint:
        _default_from_env = (LLM(), fingerprint)
    return _default_from_env[0]


__all__ = ["LLM", "Usage", "default_llm", "normalise_messages", "set_default"]
