"""Hostile input at every way in, against a real server on loopback, on both backends.

Each input is refused with a 4xx that names the limit and the fix, or served; it never
fails the sender's other events or other senders, and never a read of what is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import tracemalloc
from functools import partial
from typing import Any

import httpx
import pytest

import stepline
from stepline import event as event_mod
from stepline import expressions, ids
from stepline.store import ops_ingest, ops_runs
from tests import apps_hostile
from tests.cli_server import API_TOKEN, EVENT_KEY, cli_server  # noqa: F401 - fixture
from tests.server_live import LiveServer, run_of_event, run_status, serve, wait_for  # noqa: F401 - fixture

SDK = {"X-Inngest-SDK": "inngest-js:v3.27.0"}
INT64_MAX = 2**63 - 1


@pytest.fixture
def api(serve) -> httpx.Client:  # noqa: F811
    server: LiveServer = serve(apps_hostile.app)
    client = httpx.Client(base_url=server.url, timeout=60)
    client.server = server  # type: ignore[attr-defined]
    return client


def server_of(api: httpx.Client) -> LiveServer:
    return api.server  # type: ignore[attr-defined, no-any-return]


def send(api: httpx.Client, body: Any, *, sdk: bool = False) -> httpx.Response:
    return api.post("/e/dev", json=body, headers=SDK if sdk else {})


def send_raw(api: httpx.Client, content: bytes, *, sdk: bool = False) -> httpx.Response:
    return api.post("/e/dev", content=content, headers={"content-type": "application/json", **(SDK if sdk else {})})


def ok_ids(reply: httpx.Response) -> list[str]:
    assert reply.status_code == 200, reply.text
    return list(reply.json()["ids"])


def refused(reply: httpx.Response, *phrases: str) -> str:
    """The 400's message, after checking it names each of ``phrases``."""
    assert reply.status_code == 400, reply.text
    message = str(reply.json()["error"])
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    return message


