"""Identifiers that are shown as they were sent: event names and ids, user ids, app and
function names, budget names. They reach log lines, the dashboard and the CLI's tables.

Refused in them: control characters (C0, DEL, C1, and Unicode's line and paragraph
separators), which forge log lines or drive a terminal (ESC starts a colour or cursor
sequence), and Unicode's explicit bidirectional formatting characters (embeddings,
overrides, isolates: U+202A..U+202E, U+2066..U+2069), which reorder the text after them
on screen so that an id reads as another ("Trojan Source", CVE-2021-42574). Every other
character is kept: accents, CJK, right-to-left scripts, emoji and their joiners.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def problem(text: str) -> str | None:
    """Why ``text`` cannot be shown as sent (to follow the field's name), or None."""
    found = _CONTROL.search(text)
    if found is not None:
        return (
            f"contains a control character (U+{ord(found.group()):04X}: a line break, tab, escape or the like), "
            "which would forge lines in logs and listings"
        )
    found = _BIDI.search(text)
    if found is not None:
        return (
            f"contains a bidirectional formatting character (U+{ord(found.group()):04X}), which reorders the text "
            "after it on screen so that it reads as something else"
        )
    return None


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape(text: str) -> str:
    """``text`` with what ``problem`` refuses written as escapes (``\\x1b``, ``\\n``, ``\\u202e``),
    for a terminal: stored text that no check covered (error messages quoting an event's data,
    rows from before these checks) can neither forge lines nor recolour the screen."""
    return _UNSAFE.sub(lambda found: repr(found.group())[1:-1], text)


def escape_json(text: str) -> str:
    """JSON text with what ``problem`` refuses written as JSON escapes (``\\u009b``): the same
    value to a parser, but a JSON log line read in a terminal can neither drive it (C1 controls,
    DEL) nor break or reorder its lines. JSON itself escapes only C0."""
    return _UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
