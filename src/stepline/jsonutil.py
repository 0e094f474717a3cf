"""JSON encoding for payloads and checkpoints (orjson: fast and strict)."""

from __future__ import annotations

from typing import Any

import orjson

from stepline import errors

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=_OPTIONS).decode()


def dumps_checked(value: Any, *, what: str) -> str:
    """Encode ``value``, or raise a NonRetriableError saying what was not JSON-serialisable."""
    try:
        return dumps(value)
    except TypeError as exc:
        raise errors.NonRetriableError(
            f"{what} must be JSON-serialisable (dict, list, str, number, bool, None): {exc}; "
            "return plain data, e.g. model.model_dump() or dataclasses.asdict(obj)"
        ) from exc


def loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    return orjson.loads(text)
