"""JSON responses and the mapping from Stepline errors to HTTP statuses."""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from stepline import errors, event, jsonutil
from stepline.server import guard


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonutil.dumps_readable(content)  # a stored value too deep to encode never fails a read


def problem(status: int, message: str, **extra: Any) -> JSON:
    return JSON({"error": message, "status": status, **extra}, status_code=status)


def from_error(exc: Exception) -> JSON:
    if isinstance(exc, errors.BudgetExceeded):  # a reservation refused: what it ran into, as the error's fields
        return problem(402, str(exc), budget_exceeded=budget_exceeded(exc))
    if isinstance(exc, errors.NotFoundError):
        return problem(404, str(exc))
    if isinstance(exc, errors.ConflictError):
        return problem(409, str(exc))
    if isinstance(exc, (errors.EventError, errors.ConfigError, errors.RequestError)):
        return problem(400, str(exc))
    if isinstance(exc, errors.LimitError):
        return problem(413, str(exc))
    if isinstance(exc, errors.BusyError):
        return JSON({"error": str(exc), "status": 503}, status_code=503, headers={"retry-after": "1"})
    if isinstance(exc, errors.StoreError):
        return problem(503, str(exc))
    return problem(500, f"internal error: {type(exc).__name__}")


def budget_exceeded(exc: errors.BudgetExceeded) -> dict[str, Any]:
    """The fields of a refusal, as ``errors.BudgetExceeded`` carries them."""
    return {
        "budget": exc.budget, "key": exc.key, "spent_usd": round(exc.spent_usd, 10), "spent_tokens": exc.spent_tokens,
        "limit_usd": exc.limit_usd, "limit_tokens": exc.limit_tokens, "on_exceeded": exc.on_exceeded,
    }


async def read_json(request: Request, *, max_bytes: int, allow_empty: bool = False) -> Any:
    """The request body as JSON, or an EventError/LimitError that says what is wrong."""
    return parse_json(await read_body(request, max_bytes=max_bytes), allow_empty=allow_empty)


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The request body, or a LimitError once it is over ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise errors.LimitError(
            f"request body is {declared} bytes, over the limit of {max_bytes} bytes; "
            "send smaller batches of events (the limit grows with STEPLINE_MAX_EVENT_BYTES)"
        )
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise errors.LimitError(
                f"request body is over the limit of {max_bytes} bytes; send smaller batches of events "
                "(the limit grows with STEPLINE_MAX_EVENT_BYTES)"
            )
    if len(body) > PARSED_HOLD_BYTES:
        await _hold_parsed(request, body)
    return bytes(body)


PARSED_HOLD_BYTES = 64 * 1024  # a body larger than this holds what its values take once parsed


async def _hold_parsed(request: Request, body: bytearray) -> None:
    """Count what the body's values take once parsed against the server's body buffer until
    the request ends, waiting for room (STEPLINE_MAX_BODY_BUFFER counted only bytes: sixteen
    bodies of 8 MiB of tiny objects, each ~200 MB parsed, took 3 GB at once)."""
    guarded = request.scope.get(guard.GUARDED_BODY)
    if guarded is not None and not await guarded.hold_parsed(guard.parsed_weight(body)):
        raise errors.BusyError(
            f"the server holds {guarded.buffer.parsed // (1024 * 1024)} MiB of request bodies' parsed values, its "
            "limit (STEPLINE_MAX_BODY_BUFFER); nothing of this request was stored: send it again shortly"
        )


def parse_json(body: bytes, *, allow_empty: bool = False) -> Any:
    """A request body as JSON, or an EventError that says what is wrong (any thread)."""
    if not body.strip():
        if allow_empty:
            return None
        raise errors.EventError("the request body is empty; send a JSON event or a JSON list of events")
    # Nesting, and integers a parser would round, are refused here for every route.
    return jsonutil.loads_request(body, max_depth=event.current_limits().max_json_depth + 2)


async def read_object(request: Request, *, max_bytes: int, call: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """An optional JSON object body: {} when empty, else an object that holds only ``fields``,
    or a 400 naming ``call`` (``bulk-cancel``, ``reservation``)."""
    value = await read_json(request, max_bytes=max_bytes, allow_empty=True)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.RequestError(f"{call}: the request body must be a JSON object, got {type(value).__name__}")
    check_fields(value, fields, call)
    return value


def check_fields(body: dict[str, Any], fields: tuple[str, ...], call: str) -> None:
    """A 400 for a field of ``body`` besides ``fields``, naming ``call`` (a dotted path for a
    nested object: ``settle.usage``), the field, a close spelling, and the fields taken.
    Ignored, a misspelt ``since`` on a bulk cancel would leave the call to cancel every run
    of the function."""
    unknown = sorted(str(name) for name in body if name not in fields)
    if not unknown:
        return
    guesses = {name: close[0] for name in unknown[:5] if (close := difflib.get_close_matches(name, fields, n=1))}
    if len(unknown) == 1 and guesses:
        hint = f" (did you mean {guesses[unknown[0]]!r}?)"
    else:
        hint = f" (did you mean {', '.join(f'{v!r} for {k!r}' for k, v in guesses.items())}?)" if guesses else ""
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise errors.RequestError(f"{call}: unknown field(s) {unknown[:5]}{more}{hint}; it takes {', '.join(fields)}")


def iso_seconds(epoch_seconds: int | None) -> str | None:
    if epoch_seconds is None:
        return None
    return dt.datetime.fromtimestamp(epoch_seconds, dt.UTC).isoformat().replace("+00:00", "Z")
