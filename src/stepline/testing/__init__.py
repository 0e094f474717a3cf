"""Testing Stepline functions and the code that calls models.

Fakes that speak real protocols on loopback (``stepline.fakes``):

- ``FakeProvider``: an OpenAI-compatible and Anthropic endpoint that answers, streams
  and fails on demand; the behaviours ``Reply``, ``Fail``, ``Truncate``, ``Reset``,
  ``StreamError`` and the shorthands ``rate_limited``, ``insufficient_quota``,
  ``server_error``, ``overloaded``::

      with FakeProvider() as fake:
          fake.script(rate_limited(retry_after_ms=50), server_error(503), Reply(text="hi"))
          stepline.llm.set_default(fake.llm())   # what ctx.step.ai uses

- ``LoopbackServer``, ``Request``: the HTTP server they are built on, for fakes of your own.
"""

from __future__ import annotations

from stepline.fakes.behaviours import (
    SCENARIOS,
    Behaviour,
    Fail,
    Reply,
    Reset,
    StreamError,
    Truncate,
    insufficient_quota,
    overloaded,
    rate_limited,
    server_error,
)
from stepline.fakes.loopback import ClientGone, LoopbackServer, Request
from stepline.fakes.provider import FakeProvider, Recorded

__all__ = [
    "SCENARIOS",
    "Behaviour",
    "ClientGone",
    "Fail",
    "FakeProvider",
    "LoopbackServer",
    "Recorded",
    "Reply",
    "Request",
    "Reset",
    "StreamError",
    "Truncate",
    "insufficient_quota",
    "overloaded",
    "rate_limited",
    "server_error",
]