def nested(depth: int) -> str:
    """``depth`` nested objects as JSON text (built as text: encoders stop near 255 levels)."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def stored_body(api: httpx.Client, event_id: str) -> dict[str, Any]:
    reply = api.get(f"/api/v1/events/{event_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["body"])


def event_names(api: httpx.Client) -> list[str]:
    reply = api.get("/api/v1/events", params={"limit": 200})
    assert reply.status_code == 200, reply.text
    return [e["name"] for e in reply.json()["data"]]


# --- 1. event names: bounded, and matched against wildcards in linear time ------------------


def test_wildcard_matching_costs_memory_in_proportion_to_the_name(api: httpx.Client) -> None:
    server = server_of(api)
    name = "h/echo." + "." * 8000 + "x"  # every '.' was a wildcard prefix built as a whole string

    def match() -> list[str]:
        found = server.call(lambda engine: engine.store.db.read(partial(ops_ingest.matching_functions, name=name)))
        return [row[0] for row in found]  # (function id, if, config, pause mode)

    match()  # connections and caches warm
    tracemalloc.start()
    try:
        found = match()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == ["echo"]
    assert peak < 2_000_000, f"matching an 8 KB name took {peak:,} bytes at its peak"


def test_wildcard_triggers_cover_names_that_go_on_past_their_prefix(api: httpx.Client) -> None:
    covered = ok_ids(send(api, {"name": "h/echo.a.b"}))[0]
    assert run_status(api, run_of_event(api, covered)["id"], "completed")["output"] == {"name": "h/echo.a.b"}
    for name in ("h/echo", "h/echo.", "h/echoes.a"):
        event_id = ok_ids(send(api, {"name": name}))[0]
        assert api.get(f"/api/v1/events/{event_id}").json()["runs"] == [], name


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_an_event_name_over_the_limit_is_refused_naming_it(api: httpx.Client, sdk: bool) -> None:
    refused(send(api, {"name": "h/" + "." * 40_000}, sdk=sdk), "40,002 bytes", "256 bytes", "STEPLINE_MAX_NAME_BYTES")
    refused(send(api, {"name": "h/" + "é" * 128}, sdk=sdk), "258 bytes", "STEPLINE_MAX_NAME_BYTES")
    longest = "h/" + "é" * 127  # 256 bytes in UTF-8
    event_id = ok_ids(send(api, {"name": longest}, sdk=sdk))[0]
    assert stored_body(api, event_id)["name"] == longest


# --- 2. an expression that fails on one event's data ----------------------------------------


def test_a_failing_if_is_no_match_for_that_event_only_and_says_so(api: httpx.Client) -> None:
    zero, five, over = ok_ids(
        send(api, [{"name": "h/div", "data": {"d": 0}}, {"name": "h/div", "data": {"d": 5}}, {"name": "h/ovf", "data": {"n": 1}}])
    )
    detail = api.get(f"/api/v1/events/{zero}").json()
    assert [r["function_id"] for r in detail["runs"]] == ["always"]
    (skip,) = detail["skipped_functions"]
    assert skip["function_id"] == "divides" and skip["reason"] == "expression_error"
    assert skip["detail"]["expression"] == "10 / event.data.d > 1" and "division by zero" in skip["detail"]["error"]
    assert {r["function_id"] for r in api.get(f"/api/v1/events/{five}").json()["runs"]} == {"always", "divides"}
    overflowed = api.get(f"/api/v1/events/{over}").json()
    assert overflowed["runs"] == [] and "overflows: expression_error" in overflowed["why_no_runs"]
    assert "overflow" in overflowed["skipped_functions"][0]["detail"]["error"].lower()


def test_a_failing_wait_expression_fails_no_sender_and_the_wait_goes_on(api: httpx.Client) -> None:
    started = ok_ids(send(api, {"name": "h/wait.start", "data": {"floor": 0}}))[0]
    run = run_status(api, run_of_event(api, started)["id"], "waiting")
    overflowing = ok_ids(send(api, {"name": "h/reply", "data": {"n": 1}}))[0]  # n + int64 max overflows
    skip = api.get(f"/api/v1/events/{overflowing}").json()["skipped_functions"][0]
    assert skip["function_id"] == "waiter" and skip["reason"] == "wait_expression_error"
    assert skip["detail"]["run_id"] == run["id"] and "overflow" in skip["detail"]["error"].lower()
    # Another sender's events of that name are taken as before; the one that matches resumes the run.
    ok_ids(send(api, [{"name": "h/reply", "data": {"n": 2}}, {"name": "h/reply", "data": {"other": True}}]))
    ok_ids(send(api, {"name": "h/reply", "data": {"n": -5}}))
    assert run_status(api, run["id"], "completed")["output"] == {"got": {"n": -5}}


def test_a_failing_cancel_expression_cancels_nothing_and_rejects_nothing(api: httpx.Client) -> None:
    run = run_status(api, run_of_event(api, ok_ids(send(api, {"name": "h/cancel.start"}))[0])["id"], "sleeping")
    stop = ok_ids(send(api, {"name": "h/cancel.stop", "data": {"d": 0}}))[0]  # 10 / 0
    detail = api.get(f"/api/v1/events/{stop}").json()
    assert [r["function_id"] for r in detail["runs"]] == ["after-stop"]  # the event's own trigger still ran
    assert {s["function_id"]: s["reason"] for s in detail["skipped_functions"]} == {"cancellable": "cancel_expression_error"}
    assert api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "sleeping"
    ok_ids(send(api, {"name": "h/cancel.stop", "data": {"d": 2}}))
    assert run_status(api, run["id"], "cancelled")["status"] == "cancelled"


def test_failing_key_expressions_start_the_run_with_empty_keys(api: httpx.Client) -> None:
    """Concurrency, throttle and priority keys that fail are '' (the function-wide key) and
    priority 0; a failing idempotency key is '' too, which means no de-duplication."""
    first, second = ok_ids(send(api, [{"name": "h/keys", "data": {"d": 0}}, {"name": "h/keys", "data": {"d": 0}}]))
    for event_id in (first, second):
        assert run_status(api, run_of_event(api, event_id)["id"], "completed")["output"] == "keyed"
    # A key that evaluates still de-duplicates.
    kept, dropped = ok_ids(send(api, [{"name": "h/keys", "data": {"d": 2}}, {"name": "h/keys", "data": {"d": 2}}]))
    run_status(api, run_of_event(api, kept)["id"], "completed")
    assert api.get(f"/api/v1/events/{dropped}").json()["why_no_runs"] == "keyed: idempotent"


def test_a_long_key_value_is_kept_as_its_digest(api: httpx.Client) -> None:
    long_value = "k" * 5000  # as a key, over PostgreSQL's index row size
    first, second, other = ok_ids(send(api, [{"name": "h/long-keys", "data": {"pad": long_value}}] * 2
                                       + [{"name": "h/long-keys", "data": {"pad": long_value + "!"}}]))
    run_status(api, run_of_event(api, first)["id"], "completed")
    assert api.get(f"/api/v1/events/{second}").json()["why_no_runs"] == "long-keyed: idempotent"
    run_status(api, run_of_event(api, other)["id"], "completed")  # a different value is a different key
    # The digest's text sent as a value is not the value it digests.
    forged = "sha256:" + hashlib.sha256(long_value.encode()).hexdigest()
    (lookalike,) = ok_ids(send(api, [{"name": "h/long-keys", "data": {"pad": forged}}]))
    run_status(api, run_of_event(api, lookalike)["id"], "completed")
    assert expressions.key("event.data.k", {"event": {"data": {"k": long_value}}}).startswith("sha256:")
    assert expressions.key("event.data.k", {"event": {"data": {"k": "short"}}}) == "short"


def test_a_failing_expression_is_logged_once_not_per_event(
    api: httpx.Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expressions, "_reported", {})
    with caplog.at_level(logging.WARNING, logger="stepline.expressions"):
        for _ in range(3):
            ok_ids(send(api, [{"name": "h/div", "data": {"d": 0}}] * 5))
    lines = [r for r in caplog.records if "10 / event.data.d > 1" in r.getMessage()]
    assert len(lines) == 1 and "division by zero" in lines[0].getMessage()


def test_an_expression_error_quoting_the_events_values_is_logged_on_one_line(
    api: httpx.Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``matches()`` quotes a pattern it cannot compile, line breaks and all: an event whose
    pattern holds a line break must not write a line of its own choosing into the log."""
    monkeypatch.setattr(expressions, "_reported", {})
    forged = "(\nCRITICAL stepline.server: the database was dropped"
    with caplog.at_level(logging.WARNING, logger="stepline.expressions"):
        ok_ids(send(api, [{"name": "h/pattern", "data": {"s": "x", "p": forged}}]))
    (line,) = [r.getMessage() for r in caplog.records if "event.data.s.matches" in r.getMessage()]
    assert "\n" not in line and "\\nCRITICAL" in line, line


