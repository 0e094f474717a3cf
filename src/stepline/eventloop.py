"""The event loop Stepline's own commands run on: uvloop where it is installed.

uvloop's sockets, timers and callbacks are implemented on libuv in C; a worker whose
steps make thousands of HTTP calls spends about half as much of its loop on them.
``STEPLINE_LOOP=asyncio`` keeps the standard loop (to debug with its tools, say).
An app that embeds Stepline keeps whatever loop its own server runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from stepline import errors

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """Run ``main`` to completion on a new loop of the chosen kind (``auto``: uvloop if importable)."""
    if choice not in CHOICES:
        main.close()
        raise errors.ConfigError(f"STEPLINE_LOOP={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()
                raise errors.ConfigError(
                    "STEPLINE_LOOP=uvloop, but uvloop is not installed: `pip install uvloop`, or set STEPLINE_LOOP=auto"
                ) from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def kind() -> str:
    """The running loop's kind, for logs: ``uvloop`` or ``asyncio``."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
