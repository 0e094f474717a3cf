"""Match keys of waits: which incoming events can possibly satisfy a wait, as an index lookup.

A wait (``step.wait_for_event``, a ``cancel_on`` rule) is a CEL expression over the run's
own event (``event``) and the incoming one (``async``). Most say "this field of the
incoming event equals that field of mine": ``match="data.order_id"`` becomes
``event.data.order_id == async.data.order_id``, and signals ``async.data.signal ==
"name"``. When the expression is such an equality, alone or as one of the terms joined by
``&&`` at its top level, the value it needs is known when the wait is registered: the
wait is stored with the incoming path (``match_path``) and that value, encoded
(``match_value``), and an event finds its candidates by one index lookup instead of
evaluating every wait of its name. The whole expression is still evaluated on each
candidate, so a key only ever narrows the search.

A wait also stores the part of its run's event that its expression reads (``trigger_view``):
the values at the ``event.…`` paths it names. A candidate is then evaluated on that, not
on the whole event, so the cost of an incoming event does not grow with the size of the
events that started the runs waiting for it (any sender's, and large).

The encoding keeps every pair of values CEL calls equal on one code (it may give two
unequal values one code, which the evaluation then tells apart): numbers as doubles (CEL's
``1 == 1.0``), maps with their keys sorted, and long values as their SHA-256.

A field missing on either side makes the equality an error, which is no match (Inngest's
rule), so such pairs are never looked at: an incoming event without the path reads none of
the waits keyed on it, and a wait whose run's event lacks the field it compares is stored
with the code ``NEVER``, which no value has, so no event reads it (it still times out and
ends with its run). Either was otherwise evaluated by every event of the name.

A wait without such an equality may still compare a number: ``async.data.price <=
event.data.target`` (or with a number in place of the run's field). It is stored with a
range key: the incoming path with the direction the comparison needs (``range_path``,
``min:data.price``: the incoming value must be at least the stored one; ``max:`` at most)
and the run's number (``range_value``, NULL when the run's event lacks the field). An
event then reads only the waits its value can satisfy, by a range scan of an index, not
every wait of its name. Converting to double never breaks an order (``a <= b`` gives
``float(a) <= float(b)``), so the scan never leaves out a wait the expression would match.

A wait whose expression offers alternatives is keyed by each of them: a ``||`` at its top
level whose every branch holds such an equality (``async.data.id == event.data.a ||
async.data.id == event.data.b``), or a membership ``async.data.status in ["paid",
"refunded"]`` (or ``in event.data.list``, the run's list), which is one equality per
element. It is stored as one row per alternative (``wait_key_set``), each with its own
key; an event reads the rows its values find and evaluates each wait once. A branch is
true only if each of its ``&&`` terms is, its equality among them, and CEL's ``||`` is
true only if one branch is (an error in another branch does not make it false or true),
so a wait the whole expression matches is found by the key of the branch that holds.
A branch with no such equality, a value without a code, or more than ``MAX_ALTERNATIVES``
alternatives leave the wait unkeyed, evaluated by every event of its name as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import orjson

from stepline import expressions

MAX_VALUE_BYTES = 200  # longer codes are stored as their SHA-256 (an indexed column)
_PATH = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_FIELDS = re.compile(rf"^(event|async)\.({_PATH})\s*==\s*(event|async)\.({_PATH})$")
_LITERAL_RIGHT = re.compile(rf"^async\.({_PATH})\s*==\s*(.+)$", re.S)
_LITERAL_LEFT = re.compile(rf"^(.+?)\s*==\s*async\.({_PATH})$", re.S)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_COMPARE = r"\s*(<=|>=|<|>)\s*"
_COMPARE_FIELDS = re.compile(rf"^(event|async)\.({_PATH}){_COMPARE}(event|async)\.({_PATH})$")
_COMPARE_NUMBER_RIGHT = re.compile(rf"^async\.({_PATH}){_COMPARE}({_NUMBER.pattern})$")
_COMPARE_NUMBER_LEFT = re.compile(rf"^({_NUMBER.pattern}){_COMPARE}async\.({_PATH})$")
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
# The incoming value must be at least (min:) or at most (max:) the stored one.
_BOUND_OF = {">": "min:", ">=": "min:", "<": "max:", "<=": "max:"}
_MISSING = object()
# The code of a wait no event can match; not JSON and not "sha256:…", so no value's code.
NEVER = "(missing)"


class Key:
    """What a wait's expression needs of an incoming event: the value at ``path`` equal to
    the trigger event's value at ``event_path``, or to ``literal`` when that is None."""

    __slots__ = ("path", "event_path", "literal")

    def __init__(self, path: str, event_path: str | None, literal: Any = None) -> None:
        self.path = path
        self.event_path = event_path
        self.literal = literal