class _HandedToCel:
    """A compiled program that records the size, as JSON, of what each evaluation hands the
    CEL library (which converts all of it, read or not)."""

    def __init__(self, program: Any, sizes: list[int]) -> None:
        self.program = program
        self.sizes = sizes

    def execute(self, context: Any) -> Any:
        variables = context if isinstance(context, dict) else context.variables
        self.sizes.append(len(json.dumps(variables)))
        return self.program.execute(context)

    def functions(self) -> Any:
        return self.program.functions()


def test_expressions_are_handed_only_what_they_read_of_a_large_event(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event key could send events of a megabyte of tiny values that no expression reads:
    each trigger and key expression, and each waiting run's match, converted the whole event
    (a tenth of a second each), so one request held the writer, or the event loop, for seconds,
    and one event that many runs wait for for minutes."""
    sizes: list[int] = []
    compile_real = expressions.compile_expression
    monkeypatch.setattr(expressions, "compile_expression", lambda source: _HandedToCel(compile_real(source), sizes))
    waiting = [run_status(api, run_of_event(api, e)["id"], "waiting")["id"]
               for e in ok_ids(send(api, [{"name": "h/wait.start", "data": {"floor": 0}}] * 3))]
    padding = [0] * 200_000  # 400 KB that no expression reads
    sizes.clear()
    _, keys = ok_ids(send(api, [{"name": "h/reply", "data": {"n": -5, "padding": padding}},
                                {"name": "h/keys", "data": {"d": 2, "padding": padding}}]))
    for run_id in waiting:  # each wait was evaluated, and matched
        assert run_status(api, run_id, "completed")["output"]["got"]["n"] == -5
    assert run_status(api, run_of_event(api, keys)["id"], "completed")["output"] == "keyed"
    assert len(sizes) >= 3 + 4  # the three waits, the keyed function's four key expressions
    assert max(sizes) < 1000, f"an expression was handed {max(sizes):,} bytes of the event"


# --- 3. nesting depth ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 253, 300, 1024, 5000])
@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_data_nested_deeper_than_the_limit_is_refused(api: httpx.Client, depth: int, sdk: bool) -> None:
    body = ('{"name": "h/deep", "data": ' + nested(depth) + "}").encode()
    message = refused(send_raw(api, body, sdk=sdk), "64", "STEPLINE_MAX_JSON_DEPTH")
    assert "flatten" in message
    assert "h/deep" not in event_names(api)


def test_data_nested_to_the_limit_is_stored_and_read_back(api: httpx.Client) -> None:
    data = json.loads(nested(64))
    event_id = ok_ids(send_raw(api, ('{"name": "h/deep", "data": ' + nested(64) + "}").encode()))[0]
    assert stored_body(api, event_id)["data"] == data
    listed = api.get("/api/v1/events", params={"name": "h/deep"})
    assert listed.status_code == 200 and listed.json()["data"][0]["body"]["data"] == data


def test_a_list_nested_deep_without_a_run_of_brackets_is_refused(api: httpx.Client) -> None:
    deep: Any = []
    for _ in range(70):
        deep = [[], deep]  # '[[],[[],[[],...': no 65 brackets in a row
    refused(send(api, {"name": "h/deep", "data": {"x": deep}}), "STEPLINE_MAX_JSON_DEPTH")


def test_a_body_of_escaped_quotes_is_checked_in_linear_time(api: httpx.Client) -> None:
    """The depth check strips string literals before counting brackets. A string never
    closed, made of escaped quotes, once made every quote start a scan to the end of the
    body: 48 KB held the event loop for 7 s, the 8 MiB limit for days. This 2 MiB body is
    refused at once (quadratic, it would outlast the test's timeout by hours), and the
    server answers the next request."""
    body = b"[" * 70 + b'"' + b'\\"' * 1_000_000
    refused(send_raw(api, body), "STEPLINE_MAX_JSON_DEPTH")
    refused(send_raw(api, b'{"name": "h/q", "data": {"x": "' + b'\\"' * 1_000_000), "not valid JSON")
    assert api.get("/health").status_code == 200


def test_a_body_that_is_not_utf8_is_refused_naming_where(api: httpx.Client) -> None:
    """The parser's own words were "str is not valid UTF-8: surrogates not allowed: line 1
    column 1 (char 0)" for any such body: the wrong reason, and no position."""
    refused(send_raw(api, '{"name": "h/q"}'.encode("utf-16")), "not UTF-8: byte 0 (0xff", "encoded as UTF-8")
    refused(send_raw(api, '{"name": "h/q", "data": {"x": "café"}}'.encode("latin-1")), "not UTF-8: byte 34 (0xe9")
    refused(send_raw(api, b'{"name": "h/q", "data": {"x": "\xc0\xaf"}}'), "not UTF-8: byte 31 (0xc0")


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_a_request_of_more_events_than_the_limit_is_refused_whole(api: httpx.Client, sdk: bool) -> None:
    """Tiny events by the hundred thousand (8 MiB of them) once held the loop for seconds
    while each was validated: past STEPLINE_MAX_EVENTS_PER_REQUEST the request is refused
    whole, naming the limit and the fix; at the limit it is served."""
    name = f"h/many-{'sdk' if sdk else 'native'}"
    over = send(api, [{"name": name}] * 5001, sdk=sdk)
    assert over.status_code == 413, over.text
    assert "5001 events" in over.text and "STEPLINE_MAX_EVENTS_PER_REQUEST" in over.text
    assert name not in event_names(api)
    assert len(ok_ids(send(api, [{"name": name}] * 5000, sdk=sdk))) == 5000


def test_listings_leave_out_long_bodies_and_the_event_read_has_them(api: httpx.Client) -> None:
    """Anyone with the event key may store events of a megabyte: a page of them once cost the
    server (and the dashboard) hundreds of megabytes. A listing leaves out bodies past 64 KiB
    (saying so); reading the event gives it whole."""
    big = ok_ids(send(api, {"name": "h/big", "data": {"blob": "x" * 200_000}}))[0]
    small = ok_ids(send(api, {"name": "h/big", "data": {"blob": "short"}}))[0]
    listed = {e["id"]: e for e in api.get("/api/v1/events", params={"name": "h/big"}).json()["data"]}
    assert listed[big]["body"] is None and listed[big]["body_elided"] is True
    assert listed[small]["body"]["data"] == {"blob": "short"} and listed[small]["body_elided"] is False
    assert stored_body(api, big)["data"]["blob"] == "x" * 200_000


def test_run_listings_leave_out_long_outputs_and_the_run_read_has_them(api: httpx.Client) -> None:
    """A function may return what a sender made large: run listings leave out outputs past
    64 KiB as event listings do with bodies; reading the run gives it whole."""
    big = run_of_event(api, ok_ids(send(api, {"name": "h/blob", "data": {"blob": "x" * 200_000}}))[0])["id"]
    small = run_of_event(api, ok_ids(send(api, {"name": "h/blob", "data": {"blob": "short"}}))[0])["id"]
    for run_id in (big, small):
        assert run_status(api, run_id)["status"] == "completed"
    listed = {r["id"]: r for r in api.get("/api/v1/runs", params={"function_id": "returns-blob"}).json()["data"]}
    assert listed[big]["output"] is None and listed[big]["output_elided"] is True
    assert listed[small]["output"] == "short" and "output_elided" not in listed[small]
    assert api.get(f"/api/v1/runs/{big}").json()["output"] == "x" * 200_000


def test_in_process_sends_meet_the_same_depth_limit(api: httpx.Client) -> None:
    deep: Any = {}
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(stepline.EventError, match=r"'data(\.a){64}' nests deeper than 64 levels \(STEPLINE_MAX_JSON_DEPTH\)"):
        event_mod.validate({"name": "h/deep", "data": deep})
    with pytest.raises(stepline.EventError, match="STEPLINE_MAX_JSON_DEPTH"):
        server_of(api).call(lambda engine: engine.send({"name": "h/deep", "data": deep}))


def test_reads_never_fail_on_a_stored_event_nested_too_deep(api: httpx.Client) -> None:
    """Data stored before the depth limit may nest 250 levels; lists and details still answer."""
    deep: Any = {}
    for _ in range(250):
        deep = {"a": deep}
    event_id = ids.new_id()
    body = {"name": "h/old", "data": deep, "id": event_id, "ts": 1}
    server_of(api).call(
        lambda engine: engine.store.db.write(
            partial(ops_runs.insert_event_txn, event_id=event_id, body=body, external_id=None, now=int(time.time() * 1000))
        )
    )
    assert stored_body(api, event_id)["data"] == deep
    listed = api.get("/api/v1/events")  # each event sits a few levels deeper in a list
    assert listed.status_code == 200, listed.text
    shown, depth = next(e for e in listed.json()["data"] if e["name"] == "h/old")["body"]["data"], 0
    while isinstance(shown, dict) and shown:
        shown, depth = shown["a"], depth + 1
    assert depth > 150 and (shown == {} or "not shown" in shown), (depth, shown)


# --- 4. names, ids and user ids: one bound on both backends ------------------------------------


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_long_ids_and_user_ids_are_refused_naming_the_limit(api: httpx.Client, sdk: bool) -> None:
    refused(send(api, {"name": "h/x", "id": "i" * 3000}, sdk=sdk), "'id' is 3,000 bytes", "STEPLINE_MAX_ID_BYTES")
    refused(send(api, {"name": "h/x", "data": {"user_id": "u" * 900_000}}, sdk=sdk), "'data.user_id'", "STEPLINE_MAX_USER_ID_BYTES")
    refused(send(api, {"name": "h/x", "data": {"userId": "u" * 300}}, sdk=sdk), "'data.userId' is 300 bytes")
    refused(send(api, {"name": "h/x", "user": {"id": "u" * 257}}, sdk=sdk), "'user.id' is 257 bytes", "256 bytes")
    kept = ok_ids(send(api, {"name": "h/x", "id": "i" * 256, "data": {"user_id": "u" * 256}}, sdk=sdk))[0]
    body = stored_body(api, kept)
    assert body["id"] == "i" * 256 and body["data"]["user_id"] == "u" * 256
    assert api.get(f"/api/v1/events/{kept}").json()["user_id"] == "u" * 256


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_control_and_bidi_characters_in_names_ids_and_user_ids_are_refused(api: httpx.Client, sdk: bool) -> None:
    """Names, ids and user ids are shown as sent (logs, dashboard, CLI): a line break or ESC
    forges lines or drives the terminal, and a bidi override (U+202E) makes an id read as another."""
    cases = [
        ({"name": "h/a\u202eb"}, "'name' 'h/a\\u202eb' contains a bidirectional formatting character (U+202E)"),
        ({"name": "h/x", "id": "a\x1b[31m"}, "'id' 'a\\x1b[31m' contains a control character (U+001B"),
        ({"name": "h/x", "data": {"user_id": "u1\n2026 ERROR forged"}}, "'data.user_id'", "control character (U+000A"),
        ({"name": "h/x", "data": {"user_id": "a\x85b"}}, "'data.user_id'", "control character (U+0085"),
        ({"name": "h/x", "data": {"userId": "\x1b]0;title\x07"}}, "'data.userId'", "control character (U+001B"),
        ({"name": "h/x", "user": {"id": "admin\u202egnp.exe"}}, "'user.id'", "bidirectional formatting character (U+202E)"),
        ({"name": "h/x", "user": {"id": "a\u2066b"}}, "'user.id'", "bidirectional formatting character (U+2066)"),
    ]
    for body, *phrases in cases:
        refused(send(api, body, sdk=sdk), *phrases, "send the user's id" if "user" in phrases[0] else "use ")
    assert "h/x" not in event_names(api)
    # Everything else of Unicode is kept: accents, CJK, right-to-left text, emoji and their joiners.
    user = "josé-山田-\u05e9\u05dc\u05d5\u05dd-👩\u200d💻"
    kept = ok_ids(send(api, {"name": "h/ünï-日本", "id": "é-🙂", "data": {"user_id": user}}, sdk=sdk))[0]
    assert api.get(f"/api/v1/events/{kept}").json()["user_id"] == user
    assert stored_body(api, kept)["id"] == "é-🙂" and "h/ünï-日本" in event_names(api)


def test_a_refused_event_rejects_its_batch_and_loses_nothing_accepted(api: httpx.Client) -> None:
    first = ok_ids(send(api, {"name": "h/kept", "data": {"n": 1}}))[0]
    refused(send(api, [{"name": "h/kept", "data": {"n": 2}}, {"name": "h/x", "id": "i" * 300}]), "event[1]", "STEPLINE_MAX_ID_BYTES")
    assert event_names(api).count("h/kept") == 1
    assert stored_body(api, first)["data"] == {"n": 1}


# --- 5. one validation for every way in: NUL, ts, registrations, signals, invokes ------------------


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_nul_characters_are_refused_wherever_they_are(api: httpx.Client, sdk: bool) -> None:
    refused(send(api, {"name": "h/a\x00b"}, sdk=sdk), "'name' contains a NUL character")
    refused(send(api, {"name": "h/x", "id": "a\x00"}, sdk=sdk), "'id' contains a NUL character")
    refused(send(api, {"name": "h/x", "data": {"list": ["ok", "a\x00"]}}, sdk=sdk), "'data.list[1]' contains a NUL character")
    refused(send(api, {"name": "h/x", "data": {"k\x00": 1}}, sdk=sdk), "'data' has a key that contains a NUL")
    refused(send(api, {"name": "h/x", "user": {"id": "\x00"}}, sdk=sdk), "'user.id' contains a NUL")
    assert "h/x" not in event_names(api)


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_ts_outside_inngests_range_is_refused(api: httpx.Client, sdk: bool) -> None:
    """1980-01-01 to 2100-01-01 in ms: a ts in seconds is 1970, one far ahead would hold a
    singleton key and keep its run from retention for ever."""
    for ts in (1e20, -1, 1_700_000_000, event_mod.MIN_TS - 1, event_mod.MAX_TS + 1, 253402300799999):
        refused(send(api, {"name": "h/ts", "ts": ts}, sdk=sdk), "'ts'", "1980-01-01 to 2100-01-01", "milliseconds")
    refused(send(api, {"name": "h/ts", "ts": "yesterday"}, sdk=sdk), "'ts' must be a number")
    for ts in (event_mod.MIN_TS, event_mod.MAX_TS):
        kept = ok_ids(send(api, {"name": "h/ts", "ts": ts}, sdk=sdk))[0]
        assert stored_body(api, kept)["ts"] == ts


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_names_of_the_servers_own_events_are_refused(api: httpx.Client, sdk: bool) -> None:
    """With only the event key, a forged failure event ran failure handlers, a forged
    cancellation marked jobs cancelled, a forged signal resumed a run."""
    for name in ("stepline/function.failed", "stepline/function.cancelled", "stepline/signal.received",
                 "stepline/scheduled.timer", "inngest/function.failed", "stepline/anything", "Stepline/function.failed",
                 "INNGEST/function.failed"):
        refused(send(api, [{"name": "h/kept"}, {"name": name, "data": {"function_id": "x"}}], sdk=sdk),
                "event[1]", "reserved", name.split("/")[0].lower() + "/")
    assert not [n for n in event_names(api) if n.lower().startswith(("stepline/", "inngest/", "h/kept"))]


def test_in_process_sends_and_step_send_event_are_validated_alike(api: httpx.Client) -> None:
    server = server_of(api)
    with pytest.raises(stepline.EventError, match="'data.s' contains a NUL character"):
        server.call(lambda engine: engine.send({"name": "h/x", "data": {"s": "a\x00"}}))
    with pytest.raises(stepline.EventError, match="lone UTF-16 surrogate"):
        server.call(lambda engine: engine.send({"name": "h/x", "data": {"s": "\ud800"}}))
    with pytest.raises(stepline.EventError, match="'data.n' is nan"):
        server.call(lambda engine: engine.send({"name": "h/x", "data": {"n": float("nan")}}))
    with pytest.raises(stepline.EventError, match="'ts' is -5"):
        server.call(lambda engine: engine.send({"name": "h/x", "ts": -5}))
    run = run_status(api, run_of_event(api, ok_ids(send(api, {"name": "h/relay"}))[0])["id"], "failed")
    assert "'data.s' contains a NUL character" in run["error"]["message"]
    assert "h/relayed" not in event_names(api)


def register_body(functions: Any) -> dict[str, Any]:
    return {"url": "http://127.0.0.1:9/api/inngest", "appName": "hostile-sdk", "framework": "test", "sdk": "js:v3",
            "v": "0.1", "deployType": "ping", "functions": functions}


def test_registrations_that_cannot_be_stored_are_refused(api: httpx.Client) -> None:
    deep = b'{"url": "http://127.0.0.1:9/api/inngest", "appName": "x", "functions": [' + nested(1000).encode() + b"]}"
    reply = api.post("/fn/register", content=deep, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "STEPLINE_MAX_JSON_DEPTH" in reply.json()["error"], reply.text
    step = {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": "http://127.0.0.1:9/api/inngest?fnId=f"}}}
    cases = [
        ({"id": "f\x00", "name": "f", "triggers": [{"event": "h/x"}], "steps": step}, "contains a NUL character"),
        ({"id": "f" * 300, "name": "f", "triggers": [{"event": "h/x"}], "steps": step}, "STEPLINE_MAX_NAME_BYTES"),
        ({"id": "f\n", "name": "f", "triggers": [{"event": "h/x"}], "steps": step}, "the function id 'f\\n' contains a control"),
        ({"id": "f", "name": "f\u202eexe.txt", "triggers": [{"event": "h/x"}], "steps": step}, "name 'f\\u202eexe.txt' contains a bidi"),
        ({"id": "f", "name": "f\x1b[2J", "triggers": [{"event": "h/x"}], "steps": step}, "contains a control character"),
        ({"id": "f", "name": "f", "triggers": [{"event": "h/x\n"}], "steps": step}, "triggers[0].event contains a control"),
        ({"id": "f", "name": "f", "triggers": [{"event": "h/x"}], "steps": step, "cancel": [{"event": "h/\u2067"}]},
         "cancel[0].event contains a bidirectional"),
        ({"id": "f", "name": "f", "triggers": [{"event": "h/" + "x" * 300}], "steps": step}, "STEPLINE_MAX_NAME_BYTES"),
        ({"id": "f", "name": "f", "triggers": [{"event": "h/x"}], "steps": step, "big": 2**64}, "64-bit"),
    ]
    for function, phrase in cases:
        reply = api.post("/fn/register", json=register_body([function]))
        assert reply.status_code == 400 and phrase in reply.json()["error"], (phrase, reply.text)
    function = {"id": "f", "name": "f", "triggers": [{"event": "h/x"}], "steps": step}
    for app in ("hostile\nsdk", "hostile\u202esdk"):
        reply = api.post("/fn/register", json={**register_body([function]), "appName": app})
        assert reply.status_code == 400 and "the app name (appName)" in reply.json()["error"], reply.text
    assert "hostile-sdk-f" not in {f["id"] for f in api.get("/api/v1/functions").json()["data"]}


def test_registrations_of_the_wrong_shape_are_400s_naming_the_field_not_500s(api: httpx.Client) -> None:
    """A function, its steps, its step, the step's runtime or retries given as a number, string or
    list reached a ``.get`` (AttributeError), and a limit past 64 bits failed the store's write:
    each was a 500 with a traceback in the log."""
    url = "http://127.0.0.1:9/api/inngest?fnId=f"

    def function(**fields: Any) -> dict[str, Any]:
        step = {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}
        return {"id": "f", "name": "f", "triggers": [{"event": "h/x"}], "steps": {"step": step}, **fields}

    cases = [
        (1, "each function of app 'hostile-sdk' must be a JSON object, got 1"),
        (function(steps="x"), "steps: expected an object, got 'x'"),
        (function(steps=[1]), "steps: expected an object, got [1]"),
        (function(steps={"step": 5}), "steps.step: expected an object, got 5"),
        (function(steps={"step": {"runtime": 5}}), "steps.step.runtime: expected an object, got 5"),
        (function(steps={"step": {"runtime": {"url": url}, "retries": 5}}), "steps.step.retries: expected an object"),
        (function(concurrency={"limit": 1e300}), "concurrency.limit: expected a whole number up to 9007199254740991"),
        (function(rateLimit={"limit": 1e19, "period": "1s"}), "rateLimit.limit: expected a whole number up to"),
        (function(throttle={"limit": 1, "burst": 1e20, "period": "1s"}), "throttle.burst: expected a whole number up to"),
    ]
    for item, phrase in cases:
        reply = api.post("/fn/register", json=register_body([item]))
        assert reply.status_code == 400 and phrase in reply.json()["error"], (phrase, reply.text)
    assert api.post("/fn/register", json=register_body([function(concurrency={"limit": 2**53 - 1})])).status_code == 200
    with pytest.raises(stepline.ConfigError, match="Concurrency.limit: expected a whole number 1..9007199254740991"):
        stepline.Concurrency(2**63)


def test_signal_and_invoke_data_meet_the_event_limits(api: httpx.Client) -> None:
    reply = api.post("/v1/signals", json={"signal": "s", "data": {"x": "a\x00"}})
    assert reply.status_code == 400 and "contains a NUL character" in reply.json()["error"], reply.text
    reply = api.post("/invoke/echo", json={"data": {"x": 2**64}})
    assert reply.status_code == 400 and "64-bit" in reply.json()["error"], reply.text
    reply = api.post("/invoke/echo", json={"data": {"x": 1}})
    assert reply.status_code == 200, reply.text
    for body in ([], [{"data": {}}], 5, "x"):  # each started a run with no data
        reply = api.post("/invoke/echo", json=body)
        assert reply.status_code == 400 and '{"data": {...}}' in reply.json()["error"], reply.text


# --- 6. integers: exact within 64-bit signed, refused outside ------------------------------------


@pytest.mark.parametrize("sdk", [False, True], ids=["native", "sdk"])
def test_integers_outside_64_bits_are_refused_naming_the_field(api: httpx.Client, sdk: bool) -> None:
    message = refused(send(api, {"name": "h/int", "data": {"big": 2**64}}, sdk=sdk), "18446744073709551616", "64-bit signed")
    assert "big" in message and "string" in message
    refused(send(api, {"name": "h/int", "data": {"xs": [1, {"v": 2**63}]}}, sdk=sdk), "data.xs[1].v'", "9223372036854775808")
    refused(send(api, {"name": "h/int", "data": {"neg": -(2**63) - 1}}, sdk=sdk), "-9223372036854775809", "64-bit signed")
    edges = {"max": INT64_MAX, "min": -(2**63), "float": 1.8446744073709552e19, "digits": "18446744073709551616"}
    kept = ok_ids(send(api, {"name": "h/int", "data": edges}, sdk=sdk))[0]
    assert stored_body(api, kept)["data"] == edges
    assert event_names(api).count("h/int") == 1


def test_in_process_integers_outside_64_bits_are_refused(api: httpx.Client) -> None:
    with pytest.raises(stepline.EventError, match=r"'data.big' is 18446744073709551616, outside the 64-bit signed"):
        server_of(api).call(lambda engine: engine.send({"name": "h/int", "data": {"big": 2**64}}))


# --- the limits are the server's settings -----------------------------------------------------


def test_the_limits_follow_their_variables(cli_server: Any) -> None:  # noqa: F811
    env = {"STEPLINE_MAX_NAME_BYTES": "40", "STEPLINE_MAX_ID_BYTES": "10", "STEPLINE_MAX_USER_ID_BYTES": "5",
           "STEPLINE_MAX_JSON_DEPTH": "8"}
    server = cli_server(mode="start", app="tests.apps_hostile:app", env=env)
    client = httpx.Client(base_url=server.url, timeout=60, headers={"authorization": f"Bearer {API_TOKEN}"})

    def post(body: Any) -> httpx.Response:
        return client.post(f"/e/{EVENT_KEY}", json=body)

    refused(post({"name": "h/" + "n" * 39}), "41 bytes", "limit of 40 bytes (STEPLINE_MAX_NAME_BYTES)")
    refused(post({"name": "h/x", "id": "i" * 11}), "limit of 10 bytes (STEPLINE_MAX_ID_BYTES)")
    refused(post({"name": "h/x", "data": {"user_id": "u" * 6}}), "limit of 5 bytes (STEPLINE_MAX_USER_ID_BYTES)")
    refused(post({"name": "h/x", "data": json.loads(nested(9))}), "deeper than 8 levels (STEPLINE_MAX_JSON_DEPTH)")
    kept = ok_ids(post({"name": "h/" + "n" * 38, "id": "i" * 10, "data": {"user_id": "u" * 5, "deep": json.loads(nested(7))}}))[0]
    assert client.get(f"/api/v1/events/{kept}").json()["body"]["data"]["deep"] == json.loads(nested(7))
