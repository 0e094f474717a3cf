"""One call to an SDK app's serve URL, and what its reply means.

``call`` posts the request body the SDKs expect (canonical JSON, signed when
the server has a signing key) and turns the reply into a ``Reply``: the
function's return value (200), a list of opcodes (206), or an error carrying
the SDK's retry signals (``X-Inngest-No-Retry``, ``Retry-After``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import uuid
from typing import Any

import httpx
import orjson

from stepline import errors, jsonutil
from stepline.inngest import signing

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # above this the SDK fetches events and steps itself (use_api)
SDK_HEADER = "x-inngest-sdk"
_GATEWAY_DOWN = (502, 503, 504)


class _SDKError:
    """An error reported by an SDK app; stored as the app reported it."""

    error: dict[str, Any]

    def error_dict(self) -> dict[str, Any]:
        return dict(self.error)


class SDKRetriableError(_SDKError, errors.SteplineError):
    """The app reported an error that may pass on a retry."""

    retryable = True

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = normalize_error(error)
        super().__init__(f"{self.error['name']}: {self.error['message']}")


class AppUnreachableError(SDKRetriableError, errors.UnreachableError):
    """The app could not be reached at all (refused, no such host, connect timeout, or a
    gateway answering 502/503/504 for it): retried on the longer unreachable schedule."""


class SDKNonRetriableError(_SDKError, errors.NonRetriableError):
    """The app said not to retry (``X-Inngest-No-Retry: true`` or a final step failure)."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = normalize_error(error)
        super().__init__(f"{self.error['name']}: {self.error['message']}")


class SDKRetryAfterError(_SDKError, errors.RetryAfterError):
    """The app asked to retry after a given time (``Retry-After``)."""

    def __init__(self, error: dict[str, Any], delay: float) -> None:
        self.error = normalize_error(error)
        super().__init__(f"{self.error['name']}: {self.error['message']}", delay)


def normalize_error(error: Any) -> dict[str, Any]:
    """An error memo the SDKs accept: string ``name`` and ``message``, ``stack`` text or absent
    (TypeScript's schema refuses a null stack, and its code then sees only "Unknown error")."""
    if not isinstance(error, dict):  # a JS step that threw a non-Error: `throw undefined` sends no error at all
        error = {"name": "Error", "message": _thrown_text(error)}
    out = dict(error)
    out["name"] = str(out.get("name") or "Error")
    message = out.get("message")
    if message is None:
        message = out.get("error") or ""
    out["message"] = message if isinstance(message, str) else orjson.dumps(message).decode()
    if not isinstance(out.get("stack"), str):
        out.pop("stack", None)
    return out


def _thrown_text(value: Any) -> str:
    """What JavaScript's ``String(value)`` gives for a thrown value the SDK sent as is."""
    if value is None:
        return "undefined"
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def make_error(error: Any, *, final: bool, retry_after: float | None = None) -> Exception:
    if final:
        return SDKNonRetriableError(error)
    if retry_after is not None:
        return SDKRetryAfterError(error, retry_after)
    return SDKRetriableError(error)


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the app answered: ``done`` with ``value``, or ``ops`` to carry out."""

    done: bool
    value: Any = None
    ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    no_retry: bool = False
    retry_after: float | None = None
    version: int | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait: integer seconds (TS) or a date (PY, ISO; or HTTP date), clamped to 1 s..24 h."""
    if not value:
        return None
    text = value.strip()
    seconds: float | None = None
    if len(text) <= 7 and text.isdigit():
        seconds = float(text)
    else:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError):
                return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        seconds = (moment - dt.datetime.now(dt.UTC)).total_seconds()
    return min(86400.0, max(1.0, seconds))


def strip_sync_params(url: str) -> str:
    """Drop ``deployId`` and ``probe``, which the TS SDK leaves in the URLs it reports."""
    parsed = httpx.URL(url)
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v) for k, v in parsed.params.multi_items() if k not in ("deployId", "probe")
    ]
    return str(parsed.copy_with(params=httpx.QueryParams(params) if params else None))


def _loads(content: bytes) -> Any:
    text = content.strip()
    return None if not text else _loads_lenient(text)


