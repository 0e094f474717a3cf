"""The HTTP floor: an empty Starlette endpoint on uvicorn.

    python -m bench.http_floor [--port 0] [--http auto|h11]

``POST /e/{key}`` reads the body and answers a fixed ``{"ids": [...], "status": 200}``;
nothing is parsed, validated or stored. It runs on the loop ``stepline start`` uses
(uvloop where installed), with the same log level. ``--http auto`` is uvicorn's own
choice of HTTP implementation, httptools where it is installed, as it is with Stepline
(which serves on it): what Stepline adds over this floor is Stepline's own work.
``--http h11`` is uvicorn's pure-Python protocol, the floor as it was first measured
(when neither Stepline nor this environment had httptools). Prints ``PORT <n>`` once
listening.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

REPLY = b'{"ids":["01JFLOOR0000000000000000000"],"status":200}'


async def post_event(request: Request) -> Response:
    await request.body()
    return Response(REPLY, media_type="application/json")


app = Starlette(routes=[Route("/e/{event_key}", post_event, methods=["POST"])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--http", choices=["auto", "h11"], default="auto")
    args = p.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http=args.http, ws="none", loop="auto", backlog=2048)
    server = uvicorn.Server(config)
    try:
        from stepline import eventloop  # the loop Stepline's commands run on

        eventloop.run(server.serve(sockets=[sock]), "auto")
    except ImportError:
        asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
