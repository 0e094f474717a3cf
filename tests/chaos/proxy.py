"""A TCP proxy between Stepline's processes and PostgreSQL that can cut every connection.

It runs its own asyncio loop in a thread. ``cut_mid_write`` waits for the next bytes a
client sends (a query or a pipeline in flight), forwards them, and then aborts every
connection at once, both sides, before any answer can come back. ``black_hole`` leaves
every open connection open but silent. ``outage`` plays a
server restart: every connection dies and new ones are refused for a while, without
touching the real server (which other tests share). ``delay`` holds every chunk that
long before passing it on, either way: a slow link (a round trip costs twice the delay).
``round_trips`` counts, per connection, the times its client spoke after the server had (or
first): how many times the client waited for an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.port = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._silenced: set[asyncio.StreamWriter] = set()  # open, but nothing reaches them any more
        self._armed: asyncio.Future[float] | None = None
        self._down_until = 0.0  # time.monotonic() before which new connections are refused
        self.round_trips: list[int] = []  # per connection, in the order they were opened (see above)
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)

    def start(self) -> CuttingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            client_writer.transport.abort()  # the "server" is down
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        link = len(self.round_trips)
        self.round_trips.append(0)
        turn = [False]  # whether the client spoke last
        await asyncio.gather(
            self._pump(client_reader, server_writer, from_client=True, link=link, turn=turn),
            self._pump(server_reader, client_writer, from_client=False, link=link, turn=turn),
        )
        self._writers -= {client_writer, server_writer}

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool, link: int, turn: list[bool]
    ) -> None:
        if self.delay:
            reader = self._delayed(reader)  # type: ignore[assignment]
        try:
            while data := await reader.read(65536):
                if writer in self._silenced:
                    continue  # a black hole: swallowed, and the connection stays open
                if from_client and not turn[0]:
                    self.round_trips[link] += 1
                turn[0] = from_client
                writer.write(data)
                await writer.drain()
                if from_client and self._armed is not None and not self._armed.done():
                    self._armed.set_result(self._abort_all())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    def _delayed(self, reader: asyncio.StreamReader) -> _Delayed:
        """``reader``'s bytes, each chunk ``delay`` after it arrived: latency, not a cap on
        throughput (chunks read meanwhile travel together)."""
        return _Delayed(reader, self.delay, self._loop)

    def _abort_all(self) -> float:
        for writer in list(self._writers):
            writer.transport.abort()  # RST: the peer sees the connection die, not a clean close
        self._writers.clear()
        self.cuts += 1
        return time.time()

    async def _cut_mid_write(self, wait: float) -> float:
        self._armed = self._loop.create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(self._armed), wait)
        except TimeoutError:  # nothing was being written: cut what is open anyway
            return self._abort_all()
        finally:
            self._armed = None

    def cut_mid_write(self, wait: float = 2.0) -> float:
        """Cut every connection right after the next client write; returns the time of the cut."""
        return asyncio.run_coroutine_threadsafe(self._cut_mid_write(wait), self._loop).result(wait + 10)

    def black_hole(self) -> None:
        """Every connection open now stays open but carries nothing more, either way (a
        failover behind a proxy, a network dropping packets without resets); new
        connections pass as before."""

        async def silence() -> None:
            self._silenced |= self._writers

        asyncio.run_coroutine_threadsafe(silence(), self._loop).result(10)

    def outage(self, seconds: float) -> float:
        """Drop every connection and refuse new ones for ``seconds`` (a server restart, seen
        from the clients); returns the time it began."""

        async def begin() -> float:
            self._down_until = time.monotonic() + seconds
            return self._abort_all()

        return asyncio.run_coroutine_threadsafe(begin(), self._loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            self._abort_all()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _Delayed:
    """A stream reader whose chunks come out ``delay`` seconds after they went in."""

    def __init__(self, reader: asyncio.StreamReader, delay: float, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._delay = delay
        self._task = loop.create_task(self._fill(reader))

    async def _fill(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                self._queue.put_nowait((time.monotonic() + self._delay, data))
        except (ConnectionError, OSError):
            pass
        self._queue.put_nowait((time.monotonic() + self._delay, b""))

    async def read(self, n: int) -> bytes:
        due, data = await self._queue.get()
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        return data
