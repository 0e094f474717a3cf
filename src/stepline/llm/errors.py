"""Provider failures, translated where they enter, so the engine retries the right ones.

    stepline.SteplineError
    ├── ProviderError            retryable: 5xx, 529, connection failures, a truncated
    │   └── TruncatedResponse      stream or body (no finish marker / broken JSON)
    ├── RetryAfterError
    │   └── RateLimited          429 (or 5xx) with retry-after-ms / retry-after: wait exactly that
    └── NonRetriableError
        └── ProviderRejected     400/401/402/403/404/413/422, quota or spend limit: fix, then rerun

Every one carries ``provider``, ``status`` (None for connection failures) and
``code`` (the provider's error code or type), and keeps the original on ``__cause__``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from stepline import errors

# OpenAI / Anthropic codes on a 429 that mean "out of money", not "slow down".
QUOTA_CODES = frozenset(
    {"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached", "enforced_spend_limit_reached"}
)


class ProviderError(errors.SteplineError):
    """The provider failed in a way that may pass: the step is retried with backoff."""

    retryable = True
    provider: str = ""
    status: int | None = None
    code: str | None = None


class TruncatedResponse(ProviderError):
    """The response ended before its finish marker: a failed attempt, never a result."""


class RateLimited(errors.RetryAfterError):
    """The provider asked us to wait; the step is retried after exactly that delay."""

    provider: str = ""
    status: int | None = None
    code: str | None = None


class ProviderRejected(errors.NonRetriableError):
    """The provider refused the request for a reason retrying cannot fix."""

    provider: str = ""
    status: int | None = None
    code: str | None = None


E = TypeVar("E", bound=BaseException)


def _tag(exc: E, provider: str, status: int | None, code: str | None) -> E:
    exc.provider, exc.status, exc.code = provider, status, code  # type: ignore[attr-defined]
    return exc


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``retry-after-ms`` (preferred) or ``retry-after`` (seconds or an HTTP date), in seconds."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_error_body(body: bytes | str | Any) -> tuple[str, str | None, dict[str, Any]]:
    """(message, code, error object) from any provider's error body (or a non-JSON page)."""
    data: Any = body
    if isinstance(body, (bytes, str)):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return (text.strip()[:300] or "(empty body)"), None, {}
    if not isinstance(data, dict):
        return str(data)[:300], None, {}
    error = data.get("error", data)  # vLLM's old flat form is the error itself
    if isinstance(error, str):
        return error, None, {}
    if not isinstance(error, dict):
        return str(error)[:300], None, {}
    message = str(error.get("message") or data.get("message") or "no message")
    code = error.get("code")
    if code is None or isinstance(code, int):  # OpenRouter puts the HTTP status in code
        code = error.get("type") or code
    details = error.get("details") or {}
    if isinstance(details, dict) and details.get("error_code"):
        code = details["error_code"]
    metadata = error.get("metadata") or {}
    if isinstance(metadata, dict) and metadata.get("raw"):
        message += f" (upstream {metadata.get('provider_name', '')}: {str(metadata['raw'])[:200]})"
    return message, None if code is None else str(code), error


def from_status(
    provider: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | Any,
    *,
    model: str,
    base_url: str,
    key_hint: str,
) -> Exception:
    """The exception for a non-2xx answer (or an error object under a 200)."""
    message, code, _ = parse_error_body(body)
    where = f"{provider} answered {status} for model {model!r}: {message.rstrip('. ')}"
    wait = retry_after_seconds(headers)

    def rejected(fix: str) -> Exception:
        return _tag(ProviderRejected(f"{where}. {fix}"), provider, status, code)

    # The message says what happened, never what comes next: the same error is a step's
    # final one once its retries are spent (the engine logs each retry and its delay).
    def retry(what: str) -> Exception:
        if wait is not None:
            return _tag(RateLimited(f"{where}. {what}; the provider asked for a {wait:.3g}s wait (retry-after)", wait), provider, status, code)
        return _tag(ProviderError(f"{where}. {what}; a later attempt may succeed"), provider, status, code)

    if code in QUOTA_CODES or (status == 429 and code and code.endswith(("_spend_limit_exceeded", "_usage_limit_exceeded"))):
        return rejected("The account is out of quota or over its spending limit: add credits or raise the limit, then rerun; retrying will not help")
    if headers.get("x-should-retry", "").lower() == "false":
        return rejected("The provider said not to retry this request")
    if status == 429:
        return retry("Rate limited")
    if status == 402:
        if wait is not None:  # OpenRouter's in-flight budget: a wait-and-retry case
            return retry("Payment budget in use")
        return rejected("Payment required: add credits or raise the key's limit, then rerun")
    if status in (408, 409, 425) or status >= 500:
        return retry("The provider is failing or overloaded")
    fixes = {
        400: "The request is invalid (parameters, message format or context length): fix the call",
        401: f"The API key was refused: check {key_hint}",
        403: "Forbidden: the key may lack access to this model or region, or the input was flagged",
        404: f"Unknown model or endpoint: check the model name and the base URL {base_url}",
        413: "The request is too large: send fewer or shorter messages",
        422: "The request could not be processed: check the parameters",
    }
    return rejected(fixes.get(status, "The request was refused: fix it, then rerun"))


def connection_failed(provider: str, base_url: str, exc: BaseException) -> ProviderError:
    error = ProviderError(f"cannot talk to {provider} at {base_url}: {type(exc).__name__}: {exc}; a later attempt may succeed")
    error.__cause__ = exc
    return _tag(error, provider, None, None)


def truncated(provider: str, what: str) -> TruncatedResponse:
    return _tag(TruncatedResponse(f"{provider}: {what}; the attempt failed and will be retried"), provider, None, "truncated")
