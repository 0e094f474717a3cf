"""HTTP requests the server makes for a step: ``step.fetch`` (Gateway) and
``step.ai.infer`` (AIGateway). The response is the step's memo, so a replay
never calls the provider again."""

from __future__ import annotations

import time
from typing import Any

import httpx

from stepline.inngest import protocol

_RETRIABLE_STATUS = {408, 409, 425, 429}


async def fetch(client: httpx.AsyncClient, opts: dict[str, Any]) -> dict[str, Any]:
    """``step.fetch``: the response as ``{status_code, headers, body}`` (any status is a result)."""
    url = opts.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise protocol.make_error({"name": "GatewayError", "message": f"step.fetch needs an http(s) URL, got {url!r}"}, final=True)
    body = opts.get("body")
    content = body.encode() if isinstance(body, str) else None
    try:
        response = await client.request(
            str(opts.get("method") or "GET"), url, headers=dict(opts.get("headers") or {}), content=content, timeout=300.0
        )
    except httpx.HTTPError as exc:
        raise protocol.make_error({"name": "GatewayError", "message": f"step.fetch to {url} failed: {exc!r}"}, final=False) from exc
    return {"status_code": response.status_code, "headers": dict(response.headers), "body": response.text}


class Inference:
    """One ``step.ai.infer`` call; ``meta`` describes it for the LLM usage table."""

    def __init__(self, client: httpx.AsyncClient, opts: dict[str, Any]) -> None:
        self.client = client
        self.opts = opts
        self.latency_ms: int | None = None

    async def __call__(self) -> Any:
        opts = self.opts
        url, fmt, key = opts.get("url"), str(opts.get("format") or "openai-chat"), opts.get("auth_key")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise protocol.make_error({"name": "AIGatewayError", "message": f"step.ai.infer needs the model's URL, got {url!r}"}, final=True)
        headers = {str(k): str(v) for k, v in (opts.get("headers") or {}).items()}
        if key:
            if fmt == "anthropic":
                headers.setdefault("x-api-key", str(key))
                headers.setdefault("anthropic-version", "2023-06-01")
            elif fmt != "gemini":
                headers.setdefault("authorization", f"Bearer {key}")
        started = time.monotonic()
        try:
            response = await self.client.post(url, json=opts.get("body") or {}, headers=headers, timeout=600.0)
        except httpx.HTTPError as exc:
            raise protocol.make_error({"name": "AIGatewayError", "message": f"calling the model at {url} failed: {exc!r}"}, final=False) from exc
        self.latency_ms = int((time.monotonic() - started) * 1000)
        if response.status_code >= 400:
            final = response.status_code < 500 and response.status_code not in _RETRIABLE_STATUS
            error = {"name": "AIGatewayError", "message": f"the model provider answered {response.status_code}: {response.text[:1000]}"}
            retry_after = protocol.parse_retry_after(response.headers.get("retry-after"))
            raise protocol.make_error(error, final=final, retry_after=retry_after)
        try:
            return response.json()
        except ValueError as exc:
            raise protocol.make_error({"name": "AIGatewayError", "message": f"the model provider's answer is not JSON: {exc}"}, final=False) from exc

    def meta(self, result: Any) -> dict[str, Any]:
        usage = (result or {}).get("usage") or {} if isinstance(result, dict) else {}
        body = self.opts.get("body") or {}
        fmt = str(self.opts.get("format") or "openai-chat")
        return {
            "provider": fmt.split("-")[0],
            "model": (result or {}).get("model") or body.get("model") or "unknown",
            "usage": {
                "prompt_tokens": int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or usage.get("output_tokens") or 0),
                "reasoning_tokens": int(((usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0),
                "cached_tokens": int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0),
            },
            "cost_usd": float(usage.get("cost") or 0.0),
            "latency_ms": self.latency_ms,
        }
