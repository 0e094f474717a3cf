"""Hostile HTTP clients against a real `stepline start` / `stepline dev` process: huge and
slow bodies, slow and huge heads, floods of idle connections, foreign hosts and pages.
Each gets a clear 4xx (or is served), the server's memory stays bounded, and what was
accepted before stays accepted."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cli_server import API_TOKEN, EVENT_KEY, CliServer, cli_server, read_until_closed  # noqa: F401 - fixture
from tests.server_live import wait_for

BEARER = {"authorization": f"Bearer {API_TOKEN}"}
MIB = 1024 * 1024


def chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """A chunked request body of ``total`` bytes (no Content-Length)."""
    block = b"x" * size
    for _ in range(total // size):
        yield block


def send_event(server: CliServer, name: str = "srv/greet") -> str:
    reply = httpx.post(f"{server.url}/e/{EVENT_KEY}", json={"name": name, "data": {"name": "kept"}}, timeout=30)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["ids"][0])


def assert_kept(server: CliServer, event_id: str) -> None:
    reply = httpx.get(f"{server.url}/api/v1/events/{event_id}", headers=BEARER, timeout=30)
    assert reply.status_code == 200 and reply.json()["name"] == "srv/greet"


# --- 1. bodies over their route's limit -----------------------------------------------


def test_bodies_over_their_routes_limit_get_413_and_close_chunked_or_not(cli_server) -> None:  # noqa: F811
    server = cli_server("start")
    before = send_event(server)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        login = client.post("/login", content=chunks(64 * MIB))
        assert login.status_code == 413 and login.headers["connection"] == "close"
        assert "login form is over the limit of 4096 bytes" in login.json()["error"]
        declared = client.post("/login", content=b"token=" + b"x" * 10_000,
                               headers={"content-type": "application/x-www-form-urlencoded"})
        assert declared.status_code == 413 and "is 10006 bytes" in declared.json()["error"]

        ingest = client.post(f"/e/{EVENT_KEY}", content=chunks(64 * MIB), headers={"content-type": "application/json"})
        assert ingest.status_code == 413 and ingest.headers["connection"] == "close"
        assert "STEPLINE_MAX_EVENT_BYTES" in ingest.json()["error"]

        api = client.post("/api/v1/runs/bulk-cancel", content=chunks(4 * MIB), headers=BEARER)
        assert api.status_code == 413 and "STEPLINE_MAX_API_BODY_BYTES" in api.json()["error"]

        # Bodies within their limits are served as before, and nothing accepted was lost.
        assert client.post("/login", data={"token": API_TOKEN}).status_code == 303
        assert client.post(f"/e/{EVENT_KEY}", json=[{"name": "srv/greet"}] * 100).status_code == 200
    assert_kept(server, before)


def test_memory_stays_bounded_under_huge_bodies_and_heads(cli_server) -> None:  # noqa: F811
    server = cli_server("start")
    statuses: list[int] = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/health").status_code == 200
        peak_before = server.rss_peak_kib()
        for _ in range(2):
            statuses.append(client.post("/login", content=chunks(128 * MIB)).status_code)
            statuses.append(client.post(f"/e/{EVENT_KEY}", content=chunks(128 * MIB)).status_code)
            statuses.append(client.post("/api/v1/events", content=chunks(128 * MIB), headers=BEARER).status_code)
        for _ in range(20):
            try:
                statuses.append(client.get("/health", headers={"x-filler": "a" * 1_000_000}).status_code)
            except httpx.HTTPError:
                statuses.append(0)  # no answer at all
    grown_mib = (server.rss_peak_kib() - peak_before) / 1024
    # 768 MiB of bodies and 20 MB of headers were sent; the server may hold at most a
    # route's limit (8 MiB here) of any of them.
    assert grown_mib < 48, f"the server's peak memory grew by {grown_mib:.0f} MiB"
    assert statuses == [413] * 6 + [431] * 20


# --- 2. slow clients --------------------------------------------------------------------


def test_a_trickled_head_is_answered_408_and_closed_by_the_header_timeout(cli_server) -> None:  # noqa: F811
    server = cli_server("start", env={"STEPLINE_HEADER_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        # A byte every 0.2 s: uvicorn's keep-alive timer alone would never fire.
        answer = read_until_closed(sock, trickle=b"X-Slow: " + b"a" * 600)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"STEPLINE_HEADER_TIMEOUT" in answer
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        assert read_until_closed(idle) == b""  # a silent connection is closed without an answer


def test_a_slow_body_gets_408_for_pauses_and_for_its_whole_time(cli_server) -> None:  # noqa: F811
    server = cli_server("start", env={"STEPLINE_BODY_IDLE_TIMEOUT": "1", "STEPLINE_BODY_TIMEOUT": "3"})
    head = (f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            "content-length: 100000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as paused:
        paused.sendall(head + b'[{"name": "srv/greet"}')
        answer = read_until_closed(paused)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"STEPLINE_BODY_IDLE_TIMEOUT" in answer
    assert b"connection: close" in answer.lower()
    with socket.create_connection(("127.0.0.1", server.port)) as trickled:
        trickled.sendall(head)
        answer = read_until_closed(trickled, trickle=b" " * 5000)  # never pausing a whole second
    assert answer.startswith(b"HTTP/1.1 408 ") and b"STEPLINE_BODY_TIMEOUT" in answer
    send_event(server)  # the server still ingests


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_hundreds_of_slow_clients_cannot_lock_out_real_requests(cli_server, loop: str) -> None:  # noqa: F811
    # 200 open files: the server keeps at most 100 connections (the rest are reserved).
    # Its head timeout is long, so only the connection cap stands between them and /health.
    server = cli_server("start", env={"STEPLINE_HEADER_TIMEOUT": "600", "STEPLINE_LOOP": loop}, open_files=200)
    before = send_event(server)
    slow: list[socket.socket] = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            slow.append(sock)
            if i % 2:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # half a head
        for sock in slow[1::2]:
            try:
                sock.sendall(b"a")
            except OSError:
                pass  # closed to make room: that is the point
        for _ in range(5):
            health = httpx.get(f"{server.url}/health", timeout=10)
            assert health.status_code == 200
        assert server.open_fds() < 200
        assert_kept(server, before)
        send_event(server)
        assert "Too many open files" not in server.log()
    finally:
        for sock in slow:
            sock.close()


def test_trickled_bodies_cannot_hold_every_connection(cli_server) -> None:  # noqa: F811
    """Bodies sent a byte at a time hold their connections busy (up to the body's 60 s, and
    a client can start again): past the cap a new connection closes one still uploading
    2 s after its head, instead of getting 503. No credentials are needed for /login."""
    server = cli_server("start", env={"STEPLINE_MAX_CONNECTIONS": "20"})
    before = send_event(server)
    slow: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 4000\r\n\r\nt")
            slow.append(sock)
        wait_for(lambda: server.open_fds() >= 20, what="the uploads to be open")
        time.sleep(2.5)  # past SLOW_UPLOAD
        send_event(server)
        assert_kept(server, before)
    finally:
        for sock in slow:
            sock.close()


def _never_reading(server: CliServer, count: int) -> list[socket.socket]:
    """``count`` connections, each pipelining requests for a 40 KB file and reading nothing."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        try:
            sock.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n" * 150)
        except BlockingIOError:
            pass  # the server stopped reading: its writes are stalled
        socks.append(sock)
    return socks


