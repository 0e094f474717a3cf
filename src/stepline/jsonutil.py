"""JSON encoding for payloads and checkpoints (orjson: fast and strict), and the checks
that keep stored JSON readable: what every backend can store and give back unchanged.

A stored value must survive ``dumps`` and ``loads`` unchanged on SQLite and PostgreSQL:
orjson writes at most 254 nested containers and reads at most 1,024, integers past
64 bits come back as floats, PostgreSQL text cannot hold ``\\u0000``, and a lone UTF-16
surrogate is not Unicode at all. ``storable_problem`` and ``loads_request`` refuse those
where data enters, naming the place, so nothing is accepted that a read would fail on.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from stepline import errors

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Readers show containers nested deeper than this as a note (orjson writes at most 254 levels).
READ_DEPTH = 200

_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_DIGITS = re.compile(rb"\d{19,}")  # the shortest integer literal that can leave int64
# A string literal; one never closed runs to the end of the body. Without that ending, a
# body of escaped quotes makes every quote start a scan to the end: quadratic time.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_OPENS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


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


# --- what the store can keep -------------------------------------------------------


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as it is, or None."""
    if "\x00" in text:
        return ("contains a NUL character (\\u0000), which PostgreSQL text cannot hold, so no backend accepts it; "
                "remove it, or encode binary data (e.g. base64)")
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone UTF-16 surrogate (U+D800..U+DFFF), which is not valid Unicode; send valid UTF-8 text"
    return None


def storable_problem(value: Any, *, max_depth: int, path: str) -> str | None:
    """Why ``value`` cannot be stored and read back unchanged, naming where (``path``), or None.

    Refused: nesting deeper than ``max_depth`` containers (``value`` itself is level 1),
    integers outside 64-bit signed, NaN and infinities, strings or keys holding NUL or
    lone surrogates, and keys that are not strings. One pass over the containers,
    level by level; only a value with a problem is walked again to find its path.
    """
    if _looks_fine(value, max_depth):
        return None
    return _describe(value, max_depth, path)


def _looks_fine(value: Any, max_depth: int) -> bool:
    if not isinstance(value, (dict, list, tuple)):
        return _scalar_problem(value) is None
    level: list[Any] = [value]
    depth = 0
    isfinite = math.isfinite
    while level:
        depth += 1
        if depth > max_depth:
            return False
        below: list[Any] = []
        add = below.append
        for container in level:
            if isinstance(container, dict):
                for k in container:
                    if type(k) is not str or "\x00" in k or (not k.isascii() and _SURROGATE.search(k)):
                        return False
                items: Any = container.values()
            else:
                items = container
            for x in items:
                kind = type(x)
                if kind is str:
                    if "\x00" in x or (not x.isascii() and _SURROGATE.search(x)):
                        return False
                elif kind is int:
                    if not INT64_MIN <= x <= INT64_MAX:
                        return False
                elif kind is dict or kind is list:
                    add(x)
                elif kind is float:
                    if not isfinite(x):
                        return False
                elif kind is not bool and x is not None:
                    if isinstance(x, (dict, list, tuple)):
                        add(x)
                    elif _scalar_problem(x) is not None:
                        return False
        level = below
    return True


def _scalar_problem(x: Any) -> str | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int):
        if INT64_MIN <= x <= INT64_MAX:
            return None
        shown = str(x) if x.bit_length() < 256 else f"an integer of {x.bit_length():,} bits"
        return (f"is {shown}, outside the 64-bit signed integer range ({INT64_MIN}..{INT64_MAX}) that every reader "
                "keeps exactly; send larger numbers as strings")
    if isinstance(x, float):
        return None if math.isfinite(x) else f"is {x}, which JSON cannot hold; send null or a string"
    if isinstance(x, str):
        return text_problem(x)
    return None  # other Python values are left to the encoder, which names what it cannot encode


