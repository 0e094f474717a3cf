"""A fake model on loopback: answers every POST after a fixed delay, like a slow LLM.

    python -m bench.fake_model --port 0 [--delay 1.0]

Prints ``PORT <n>`` once listening. ``GET /stats`` returns the peak number of
requests in flight and the count served since the last ``GET /reset``. Standard
library only, so the peers' benchmarks start the same server; it runs in its own
process so that serving 5,000 connections costs the worker under test nothing.
It is an ``asyncio.Protocol`` rather than a streams server (per connection a callback
and a timer instead of a task and three futures) and runs on uvloop where installed,
so that it accepts thousands of connections within the benchmark's first second on a
shared core.
"""

from __future__ import annotations

import argparse
import asyncio
import json

REPLY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}]}).encode()


class Stats:
    in_flight = 0
    peak = 0
    served = 0


def response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


class ModelConnection(asyncio.Protocol):
    """One client connection: requests in order (keep-alive), each POST answered after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.timer is None:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        method, path = lines[0].split(" ")[:2]
        if method == "GET":
            body = json.dumps({"peak": Stats.peak, "served": Stats.served}).encode()
            if path == "/reset":
                Stats.peak = Stats.served = 0
            self._answer(body)
            return
        Stats.in_flight += 1
        Stats.peak = max(Stats.peak, Stats.in_flight)
        self.timer = asyncio.get_running_loop().call_later(self.delay, self._answer_model)

    def _answer_model(self) -> None:
        self.timer = None
        Stats.in_flight -= 1
        Stats.served += 1
        self._answer(REPLY)

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.transport.write(response(body))
        self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            Stats.in_flight -= 1


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ModelConnection(delay), "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay", type=float, default=1.0)
    args = p.parse_args()
    try:
        import uvloop  # both benchmark environments have it; the model is then never the slow side
    except ImportError:
        uvloop = None
    try:
        (uvloop.run if uvloop is not None else asyncio.run)(serve(args.port, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