def _event_sent(server: CliServer) -> bool:
    reply = httpx.post(f"{server.url}/e/{EVENT_KEY}", json={"name": "srv/greet"}, timeout=30)
    assert reply.status_code in (200, 503), reply.text
    return reply.status_code == 200


def test_clients_that_never_read_their_answers_cannot_hold_connections(cli_server) -> None:  # noqa: F811
    """Pipelined requests whose answers are never read leave the server's writes stalled with
    a request in progress, for as long as the client likes: past the cap such a connection is
    closed to make room (a real request is served within seconds, never 503 for good)."""
    server = cli_server("start", env={"STEPLINE_MAX_CONNECTIONS": "20"})
    stalled = _never_reading(server, 20)
    try:
        wait_for(lambda: _event_sent(server), what="a connection that reads nothing to make room", timeout=30)
    finally:
        for sock in stalled:
            sock.close()


def test_an_answer_left_unread_past_the_body_timeout_closes_its_connection(cli_server) -> None:  # noqa: F811
    server = cli_server("start", env={"STEPLINE_BODY_TIMEOUT": "3"})
    fds_before = server.open_fds()
    stalled = _never_reading(server, 10)
    try:
        wait_for(lambda: server.open_fds() >= fds_before + 10, what="the connections to open")
        wait_for(lambda: server.open_fds() <= fds_before + 1, what="the unread connections to close", timeout=30)
    finally:
        for sock in stalled:
            sock.close()