def _describe(value: Any, max_depth: int, root: str) -> str:
    """The first problem in ``value``, with its path (walked depth-first; only after a problem was seen)."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:
        current, depth, path = stack.pop()
        if not isinstance(current, (dict, list, tuple)):
            problem = _scalar_problem(current)
            if problem is not None:
                return f"'{format_path(root, path)}' {problem}"
            continue
        if depth > max_depth:
            return (f"'{format_path(root, path)}' nests deeper than {max_depth} levels (STEPLINE_MAX_JSON_DEPTH); "
                    "flatten the data, or send a reference (an id or URL) instead")
        if isinstance(current, dict):
            for k in current:
                if type(k) is not str:
                    return f"'{format_path(root, path)}' has the key {k!r}: object keys must be strings"
                problem = text_problem(k)
                if problem is not None:
                    return f"'{format_path(root, path)}' has a key that {problem}"
            children: Any = current.items()
        else:
            children = enumerate(current)
        stack.extend((child, depth + 1, (*path, key)) for key, child in reversed(list(children)))
    return f"'{root}' cannot be stored"  # not reached: _looks_fine and _describe look for the same things


def format_path(root: str, path: tuple[Any, ...], limit: int = 160) -> str:
    """``data.items[3]["odd key"]``, shortened in the middle when long."""
    out = [root]
    for key in path:
        if isinstance(key, int):
            out.append(f"[{key}]")
        elif key.isidentifier():
            out.append(f".{key}")
        else:
            out.append("[" + json.dumps(key[:40] + ("..." if len(key) > 40 else "")) + "]")
    text = "".join(out)
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2:]


# --- request bodies ----------------------------------------------------------------


def loads_request(raw: bytes, *, max_depth: int) -> Any:
    """A request body parsed as JSON, or an EventError naming what is wrong with it.

    Nesting shown by a run of opening brackets is refused before parsing (a string
    search at C speed, so the usual deep body costs no parse); the exact depth is
    checked after (the parser itself stops at 1,024). An integer literal outside
    64 bits, which the parser would turn into a float, is refused with its path.
    """
    if _opens_in_a_row(raw, max_depth + 1):
        raise _too_deep(max_depth)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):  # past the parser's own limit, 1,024
            raise _too_deep(max_depth) from exc
        raise errors.EventError(f"the request body is not valid JSON: {exc}") from exc
    if _depth_over(value, max_depth):
        raise _too_deep(max_depth)
    if _LONG_DIGITS.search(raw):
        _refuse_wide_integers(raw)
    return value


def _too_deep(max_depth: int) -> errors.EventError:
    return errors.EventError(
        f"the request body nests JSON more than {max_depth} levels deep; an event's data may nest "
        f"{max_depth - 2} levels (STEPLINE_MAX_JSON_DEPTH): flatten it, or send a reference (an id or URL) instead"
    )


def _opens_in_a_row(raw: bytes, count: int) -> bool:
    """Whether ``count`` containers open with nothing but keys, scalars and commas between
    them (``[[[``, ``{"a": {"a":``, ``[1, [1, [``): a sure sign of nesting that deep."""
    if raw.count(b"[") + raw.count(b"{") < count:
        return False
    brackets = _STRING_LITERAL.sub(b"", raw).translate(_OPENS_ONLY, _NOT_BRACKETS)
    return b"[" * count in brackets


def _depth_over(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth``, looking only at containers."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(max_depth):
        below: list[Any] = []
        add = below.append
        for container in level:
            for x in container.values() if type(container) is dict else container:
                kind = type(x)
                if kind is dict or kind is list:  # what the parser makes
                    add(x)
        if not below:
            return False
        level = below
    return bool(level)


class _WideInteger:
    def __init__(self, text: str) -> None:
        self.text = text


def _exact_int(text: str) -> Any:
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else _WideInteger(text)


def _refuse_wide_integers(raw: bytes) -> None:
    """Parse again, keeping integer literals exact, and refuse any outside 64 bits (rare: only
    bodies with a run of 19+ digits get here)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(json.loads(raw, parse_int=_exact_int), ())]
    while stack:
        current, path = stack.pop()
        if isinstance(current, _WideInteger):
            raise errors.EventError(
                f"the request body has the integer {current.text[:40]} at '{format_path('body', path)}', outside the "
                f"64-bit signed range ({INT64_MIN}..{INT64_MAX}) that every reader keeps exactly; send it as a string"
            )
        if isinstance(current, dict):
            stack.extend((v, (*path, k)) for k, v in current.items())
        elif isinstance(current, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(current))


# --- reading back --------------------------------------------------------------------


def dumps_readable(value: Any) -> bytes:
    """Encode a reply: containers nested past ``READ_DEPTH`` (only data stored before the
    depth limit can hold them) are shown as a note, so one such row never fails a page."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return orjson.dumps(_clip(value, READ_DEPTH), option=orjson.OPT_NON_STR_KEYS)


def _clip(value: Any, room: int) -> Any:
    if isinstance(value, dict):
        return {k: _clip(v, room - 1) for k, v in value.items()} if room > 0 else f"(nested deeper than {READ_DEPTH} levels; not shown)"
    if isinstance(value, (list, tuple)):
        return [_clip(v, room - 1) for v in value] if room > 0 else f"(nested deeper than {READ_DEPTH} levels; not shown)"
    return value