def key_of(expression: str | None) -> Key | None:
    """The first top-level ``&&`` term of ``expression`` that is an equality a key can
    stand for, or None (no expression, a ``||`` or a ternary at the top, no such term)."""
    if not expression:
        return None
    terms = _conjuncts(expression)
    if terms is None:
        return None
    for term in terms:
        key = _term_key(term)
        if key is not None:
            return key
    return None


def _term_key(term: str) -> Key | None:
    """The key one ``&&`` term stands for, if it is such an equality."""
    found = _FIELDS.match(term)
    if found is not None:
        sides = {found.group(1): found.group(2), found.group(3): found.group(4)}
        return Key(sides["async"], sides["event"]) if set(sides) == {"event", "async"} else None
    for pattern, path_group, literal_group in ((_LITERAL_RIGHT, 1, 2), (_LITERAL_LEFT, 2, 1)):
        found = pattern.match(term)
        if found is not None:
            literal = _literal(found.group(literal_group).strip())
            if literal is not _MISSING:
                return Key(found.group(path_group), None, literal)
    return None


MAX_ALTERNATIVES = 32  # rows stored for one wait at most; past it, the wait is evaluated by every event
_IN_FIELD = re.compile(rf"^async\.({_PATH})\s+in\s+event\.({_PATH})$")
_IN_LIST = re.compile(rf"^async\.({_PATH})\s+in\s+\[(.*)\]$", re.S)


class InKey:
    """A membership a wait's expression needs of an incoming event: the value at ``path`` is
    an element of the run's list at ``event_path``, or of ``literals`` when that is None."""

    __slots__ = ("path", "event_path", "literals")

    def __init__(self, path: str, event_path: str | None, literals: list[Any] | None = None) -> None:
        self.path = path
        self.event_path = event_path
        self.literals = literals or []