def _run_token(server: CliServer) -> tuple[str, str]:
    """A sleeping run (``srv/nap``) and a run token for it, as an app's backend hands a browser."""
    event_id = send_event(server, "srv/nap")
    run_id = wait_for(lambda: (httpx.get(f"{server.url}/api/v1/events/{event_id}", headers=BEARER).json()["runs"]
                               or [{}])[0].get("id"), what="the nap run")
    reply = httpx.post(f"{server.url}/api/v1/runs/{run_id}/token", headers=BEARER, json={})
    assert reply.status_code == 200, reply.text
    return str(run_id), str(reply.json()["token"])


def _open_stream(server: CliServer, run_id: str, token: str) -> tuple[socket.socket, int, bytes]:
    """A run stream opened as a browser's EventSource does: the socket, and the answer's status and head."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"GET /api/v1/runs/{run_id}/stream?token={token} HTTP/1.1\r\nHost: x\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer or (b" 200 " not in answer[:13] and not re.search(rb"\}$", answer)):
        chunk = sock.recv(65536)  # the head; a refusal's JSON body too
        assert chunk, f"closed without an answer (received {answer!r})"
        answer += chunk
    return sock, int(answer.split(b" ", 2)[1]), answer


def test_run_streams_cannot_hold_every_connection(cli_server) -> None:  # noqa: F811
    """A run stream holds its connection while the run (or its token) lasts: a browser given a
    run token opened as many as the server keeps connections, and every other request was
    answered 503 until the token expired. Streams take at most STEPLINE_MAX_STREAMS_PER_RUN a
    run, and half the connections in all; the rest are refused, naming the limit."""
    server = cli_server("start", env={"STEPLINE_MAX_CONNECTIONS": "20", "STEPLINE_MAX_STREAMS_PER_RUN": "3"})
    runs = [_run_token(server) for _ in range(4)]
    held: list[socket.socket] = []
    try:
        statuses = []
        for _ in range(20):  # one token, as many streams as the server keeps connections
            sock, status, answer = _open_stream(server, *runs[0])
            statuses.append(status)
            if status == 200:
                held.append(sock)
            else:
                assert b"STEPLINE_MAX_STREAMS_PER_RUN" in answer, answer
                sock.close()
        assert statuses == [200] * 3 + [429] * 17
        send_event(server)  # everyone else is served meanwhile
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200

        statuses = []
        for run in runs[1:]:  # streams of other runs: half the connections (10) in all
            for _ in range(3):
                sock, status, answer = _open_stream(server, *run)
                statuses.append(status)
                if status == 200:
                    held.append(sock)
                else:
                    assert status == 503 and b"STEPLINE_MAX_CONNECTIONS" in answer, answer
                    sock.close()
        assert statuses == [200] * 7 + [503] * 2
        send_event(server)

        held.pop(0).close()  # a stream that ends gives its place back
        wait_for(lambda: _reopened(server, runs[0], held), what="a place for a new stream of the first run")
    finally:
        for sock in held:
            sock.close()


def test_run_streams_take_half_the_connections_a_low_open_file_limit_leaves(cli_server) -> None:  # noqa: F811
    """The streams' share was half of STEPLINE_MAX_CONNECTIONS, not of the cap in force: with
    an open-file limit of 120 the server keeps 20 connections, and streams could hold them all."""
    server = cli_server("start", env={"STEPLINE_MAX_STREAMS_PER_RUN": "50"}, open_files=120)
    run = _run_token(server)
    held: list[socket.socket] = []
    try:
        statuses = []
        for _ in range(20):
            sock, status, answer = _open_stream(server, *run)
            statuses.append(status)
            if status == 200:
                held.append(sock)
            else:
                assert b"run streams are open" in answer and b"open-file limit" in answer, answer
                sock.close()
        assert statuses == [200] * 10 + [503] * 10
        send_event(server)  # the other half serves everyone else
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    finally:
        for sock in held:
            sock.close()


def _reopened(server: CliServer, run: tuple[str, str], held: list[socket.socket]) -> bool:
    sock, status, _ = _open_stream(server, *run)
    if status != 200:
        sock.close()
        return False
    held.append(sock)
    return True


def test_a_compressed_body_is_refused_naming_its_encoding(cli_server) -> None:  # noqa: F811
    import gzip

    server = cli_server("start")
    body = gzip.compress(json.dumps({"name": "srv/greet"}).encode())
    reply = httpx.post(f"{server.url}/e/{EVENT_KEY}", content=body,
                       headers={"content-type": "application/json", "content-encoding": "gzip"}, timeout=30)
    assert reply.status_code == 415 and "Content-Encoding: gzip" in reply.json()["error"], reply.text
    assert "uncompressed" in reply.json()["error"]
    send_event(server)  # and plain bodies are served as before


def test_a_transfer_coding_besides_chunked_is_refused_naming_it(cli_server) -> None:  # noqa: F811
    """The parser takes off the chunks and nothing else: a gzip transfer coding would be read
    as the event's JSON. Refused before the body is read (RFC 9112: 501), nothing stored."""
    import gzip

    server = cli_server("start")
    body = gzip.compress(json.dumps({"name": "srv/greet", "data": {"name": "coded"}}).encode())
    for coding, content in (("gzip, chunked", body), ("GZIP ,chunked", body), ("identity, chunked", b"not gzip")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Transfer-Encoding: {coding}\r\nConnection: close\r\n\r\n".encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content))
            head, _, answer = read_until_closed(sock).partition(b"\r\n\r\n")
        if coding.startswith("identity"):
            assert head.startswith(b"HTTP/1.1 400"), head  # read as sent: not JSON
            continue
        assert head.startswith(b"HTTP/1.1 501"), head
        assert f"Transfer-Encoding: {coding}" in json.loads(answer)["error"]
    listed = httpx.get(f"{server.url}/api/v1/events", params={"name": "srv/greet"}, headers=BEARER, timeout=30)
    assert listed.json()["data"] == []
    send_event(server)  # chunked bodies are served as before


# --- 3. huge heads ------------------------------------------------------------------------


@pytest.mark.parametrize("trailing", [b" ", b"\x00", b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n"], ids=["space", "nul", "bad-request"])
def test_requests_read_whole_are_answered_before_the_400_for_what_follows(cli_server, trailing: bytes) -> None:  # noqa: F811
    """A request the parser refuses after others on the same connection (pipelined, or one
    stray byte after a body) gets its 400 after their answers: a client never reads a 400
    as the answer to a request whose event was stored (it would send it again, or give it
    up), and the server logs no failed writes."""
    server = cli_server("start")
    for count in (1, 3):
        body = json.dumps({"name": "srv/greet", "data": {"name": "kept"}}).encode()
        request = f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request * count + trailing)
            answer = read_until_closed(sock)
        statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]
        assert statuses == [200] * count + [400], answer
        ids = re.findall(rb'"ids":\["([0-9A-Z]{26})"\]', answer)
        assert len(ids) == count
        for event_id in ids:
            assert_kept(server, event_id.decode())
    assert "write_eof" not in server.log() and "handler is closed" not in server.log()


def _pipelined_events(ids: list[str], data_name: str = "p") -> bytes:
    requests = []
    for event_id in ids:
        body = json.dumps({"name": "srv/greet", "id": event_id, "data": {"name": data_name}}).encode()
        requests.append(f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return b"".join(requests)


def test_thousands_of_pipelined_requests_are_answered_in_turn_never_refused(cli_server) -> None:  # noqa: F811
    """2,000 small requests in one send (300 KB): a read of the server's held the end of one
    of them, which was counted as a head of the whole read's size (a 431, with the answers
    to the stored events before it lost). Now a connection answers the requests it read,
    up to serving.MAX_PIPELINED waiting, and closes; those it did not read were not run,
    and a client sends them again, as HTTP says."""
    server = cli_server("start")
    wanted = [f"pipe-{i}" for i in range(2000)]
    left, stored, rounds = list(wanted), {}, 0
    while left:
        rounds += 1
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_pipelined_events(left))
            answer = read_until_closed(sock)
        statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]
        assert statuses and set(statuses) == {200}, answer[:600]
        ids = re.findall(rb'"ids":\["([0-9A-Z]{26})"\]', answer)
        assert len(ids) == len(statuses)
        for sender_id, event_id in zip(left, ids, strict=False):
            stored[sender_id] = event_id.decode()
        left = left[len(statuses):]
        if rounds == 1:  # what was not answered was not stored either
            listed = httpx.get(f"{server.url}/api/v1/events", params={"name": "srv/greet", "limit": 500},
                               headers=BEARER, timeout=30)
            assert len(listed.json()["data"]) == len(statuses) < len(wanted)
        assert rounds <= 200, "a round answered almost nothing"
    assert len(set(stored.values())) == len(wanted)  # each event stored once, under its own id
    for event_id in list(stored.values())[::97]:
        assert_kept(server, event_id)


