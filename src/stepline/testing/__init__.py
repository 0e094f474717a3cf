"""Testing Stepline functions and the code that calls models.

The test kit (``stepline.testing.engine``): ``TestEngine`` runs your functions on the
real engine, in-process, on a temporary database; mocks steps by id
(``ctx.step.run``, ``ctx.step.ai.infer``, ``ctx.step.invoke``); and skips time with a
clock that stands still until the test moves it. Results are typed (``RunResult``,
``StepRecord``, ``ErrorInfo``); ``SyncTestEngine`` is the same for tests that are not
async::

    async with TestEngine(app) as t:
        t.mock_step("summarise", return_value={"text": "short"})
        sent = await t.send({"name": "doc/uploaded", "data": {"doc_id": "d1"}})
        await t.advance("1h")
        result = await t.wait(sent)
        assert result.status == "completed" and result.steps["summarise"].output == {"text": "short"}

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
from stepline.testing.clock import TestClock
from stepline.testing.engine import NotSettled, RunNotFinished, SyncTestEngine, TestEngine
from stepline.testing.mocks import MockCall, StepMock
from stepline.testing.results import ErrorInfo, RunResult, SentEvent, StepRecord

__all__ = [
    "SCENARIOS",
    "Behaviour",
    "ClientGone",
    "ErrorInfo",
    "Fail",
    "FakeProvider",
    "LoopbackServer",
    "MockCall",
    "NotSettled",
    "Recorded",
    "Reply",
    "Request",
    "Reset",
    "RunNotFinished",
    "RunResult",
    "SentEvent",
    "StepMock",
    "StepRecord",
    "StreamError",
    "SyncTestEngine",
    "TestClock",
    "TestEngine",
    "Truncate",
    "insufficient_quota",
    "overloaded",
    "rate_limited",
    "server_error",
]
