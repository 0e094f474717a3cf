"""Reads that every viewer asks for, computed once for all of them when they are costly.

The dashboard's function list and metrics page (every open tab, every 5 s) and
``/metrics`` (every scraper) each read the last hour's ended runs and every unfinished
run: a read that grows with the hour's throughput and the backlog (seconds with half a
million runs ended in the hour or a million asleep). Asked once per viewer, ten tabs
would keep the database busy with the same answer. Here a read that took long is shared:

- requests that arrive while it runs wait for it instead of starting their own;
- its answer is served again for ``REUSE_FACTOR`` times as long as it took (at most
  ``MAX_AGE_SECONDS``), so that however many ask, such a read occupies the server at
  most about a tenth of the time.

A read quicker than ``COSTLY_SECONDS`` is never shared: each request gets its own,
as fresh as the database (what an app with a small history, and every test, sees).
A shared answer goes out with an ``Age`` header (seconds since it was read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

COSTLY_SECONDS = 0.05
REUSE_FACTOR = 10.0
MAX_AGE_SECONDS = 30.0


@dataclass(frozen=True)
class Shared(Generic[T]):
    value: T
    shared: bool  # read for another request (under way when this one came, or recent)
    age: float  # seconds since that read ended


@dataclass
class _Answer:
    value: Any
    ended: float  # when its read ended (monotonic)
    fresh_until: float  # served again until then


class SharedReads:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._answers: dict[Hashable, _Answer] = {}  # the last costly answer of each key
        self._running: dict[Hashable, asyncio.Task[_Answer]] = {}  # costly reads under way

    async def get(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> Shared[T]:
        """``read()``'s answer, or a recent costly one of the same ``key``."""
        task = self._running.get(key)
        joined = task is not None
        if task is None:
            last = self._answers.get(key)
            if last is not None and self._clock() < last.fresh_until:
                return Shared(last.value, True, self._clock() - last.ended)
            task = asyncio.ensure_future(self._read(key, read))
            task.add_done_callback(_retrieve)
            if last is not None:
                # The last read of this key was costly: those who ask before this one ends
                # share it. Cheap reads are not joined: each request reads for itself.
                self._running[key] = task
                task.add_done_callback(lambda done: self._running.pop(key, None))
        # Shielded: a viewer who goes away does not cancel a read others wait for.
        answer = await asyncio.shield(task)
        return Shared(answer.value, joined, max(0.0, self._clock() - answer.ended))

    async def _read(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> _Answer:
        started = self._clock()
        value = await read()
        ended = self._clock()
        took = ended - started
        answer = _Answer(value, ended, ended + min(MAX_AGE_SECONDS, took * REUSE_FACTOR))
        if took >= COSTLY_SECONDS:
            self._forget_stale()
            self._answers[key] = answer
        else:
            self._answers.pop(key, None)
        return answer

    def _forget_stale(self) -> None:
        """Drop answers no longer served (keys differ by query: a window, a number of days)."""
        now = self._clock()
        for key in [k for k, a in self._answers.items() if a.fresh_until <= now]:
            del self._answers[key]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a failed read's error as seen: its requests may all have gone (each got it if not)."""
    if not task.cancelled():
        task.exception()