def test_a_head_cut_by_a_read_after_many_pipelined_requests_is_not_taken_for_a_huge_one(cli_server) -> None:  # noqa: F811
    """One read of 30 requests of 1 KB and the first half of a 31st head: the 31st was counted
    as a head the size of the whole read, over 16 KiB (a false 431)."""
    server = cli_server("start")
    ids = [f"cut-{i}" for i in range(31)]
    sent = _pipelined_events(ids[:30], data_name="p" * 1000)
    last = _pipelined_events(ids[30:])
    assert len(sent) > 16 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(sent + last[:20])
        time.sleep(0.5)  # the server reads and parses what came, ending mid-head
        sock.sendall(last[20:])
        answer = read_until_closed(sock)  # the server closes the connection once idle
    statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200] * 31, answer[:600]


def test_pipelining_without_reading_holds_little_memory_per_connection(cli_server) -> None:  # noqa: F811
    """Connections that each pipeline thousands of small requests and read nothing held every
    request they sent, parsed, waiting its turn: 3.6-4 MB a connection, gigabytes under the
    connection cap. Now a connection holds at most serving.MAX_PIPELINED such requests."""
    server = cli_server("start")
    before = server.rss_peak_kib()
    flood = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 5000  # 200 KB of requests
    socks = []
    try:
        for _ in range(150):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            try:
                sock.sendall(flood)
            except BlockingIOError:
                pass  # the server stopped reading this one
            socks.append(sock)
        wait_for(lambda: httpx.get(f"{server.url}/health", timeout=10).status_code == 200, what="the server to answer")
        time.sleep(1.0)  # what the server read is parsed by now
        grown_mib = (server.rss_peak_kib() - before) / 1024
        assert grown_mib < 150, f"the server grew by {grown_mib:.0f} MiB for 150 connections"
    finally:
        for sock in socks:
            sock.close()


