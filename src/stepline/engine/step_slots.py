"""Concurrency slots for a run's steps executing at once.

A function's ``concurrency`` limit caps steps executing, as on Inngest: a leased run holds
one slot on each of its keys, which covers one step at a time (and the code between
steps); each further step of the run executing at once (``asyncio.gather``, an SDK app's
``Promise.all``) first takes a slot of its own on the same keys from the store
(``Store.take_step_slot``), and waits, holding nothing, while a key is full. A run with
no ``concurrency`` never comes here, nor does a step that does not execute anything (an
outcome the app already computed, or one saved in the journal).

A step waiting for a slot takes the run's own slot as soon as a step of the run gives it
back, or a slot given back by another run of this worker, or one found free when it looks
again (other processes: every ``poll`` at the latest).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger("stepline.executor")

FIRST_LOOK = 0.02  # seconds before a waiting step looks again, doubling up to ``poll``


class Freed:
    """Wakes the steps of a worker's runs waiting for a slot when one of them gives one back."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None

    def notify(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None

    async def wait(self, also: asyncio.Future[None], timeout: float) -> None:
        """Until a slot is given back here, ``also`` is done, or ``timeout`` seconds passed."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        await asyncio.wait({also, self._next}, timeout=timeout)


class StepSlots:
    """The slots of one run's steps on this worker: its own, and those taken for more steps."""

    def __init__(
        self, take: Callable[[], Awaitable[bool]], give: Callable[[], Awaitable[None]], freed: Freed, poll: float
    ) -> None:
        self._take = take
        self._give = give
        self._freed = freed
        self._poll = poll
        self._own_free = True
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """A slot for one step while it executes."""
        if self._own_free:  # the usual case: no step of the run beside it, nothing to write
            self._own_free = False
            try:
                yield
            finally:
                self._give_own()
            return
        taken = await self._acquire()
        try:
            yield
        finally:
            if taken:
                await self._give_back()
            else:
                self._give_own()

    async def _acquire(self) -> bool:
        """A slot: True when one was taken from the store, False for the run's own."""
        delay = FIRST_LOOK
        loop = asyncio.get_running_loop()
        while True:
            if self._own_free:
                self._own_free = False
                return False
            if await self._take():
                return True
            own = loop.create_future()
            self._waiting.append(own)
            try:
                await self._freed.wait(own, delay)
            except BaseException:
                if own.done() and not own.cancelled():
                    self._give_own()  # handed to this step as it stopped: to the next one
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(own)
            if own.done():
                return False
            delay = min(delay * 2, self._poll)

    def _give_own(self) -> None:
        """The run's own slot to the next step of the run waiting, else free."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._own_free = True

    async def _give_back(self) -> None:
        try:
            await self._give()
        except Exception as exc:  # noqa: BLE001 - the count belongs to the lease, which ends it
            log.warning("a step's concurrency slot could not be given back (%s); it is freed with the run's lease", exc)
        self._freed.notify()