def wait_key_set(expression: str | None, trigger: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """Every ``(match_path, match_value)`` a wait is stored under, one row each (see the
    module doc): the one ``wait_key`` gives, else one per alternative of a top-level ``||``
    or an ``in``; None when the wait cannot be keyed so (then a range key, or none)."""
    if not expression:
        return None
    branches = _disjuncts(expression)
    if branches is None:
        return None
    if len(branches) == 1:
        single = wait_key(expression, trigger)
        if single is not None:
            return [single]
    found: list[tuple[str, str]] = []
    for branch in branches:
        alternatives = _branch_alternatives(branch, trigger or {})
        if alternatives is None:
            return None
        found += alternatives
    keys = list(dict.fromkeys(found))
    live = [key for key in keys if key[1] != NEVER]
    if len(live) > MAX_ALTERNATIVES:
        return None
    return live or keys[:1]  # none can hold: one row no event reads (it still times out)


def _branch_alternatives(branch: str, trigger: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The keys one ``||`` branch can be found by: its first ``&&`` term that is an equality
    (one key) or an ``in`` (a key per element); None if it has neither, or a value no code
    stands for."""
    for term in _conjuncts(branch) or ():
        key = _term_key(term)
        if key is None:
            found = _in_key(term)
            if found is not None:
                return _in_alternatives(found, trigger)
            continue
        if key.event_path is None:
            value = key.literal
        else:
            value = value_at(trigger, key.event_path)
            if value is _MISSING:
                return [(key.path, NEVER)]
        code = encode(value)
        return None if code is None else [(key.path, code)]
    return None


def _in_key(term: str) -> InKey | None:
    found = _IN_FIELD.match(term)
    if found is not None:
        return InKey(found.group(1), found.group(2))
    found = _IN_LIST.match(term)
    if found is None:
        return None
    items = _list_items(found.group(2))
    if items is None:
        return None
    literals = [_literal(item) for item in items]
    return None if any(v is _MISSING for v in literals) else InKey(found.group(1), None, literals)


def _in_alternatives(key: InKey, trigger: dict[str, Any]) -> list[tuple[str, str]] | None:
    elements: Any = key.literals
    if key.event_path is not None:
        elements = value_at(trigger, key.event_path)
        if elements is _MISSING:
            return [(key.path, NEVER)]  # membership in a missing field is an error: no match
        if not isinstance(elements, list):
            return None  # a map's keys, a string: evaluated as before
    codes = [encode(element) for element in elements]
    if any(code is None for code in codes):
        return None
    return [(key.path, str(code)) for code in codes] or [(key.path, NEVER)]


def _list_items(text: str) -> list[str] | None:
    """The items of a list literal's inside, split at top-level commas; None when an item
    holds brackets (nested lists and maps are evaluated as before)."""
    items: list[str] = []
    start, i, quote = 0, 0, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{)]}":
            return None
        elif ch == ",":
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    if quote:
        return None
    last = text[start:].strip()
    if last:
        items.append(last)
    elif items:
        return None  # a trailing comma: left to CEL
    return items


class RangeKey:
    """A comparison a wait's expression needs of an incoming event: the value at ``path``
    ``op`` (``<``, ``<=``, ``>``, ``>=``) the trigger event's number at ``event_path``, or
    ``literal`` when that is None."""

    __slots__ = ("path", "op", "event_path", "literal")

    def __init__(self, path: str, op: str, event_path: str | None, literal: float = 0.0) -> None:
        self.path = path
        self.op = op
        self.event_path = event_path
        self.literal = literal


def range_key_of(expression: str | None) -> RangeKey | None:
    """The first top-level ``&&`` term of ``expression`` that compares an incoming field with
    the run's field or a number (``<``, ``<=``, ``>``, ``>=``), written with the incoming
    side first; None if there is none (or a ``||`` or a ternary at the top)."""
    if not expression:
        return None
    terms = _conjuncts(expression)
    for term in terms or ():
        found = _COMPARE_FIELDS.match(term)
        if found is not None:
            left, left_path, op, right, right_path = found.groups()
            if (left, right) == ("async", "event"):
                return RangeKey(left_path, op, right_path)
            if (left, right) == ("event", "async"):
                return RangeKey(right_path, _FLIPPED[op], left_path)
            continue
        found = _COMPARE_NUMBER_RIGHT.match(term)
        if found is not None:
            return RangeKey(found.group(1), found.group(2), None, float(found.group(3)))
        found = _COMPARE_NUMBER_LEFT.match(term)
        if found is not None:
            return RangeKey(found.group(3), _FLIPPED[found.group(2)], None, float(found.group(1)))
    return None


def wait_range_key(expression: str | None, trigger: dict[str, Any] | None) -> tuple[str, float | None] | None:
    """``(range_path, range_value)`` for a wait with no equality key (see the module doc):
    ``range_value`` None when the run's event lacks the field (no event can match); None
    when the expression has no such comparison or the run's value is not a number (a
    string compares with strings: such a wait is evaluated by every event of its name)."""
    key = range_key_of(expression)
    if key is None:
        return None
    if key.event_path is None:
        number = key.literal
    else:
        value = value_at(trigger or {}, key.event_path)
        if value is _MISSING:
            return (_BOUND_OF[key.op] + key.path, None)
        double = _double(value)
        if double is None:
            return None
        number = double
    if not math.isfinite(number):
        return None
    return (_BOUND_OF[key.op] + key.path, number + 0.0)


def range_lookup(range_path: str, body: dict[str, Any]) -> tuple[str, float] | None:
    """How an incoming event finds the waits stored under ``range_path``: ``("min", v)``
    reads those whose value is at most ``v`` (``"max"``: at least), ``v`` being the event's
    number at the path; None when the event has no number there (a missing field, or a
    value no number compares with, is no match)."""
    bound, _, path = range_path.partition(":")
    number = _double(value_at(body, path))
    return None if number is None or math.isnan(number) else (bound, number)


def _double(value: Any) -> float | None:
    """A number as a double (a whole number past the doubles' range as an infinity, which
    keeps its order); None for anything else, booleans included."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def wait_key(expression: str | None, trigger: dict[str, Any] | None) -> tuple[str, str] | None:
    """``(match_path, match_value)`` for a wait with this expression, registered by a run of
    the ``trigger`` event (``match_value`` is ``NEVER`` when that event lacks the field the
    key compares); None when the wait cannot be keyed (then every event of its name
    evaluates it)."""
    key = key_of(expression)
    if key is None:
        return None
    if key.event_path is None:
        value = key.literal
    else:
        value = value_at(trigger or {}, key.event_path)
        if value is _MISSING:
            return (key.path, NEVER)  # the equality fails on every event: no event need evaluate it
    code = encode(value)
    return None if code is None else (key.path, code)


def value_at(body: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of an event, or ``MISSING``."""
    value: Any = body
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


MISSING = _MISSING


def encode(value: Any) -> str | None:
    """The code of a value (see the module doc); None for a value no code stands for."""
    canonical = _canonical(value)
    if canonical is _MISSING:
        return None
    try:
        text = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None
    if len(text) > MAX_VALUE_BYTES:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        number = float(value)
        return _MISSING if not math.isfinite(number) else number + 0.0  # -0.0 == 0.0
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return _MISSING
        entries = {k: _canonical(v) for k, v in value.items()}
        return _MISSING if any(v is _MISSING for v in entries.values()) else entries
    return _MISSING


def _literal(text: str) -> Any:
    """A CEL literal whose value is plain: a double-quoted string, a number, true, false, null."""
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if _NUMBER.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] == '"' and "\\/" not in text:
        try:
            value = json.loads(text)  # JSON's escapes mean in CEL what they mean in JSON (but \/)
        except ValueError:
            return _MISSING
        return value if isinstance(value, str) else _MISSING
    return _MISSING


def _conjuncts(expression: str) -> list[str] | None:
    """The terms joined by ``&&`` at the top level, each without enclosing parentheses;
    None if the top level holds ``||`` or ``?`` (a term need not hold for the whole to)."""
    return _split_top(expression, "&&")


def _disjuncts(expression: str) -> list[str] | None:
    """The branches joined by ``||`` at the top level (``&&`` binds tighter, so each may
    hold ``&&`` terms); None if the top level holds ``?``."""
    return _split_top(expression, "||")


def _split_top(expression: str, joiner: str) -> list[str] | None:
    """``expression`` split at ``joiner`` outside brackets and strings, each part without
    enclosing parentheses; None on a ``?``, on the other of ``&&`` / ``||`` at the top level
    when splitting at ``&&``, or on unbalanced text."""
    text = _strip_parens(expression.strip())
    terms: list[str] = []
    depth = 0
    start = 0
    i = 0
    quote = ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
        elif ch in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else ch
            i += len(quote)
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            if ch == "?" or (joiner == "&&" and text.startswith("||", i)):
                return None
            if text.startswith(joiner, i):
                terms.append(_strip_parens(text[start:i].strip()))
                start = i + 2
                i += 2
                continue
        i += 1
    if quote or depth != 0:
        return None
    terms.append(_strip_parens(text[start:].strip()))
    return terms


def _strip_parens(text: str) -> str:
    """``(a == b)`` as ``a == b``, when the parentheses enclose the whole term."""
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text  # "(a) == (b)": the first one closes early
        text = text[1:-1].strip()
    return text


def event_paths(expression: str | None) -> list[list[str]] | None:
    """The paths of the run's event that ``expression`` reads (``event.data.x`` is
    ``["data", "x"]``), or None when it needs the whole event (``expressions.paths_read``)."""
    paths = expressions.paths_read(expression, "event")
    return None if paths is None else [list(parts) for parts in paths]


def trigger_view(expression: str | None, trigger: dict[str, Any]) -> dict[str, Any] | None:
    """The part of ``trigger`` that ``expression`` can read (``expressions.view``): each path's
    value, or the value where the path stops going through objects, as in the whole event;
    None when the expression needs the whole event."""
    return expressions.view(expression, "event", trigger)