def test_requests_asking_to_upgrade_are_served_and_cannot_fill_the_log(cli_server) -> None:  # noqa: F811
    """uvicorn logged two warnings for each request with an Upgrade header (one advising to
    install a WebSocket library): anyone, without credentials, could write the log at will."""
    server = cli_server("start")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(60):
            upgrade = ("websocket", "h2c", "TLS/1.2")[i % 3]
            reply = client.get("/health", headers={"connection": "Upgrade", "upgrade": upgrade})
            assert reply.status_code == 200, reply.text
    log = server.log()
    assert "Unsupported upgrade request" not in log and "WebSocket library" not in log
    assert log.count("asked to upgrade the connection") == 1, log[-2000:]


def test_a_request_the_parser_refuses_gets_a_json_400_naming_what_is_wrong(cli_server) -> None:  # noqa: F811
    """uvicorn answered these with a plain-text 'Invalid HTTP request received.', naming nothing."""
    server = cli_server("start")
    body = b'{"name": "srv/greet"}'
    for head, says in (
        (b"Content-Length: 5\r\nContent-Length: 21", "Duplicate Content-Length"),
        (b"Content-Length: 21\r\nTransfer-Encoding: chunked", "Transfer-Encoding can't be present with Content-Length"),
        (b"Content-Length: -1", "Invalid character in Content-Length"),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: x\r\n".encode() + head + b"\r\n\r\n" + body)
            status, _, answer = read_until_closed(sock).partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400") and b"application/json" in status, status
        assert json.loads(answer)["error"] == f"the request is not valid HTTP/1.1: {says}; fix the client or proxy that sent it"
    listed = httpx.get(f"{server.url}/api/v1/events", params={"name": "srv/greet"}, headers=BEARER, timeout=30)
    assert listed.json()["data"] == []


def test_a_huge_head_gets_431_whether_it_arrives_at_once_or_in_pieces(cli_server) -> None:  # noqa: F811
    server = cli_server("start")
    at_once = httpx.get(f"{server.url}/health", headers={"x-big": "a" * 100_000}, timeout=30)
    assert at_once.status_code == 431 and at_once.headers["connection"] == "close"
    assert "STEPLINE_MAX_HEADER_BYTES" in at_once.json()["error"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(20):
            sock.sendall(f"x-part-{i}: {'a' * 5000}\r\n".encode())
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"STEPLINE_MAX_HEADER_BYTES" in answer
    # A URL of 64 KiB or more, which the parser cannot take apart, was a plain-text 400.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and "STEPLINE_MAX_HEADER_BYTES" in json.loads(body)["error"], head
    assert httpx.get(f"{server.url}/health", headers={"x-ok": "a" * 8000}, timeout=30).status_code == 200


# --- 4. stepline dev: foreign hosts and pages --------------------------------------------


def test_dev_answers_local_host_names_only(cli_server) -> None:  # noqa: F811
    server = cli_server("dev", env={"STEPLINE_ALLOWED_HOSTS": "box.test,.team.test"}, extra_args=("--no-discovery",))
    port = server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "box.test.evil.example"):
        refused = httpx.get(f"{server.url}/api/v1/runs", headers={"host": host}, timeout=30)
        assert refused.status_code == 403 and "STEPLINE_ALLOWED_HOSTS" in refused.json()["error"], host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "app.localhost", "127.0.0.2",
                 "box.test", f"db.team.test:{port}", "team.test"):
        assert httpx.get(f"{server.url}/api/v1/runs", headers={"host": host}, timeout=30).status_code == 200, host


