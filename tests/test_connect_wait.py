"""A process started while its database has no connection slot for it waits
(``STEPLINE_CONNECT_WAIT``) instead of exiting: the server's own slots, or a database's or
role's ``CONNECTION LIMIT`` (53300), which frees up as other sessions end."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from stepline.store import postgres


def _error_response(code: str, message: str) -> bytes:
    fields = b"".join(kind + value.encode() + b"\0" for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message)))
    return b"E" + struct.pack("!I", 4 + len(fields) + 1) + fields + b"\0"


@pytest.fixture
def refusing_server() -> Iterator[tuple[int, list[int]]]:
    """A server on loopback that answers every connection as PostgreSQL does when a
    database's connection limit is reached (it never runs a statement)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    served: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                length = struct.unpack("!I", conn.recv(4))[0]
                body = conn.recv(length - 4)
                if struct.unpack("!I", body[:4])[0] in (80877103, 80877104):  # SSL / GSS request: no
                    conn.sendall(b"N")
                    length = struct.unpack("!I", conn.recv(4))[0]
                    conn.recv(length - 4)
                conn.sendall(_error_response("53300", 'too many connections for database "limited"'))
                served.append(1)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], served
    listener.close()


def test_a_database_at_its_connection_limit_is_waited_for(refusing_server: tuple[int, list[int]], caplog) -> None:  # type: ignore[no-untyped-def]
    port, served = refusing_server
    with caplog.at_level(logging.WARNING, logger="stepline.store.postgres"):
        postgres.wait_until_reachable(f"postgresql://nobody@127.0.0.1:{port}/limited?sslmode=disable", 1.5)
    said = [r.getMessage() for r in caplog.records]
    assert any("does not answer yet" in m and "too many connections" in m for m in said), said
    assert len(served) > 1  # tried again, rather than giving up at the first refusal
