"""How answers leave a real `stepline start`: each small answer in one send (uvicorn writes an
answer's head and body separately: two sends, two TCP segments, two wake-ups of the client),
and nothing held back or lost by that (a head alone, a stream, a refusal before a close).

Segments are counted on the client's socket by the kernel (``TCP_INFO``'s data segments in)."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from tests.cli_server import EVENT_KEY, CliServer, cli_server, read_until_closed  # noqa: F401 - fixture

DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in Linux's struct tcp_info (4.6 and later)


@pytest.fixture
def db_url(sqlite_url: str) -> str:  # how answers are written does not depend on the store
    return sqlite_url


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, DATA_SEGS_IN)[0])


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One answer with a Content-Length: its head and its body."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def exchange(sock: socket.socket, request: bytes) -> tuple[bytes, bytes, int]:
    """Send a request, read its answer: head, body, and the data segments it came in."""
    before = data_segments_in(sock)
    sock.sendall(request)
    head, body = read_answer(sock)
    time.sleep(0.05)  # a second segment, were there one, has arrived by now
    return head, body, data_segments_in(sock) - before


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_each_small_answer_arrives_in_one_segment(cli_server) -> None:  # noqa: F811
    server: CliServer = cli_server("start")
    event = json.dumps({"name": "srv/greet", "data": {"name": "one write"}}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(5):  # keep-alive: every answer, not only the first
            head, body, segments = exchange(sock, post(f"/e/{EVENT_KEY}", event))
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["ids"], head + body
            assert segments == 1, f"the answer came in {segments} segments"
        head, body, segments = exchange(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and segments == 1, (head, segments)
        head, body, segments = exchange(sock, post(f"/e/{EVENT_KEY}", b"{not json"))
        assert head.startswith(b"HTTP/1.1 400") and b"JSON" in body and segments == 1, (head, body, segments)


def test_a_head_without_a_body_and_a_refusal_before_a_close_still_go_out(cli_server) -> None:  # noqa: F811
    """A HEAD answer is a head alone (nothing follows to take it along); a 431 is written just
    before its connection closes. Neither may wait for a write that never comes."""
    server: CliServer = cli_server("start")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200"), received
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(20):
            sock.sendall(f"x-part-{i}: {'a' * 5000}\r\n".encode())
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"STEPLINE_MAX_HEADER_BYTES" in answer, answer[:200]