def test_dev_refuses_writes_from_foreign_pages_and_serves_programs(cli_server) -> None:  # noqa: F811
    server = cli_server("dev", extra_args=("--no-discovery",))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        napping = client.post("/e/dev", json={"name": "srv/nap"}).json()["ids"][0]
        run_id = wait_for(lambda: (client.get(f"/api/v1/events/{napping}").json().get("runs") or [None])[0])["id"]
        evil = {"origin": "https://evil.example", "content-type": "text/plain"}
        sent = client.post("/e/dev", content=b'{"name": "srv/greet"}', headers=evil)
        assert sent.status_code == 403 and "evil.example" in sent.json()["error"]
        cancel = client.post("/api/v1/runs/bulk-cancel", content=b'{"function_id": "nap"}', headers=evil)
        assert cancel.status_code == 403
        blind = client.post("/e/dev", json={"name": "srv/greet"}, headers={"sec-fetch-site": "cross-site"})
        assert blind.status_code == 403
        for origin in ("null", "http://[::1", "http://127.0.0.1.evil.example"):
            assert client.post("/e/dev", json={"name": "srv/greet"}, headers={"origin": origin}).status_code == 403, origin
        # Nothing of it happened: no greet event, the run still sleeps.
        assert client.get("/api/v1/events", params={"name": "srv/greet"}).json()["data"] == []
        assert client.get(f"/api/v1/runs/{run_id}").json()["status"] in ("queued", "running", "sleeping")
        # Reads are not writes; local pages and programs (no Origin) write as before.
        assert client.get("/api/v1/runs", headers={"origin": "https://evil.example"}).status_code == 200
        assert client.post("/e/dev", json={"name": "srv/greet"}, headers={"origin": f"http://localhost:{server.port}"}).status_code == 200
        assert client.post("/e/dev", json={"name": "srv/greet"}, headers={"origin": "http://127.0.0.1:5173",
                                                                          "sec-fetch-site": "cross-site"}).status_code == 200
        assert client.post("/e/dev", json={"name": "srv/greet"}).status_code == 200
        assert len(client.get("/api/v1/events", params={"name": "srv/greet"}).json()["data"]) == 3


