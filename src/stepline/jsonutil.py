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
from collections.abc import Callable
from typing import Any

import orjson

from stepline import errors

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Readers show containers nested deeper than this as a note (orjson writes at most 254 levels).
READ_DEPTH = 200

SURROGATE = re.compile("[\ud800-\udfff]")
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


def replace_surrogates(value: Any) -> Any:
    """``value`` (parsed JSON) with each lone surrogate in its strings and keys as U+FFFD."""
    if isinstance(value, str):
        return value if value.isascii() else SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    return value


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as it is, or None."""
    if "\x00" in text:
        return ("contains a NUL character (\\u0000), which PostgreSQL text cannot hold, so no backend accepts it; "
                "remove it, or encode binary data (e.g. base64)")
    if not text.isascii() and SURROGATE.search(text):
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
                    if type(k) is not str or "\x00" in k or (not k.isascii() and SURROGATE.search(k)):
                        return False
                items: Any = container.values()
            else:
                items = container
            for x in items:
                kind = type(x)
                if kind is str:
                    if "\x00" in x or (not x.isascii() and SURROGATE.search(x)):
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
    """The first problem in ``value``, with its path (walked depth-first; only after a problem
    was seen). Containers are walked with iterators, so memory stays that of the nesting."""
    problem = _own_problem(value, 1, max_depth)
    if problem is not None:
        return f"'{root}' {problem}"
    frames: list[tuple[Any, Any]] = [(None, _children(value))]
    budget = PATH_SEARCH_VALUES
    while frames:
        step = next(frames[-1][1], None)
        if step is None:
            frames.pop()
            continue
        budget -= 1
        if budget < 0:
            return (f"'{root}' holds, past its first {PATH_SEARCH_VALUES:,} values, one that cannot be stored (a NUL "
                    "character, a lone UTF-16 surrogate, an integer outside 64 bits, NaN or infinity, a key that is not "
                    "a string, or nesting past STEPLINE_MAX_JSON_DEPTH); send smaller data, or a reference (an id or URL)")
        key, child = step
        problem = _own_problem(child, len(frames) + 1, max_depth)
        if problem is not None:
            return f"'{format_path(root, (*(k for k, _ in frames[1:]), key))}' {problem}"
        if isinstance(child, (dict, list, tuple)):
            frames.append((key, _children(child)))
    return f"'{root}' cannot be stored"  # not reached: _looks_fine and _describe look for the same things


def _children(container: Any) -> Any:
    return iter(container.items() if isinstance(container, dict) else enumerate(container))


def _own_problem(value: Any, depth: int, max_depth: int) -> str | None:
    """What is wrong with ``value`` itself (a scalar, or a container's depth and keys), not its contents."""
    if not isinstance(value, (dict, list, tuple)):
        return _scalar_problem(value)
    if depth > max_depth:
        return (f"nests deeper than {max_depth} levels (STEPLINE_MAX_JSON_DEPTH); "
                "flatten the data, or send a reference (an id or URL) instead")
    if isinstance(value, dict):
        for k in value:
            if type(k) is not str:
                return f"has the key {k!r}: object keys must be strings"
            problem = text_problem(k)
            if problem is not None:
                return f"has a key that {problem}"
    return None


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
        if "UTF-8" in str(exc):  # the parser's words here ("surrogates not allowed", char 0) mislead
            raise _not_utf8(raw) from exc
        raise errors.EventError(f"the request body is not valid JSON: {exc}") from exc
    if _depth_over(value, max_depth):
        raise _too_deep(max_depth)
    if _LONG_DIGITS.search(raw):
        _refuse_wide_integers(raw, value)
    return value


def _not_utf8(raw: bytes) -> errors.EventError:
    """Where the body stops being UTF-8 (JSON bodies are UTF-8: RFC 8259)."""
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.start + 4]
        return errors.EventError(
            f"the request body is not UTF-8: byte {exc.start} (0x{bad[:1].hex()}, in {bad!r}) {exc.reason}; "
            "send JSON encoded as UTF-8 (not UTF-16 or Latin-1)"
        )
    return errors.EventError("the request body is not valid UTF-8 JSON; send JSON encoded as UTF-8")


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


# An integer literal of 19+ digits, outside any string (strings are blanked first): not part
# of a fraction or an exponent, nor followed by one.
_WIDE_LITERAL = re.compile(rb"(?<![\w.+-])-?\d{19,}(?![\w.+-])")


def _refuse_wide_integers(raw: bytes, parsed: Any) -> None:
    """Refuse an integer literal outside 64 bits, which the parser turned into a float (or,
    up to 2**64, an int past int64), naming where it is. Found in the text at C speed (only
    bodies with a run of 19+ digits get here); the parsed body is walked only to name the
    place of one that is refused, never copied, and with no path kept per value."""
    for match in _WIDE_LITERAL.finditer(_STRING_LITERAL.sub(b'""', raw)):
        text = match.group().decode()
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            continue
        where = _path_of_number(parsed, value)
        raise errors.EventError(
            f"the request body has the integer {text[:40]}{'...' if len(text) > 40 else ''}"
            f"{f' at {where!r}' if where else ''}, outside the 64-bit signed range ({INT64_MIN}..{INT64_MAX}) "
            "that every reader keeps exactly; send it as a string"
        )


def _path_of_number(parsed: Any, wide: int) -> str | None:
    """The path of the first number that the literal ``wide`` was parsed as (an int past
    int64, or the nearest float); None past ``PATH_SEARCH_VALUES`` values."""
    as_float = float(wide)
    found = _first_path(parsed, lambda x: x == as_float if type(x) is float else type(x) is int and x == wide)
    return None if found is None else format_path("body", found)


# How many values a search for the place of a refused value looks at: a request of millions
# of tiny values is refused without the place rather than walked value by value in Python.
PATH_SEARCH_VALUES = 200_000


def _first_path(value: Any, hit: Callable[[Any], bool]) -> tuple[Any, ...] | None:
    """The path to the first scalar in ``value`` (depth first) for which ``hit`` holds,
    among the first ``PATH_SEARCH_VALUES``. Containers are walked with iterators: memory
    stays that of the nesting, not of the values."""
    if not isinstance(value, (dict, list, tuple)):
        return () if hit(value) else None
    frames: list[tuple[Any, Any]] = [(None, _children(value))]
    budget = PATH_SEARCH_VALUES
    while frames and budget > 0:
        step = next(frames[-1][1], None)
        if step is None:
            frames.pop()
            continue
        budget -= 1
        key, child = step
        if isinstance(child, (dict, list, tuple)):
            frames.append((key, _children(child)))
        elif hit(child):
            return (*(k for k, _ in frames[1:]), key)
    return None


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