def _loads_lenient(text: bytes) -> Any:
    """An SDK's JSON as Inngest's server reads it (Go's encoding/json): a lone surrogate
    (``"\\ud800"``, which a step may return) or a byte that is not UTF-8 becomes U+FFFD,
    rather than the whole reply being unreadable (the run then failed as "no new step")."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc) and "UTF-8" not in str(exc):
            raise
    try:
        value = json.loads(text.decode(errors="replace"))
    except json.JSONDecodeError as exc:
        raise orjson.JSONDecodeError(str(exc), exc.doc, exc.pos) from exc
    return jsonutil.replace_surrogates(value)


def _unstream(content: bytes) -> tuple[int, dict[str, str], bytes]:
    """A 201 keep-alive stream ends with ``{status, headers, body}``; the body may be JSON text."""
    final = _loads_lenient(content.strip())
    body = final.get("body")
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    headers = {str(k).lower(): str(v) for k, v in (final.get("headers") or {}).items()}
    return int(final.get("status") or 500), headers, raw


async def call(
    client: httpx.AsyncClient,
    url: str,
    step_id: str,
    body: dict[str, Any],
    *,
    run_id: str,
    server_kind: str,
    signing_key: str,
    timeout: float,
) -> Reply:
    """POST one call request; a transport failure or a non-SDK answer is a retriable error."""
    target = httpx.URL(strip_sync_params(url)).copy_set_param("stepId", step_id)
    content = signing.canonical_bytes(body)
    if len(content) > MAX_REQUEST_BYTES:
        slim = {**body, "events": [], "steps": {}, "use_api": True, "ctx": {**body["ctx"], "use_api": True}}
        content = signing.canonical_bytes(slim)
    headers = {
        "content-type": "application/json",
        "x-inngest-server-kind": server_kind,
        "x-inngest-req-version": str(body.get("version", -1)),
        "x-run-id": run_id,
        "x-inngest-step-id": step_id,
        "x-request-id": uuid.uuid4().hex,
    }
    if signing_key:
        headers["x-inngest-signature"] = signing.sign(content, signing_key)
    try:
        response = await client.post(target, content=content, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent: the app is down or restarting
        raise AppUnreachableError(
            {"name": "AppUnreachable", "message": f"could not reach the app at {target}: {exc!r}; is it running?"}
        ) from exc
    except httpx.HTTPError as exc:  # reached, but the call broke off: an ordinary failed attempt
        raise SDKRetriableError(
            {"name": "AppCallFailed", "message": f"the call to the app at {target} failed: {exc!r}"}
        ) from exc
    status, resp_headers, raw = response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
    if status in _GATEWAY_DOWN and SDK_HEADER not in resp_headers:  # a proxy in front of an app that is down
        raise AppUnreachableError(
            {"name": "AppUnreachable", "message": f"{target} answered {status} without an X-Inngest-SDK header: "
             "a gateway in front of an app that is down or restarting"}
        )
    if status == 201:
        try:
            status, streamed, raw = _unstream(raw)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise SDKRetriableError({"name": "BadStream", "message": f"the app's streamed reply could not be read: {exc}"}) from exc
        resp_headers = {**resp_headers, **streamed}
    version_text = resp_headers.get("x-inngest-req-version", "")
    version = int(version_text) if version_text.lstrip("-").isdigit() else None
    no_retry = resp_headers.get("x-inngest-no-retry", "").lower() == "true"
    retry_after = parse_retry_after(resp_headers.get("retry-after"))
    if 200 <= status < 300 and SDK_HEADER not in resp_headers:
        raise SDKRetriableError(
            {"name": "NotAnSDK", "message": f"{target} answered {status} without an X-Inngest-SDK header: it is not an Inngest SDK endpoint"}
        )
    try:
        payload = _loads(raw)
    except orjson.JSONDecodeError:
        payload = raw.decode(errors="replace")
    if status == 200:
        return Reply(done=True, value=payload, version=version)
    if status == 206:
        ops = payload if isinstance(payload, list) else [payload] if isinstance(payload, dict) else []
        return Reply(done=False, ops=[op for op in ops if isinstance(op, dict)], no_retry=no_retry, retry_after=retry_after, version=version)
    error = payload if isinstance(payload, dict) else {"name": f"HTTP{status}", "message": str(payload)[:2000]}
    if "name" not in error and "message" not in error:
        error = {"name": f"HTTP{status}", "message": orjson.dumps(error).decode()[:2000]}
    if status == 401:
        error = {**error, "message": f"{error.get('message') or 'Unauthorized'} (the app refused our signature: "
                 "check that STEPLINE_INNGEST_SIGNING_KEY equals the app's INNGEST_SIGNING_KEY)"}
    raise make_error(error, final=no_retry, retry_after=retry_after)
