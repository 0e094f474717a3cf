"""A fake model on loopback: answers every POST after a fixed delay, like a slow LLM.

    python -m bench.fake_model --port 0 [--delay 1.0]

Prints ``PORT <n>`` once listening. ``GET /stats`` returns the peak number of
requests in flight and the count served since the last ``GET /reset``. Standard
library only, so the peers' benchmarks start the same server; it runs in its own
process so that serving 5,000 connections costs the worker under test nothing.
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


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            if method == "GET":
                body = json.dumps({"peak": Stats.peak, "served": Stats.served}).encode()
                if path == "/reset":
                    Stats.peak = Stats.served = 0
            else:
                Stats.in_flight += 1
                Stats.peak = max(Stats.peak, Stats.in_flight)
                try:
                    await asyncio.sleep(delay)
                finally:
                    Stats.in_flight -= 1
                Stats.served += 1
                body = REPLY
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int, delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay), "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay", type=float, default=1.0)
    args = p.parse_args()
    try:
        asyncio.run(serve(args.port, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