def test_production_serves_any_host(cli_server) -> None:  # noqa: F811
    # Production answers by its credentials; Host names are the proxy's business there.
    server = cli_server("start")
    assert httpx.get(f"{server.url}/api/v1/runs", headers={**BEARER, "host": "jobs.example.com"}, timeout=30).status_code == 200


def test_a_trailing_slash_is_a_404_naming_the_path_not_a_redirect_to_the_host_sent(cli_server) -> None:  # noqa: F811
    """Starlette's 307 to the path without its slash was built from the Host header: any Host
    (production serves every one) made the server an open redirect."""
    server = cli_server("start")
    with httpx.Client(base_url=server.url, timeout=30, headers=BEARER) as client:
        for method, path in (("GET", "/api/v1/runs/abc/"), ("POST", "/api/v1/runs/bulk-cancel/"), ("GET", "/login//")):
            reply = client.request(method, path, headers={"host": "evil.example"})
            assert reply.status_code == 404 and "location" not in reply.headers, (path, reply.headers)
            assert f"drop the trailing slash: {path.rstrip('/')}" in reply.json()["error"], reply.text


def test_bodies_declared_but_not_sent_hold_nothing(cli_server) -> None:  # noqa: F811
    """A body held its declared length from its head on: 32 heads of 8 MiB that sent a byte
    now and then held the whole STEPLINE_MAX_BODY_BUFFER (256 MiB) while holding nothing,
    and every other request with a body, event ingest included, was answered 503 for as long
    as they trickled (60 s, again and again). A body now holds what has come of it."""
    server = cli_server("start", env={"STEPLINE_MAX_BODY_BUFFER": str(16 * MIB)})
    head = (f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {8 * MIB}\r\n\r\n[").encode()
    holders = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]  # 16 MiB declared
    try:
        for holder in holders:
            holder.sendall(head)
        for _ in range(5):
            reply = httpx.post(f"{server.url}/e/{EVENT_KEY}", json=[{"name": "srv/greet", "data": {"pad": "y" * 200_000}}],
                               timeout=30)
            assert reply.status_code == 200, reply.text
            for holder in holders:
                holder.sendall(b" ")  # the holders go on trickling
    finally:
        for holder in holders:
            holder.close()


def test_bodies_held_by_slow_senders_are_bounded_in_all_and_the_rest_told_to_retry(cli_server) -> None:  # noqa: F811
    """Each body is held whole until its request ends: 150 connections each holding most of an
    8 MiB body raised a server to 1.37 GB (8.4 GB possible at the default connection cap).
    Past STEPLINE_MAX_BODY_BUFFER in all, a request gets 503 with Retry-After before its body
    is read (or, chunked, once it is over); once the holders are gone, it goes through."""
    server = cli_server("start", env={"STEPLINE_MAX_BODY_BUFFER": str(9 * MIB)})
    head = (f"POST /e/{EVENT_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {8 * MIB}\r\n\r\n").encode()
    two_events = [{"name": "srv/greet", "data": {"pad": "y" * 700_000}}] * 2
    holder = socket.create_connection(("127.0.0.1", server.port))
    holder.sendall(head + b'{"name": "srv/greet", "data": {"pad": "' + b"x" * (8 * MIB - 1000))  # held: what came
    try:
        def refused() -> httpx.Response | None:
            reply = httpx.post(f"{server.url}/e/{EVENT_KEY}", json=two_events, timeout=30)
            return reply if reply.status_code == 503 else None

        reply = wait_for(refused, what="a 1.4 MB body refused while 8 MiB are held")
        assert reply.headers["retry-after"] == "1" and "STEPLINE_MAX_BODY_BUFFER" in reply.json()["error"], reply.text
        chunked = httpx.post(f"{server.url}/e/{EVENT_KEY}", content=chunks(2 * MIB), timeout=30)  # counted as it streams
        assert chunked.status_code == 503, chunked.text
        assert_kept(server, send_event(server))  # small requests still fit
    finally:
        holder.close()
    later = wait_for(lambda: (r := httpx.post(f"{server.url}/e/{EVENT_KEY}", json=two_events, timeout=30)).status_code == 200 and r,
                     what="the held body's bytes to be given back")
    assert len(later.json()["ids"]) == 2
