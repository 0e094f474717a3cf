"""The pure parts of SDK compatibility, checked against the official Python SDK's own helpers."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from inngest._internal import transforms

import stepline
from stepline import errors
from stepline import event as event_mod
from stepline.inngest import config, driver, durations, events, protocol, signing

KEY = "signkey-test-" + "0f1e" * 16


def test_canonical_json_matches_the_sdk() -> None:
    value = {"b": [1, 2.0, 0.5, "é", None, True], "a": {"z": 1, "é": 2, "A": {}}, "ts": 1700000000000}
    ours = signing.canonical_bytes(value)
    assert ours == transforms.canonicalize(orjson.dumps(value))


def test_signature_and_hashed_key_match_the_sdk() -> None:
    body = signing.canonical_bytes({"event": {"name": "a/b"}, "steps": {}})
    header = signing.sign(body, KEY, at=1700000000)
    assert signing.verify(body, header, [KEY], now=1700000100)
    assert not signing.verify(body, header, [KEY], now=1700000000 + 301)  # replayed too late
    assert not signing.verify(body + b" ", header, [KEY], now=1700000000)
    assert signing.hashed_key(KEY) == transforms.hash_signing_key(KEY)
    assert signing.bearer_matches(f"Bearer {transforms.hash_signing_key(KEY)}", [KEY])
    assert signing.bearer_matches(f"Bearer signkey-test-{transforms.hash_signing_key(KEY)}", [KEY])  # TS re-adds the prefix
    assert not signing.bearer_matches("Bearer undefined", [KEY])


def test_go_durations_and_times() -> None:
    assert durations.parse_duration("1h30m", field="x") == 5400
    assert durations.parse_duration("1.5s", field="x") == 1.5
    assert durations.parse_duration("2d", field="x") == 172800
    assert durations.parse_duration("250ms", field="x") == 0.25
    with pytest.raises(errors.ConfigError, match="not a duration"):
        durations.parse_duration("soon", field="x")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert durations.until("2026-01-01T00:00:05.000Z", field="x", now=now) == now + dt.timedelta(seconds=5)
    assert durations.until("5s", field="x", now=now) == now + dt.timedelta(seconds=5)
    assert durations.until("2020-01-01T00:00:00Z", field="x", now=now) == now  # the past means now
    for far in ("367d", "99999999999999999999d", 1e300):  # an SDK's sleep past a year: the step fails, naming the bound
        with pytest.raises(errors.ConfigError, match="at most 366 days"):
            durations.until(far, field="sleep", now=now)


def test_retry_after_header() -> None:
    assert protocol.parse_retry_after("30") == 30
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)).isoformat()
    assert 8 < (protocol.parse_retry_after(soon) or 0) <= 10
    assert protocol.parse_retry_after("0") == 1  # clamped to at least a second


def test_sdk_events_are_made_acceptable_and_the_servers_names_reserved() -> None:
    assert events.from_sdk({"name": "a/b", "data": {"x": 1}, "id": "", "ts": 0, "user": {}, "meta": {}}) == {
        "name": "a/b",
        "data": {"x": 1},
    }
    # data._inngest is the server's own, dropped from every sender's events (SDK or not).
    assert event_mod.without_server_data([{"name": "a/b", "data": {"x": 1, "_inngest": {}}}, [1]]) == [
        {"name": "a/b", "data": {"x": 1}}, [1],
    ]
    for name in ("inngest/function.failed", "stepline/function.failed"):
        with pytest.raises(errors.EventError, match="reserved"):
            event_mod.refuse_reserved_names([{"name": "a/b"}, {"name": name}])
    out = events.to_sdk({"name": "stepline/function.invoked", "data": {}, "id": "01", "ts": 5.0})
    assert out == {"name": "inngest/function.invoked", "data": {}, "id": "01", "ts": 5, "user": {}}


CAPTURED_PY = {  # a registration captured from inngest-py, every option set (Inngest takes batchEvents only apart)
    "batchEvents": {"maxSize": 10, "timeout": "5s", "key": "event.data.k"},
    "cancel": [{"event": "app/cancel", "if": "event.data.id == async.data.id", "timeout": "1h"}],
    "concurrency": [{"key": "event.data.user", "limit": 2, "scope": "fn"}],
    "debounce": {"key": "event.data.k", "period": "10s", "timeout": "1m"},
    "id": "my-app-full",
    "idempotency": "event.data.id",
    "name": "Full Config",
    "priority": {"run": "event.data.prio"},
    "rateLimit": {"key": "event.data.k", "limit": 5, "period": "1m"},
    "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 2},
                       "runtime": {"type": "http", "url": "http://localhost:8000/api/inngest?fnId=my-app-full&stepId=step"}}},
    "throttle": {"key": "event.data.k", "limit": 3, "period": "30s", "burst": 2},
    "timeouts": {"start": "30s", "finish": "5m"},
    "singleton": {"key": "event.data.k", "mode": "skip"},
    "triggers": [{"event": "app/test", "expression": "event.data.x > 1"}, {"cron": "TZ=Europe/Paris 0 * * * *"}],
}


def test_every_config_option_maps_onto_flow_control() -> None:
    no_batch = {k: v for k, v in CAPTURED_PY.items() if k != "batchEvents"}
    stored = config.to_stored(no_batch, app="my-app", meta={}, notes=[])
    assert stored["triggers"] == [
        {"event": "app/test", "expression": "event.data.x > 1"},
        {"cron": "0 * * * *", "timezone": "Europe/Paris"},
    ]
    event_only = {**no_batch, "triggers": CAPTURED_PY["triggers"][:1]}
    stored = config.to_stored(event_only, app="my-app", meta={}, notes=[])
    assert stored["retries"] == 2
    assert stored["concurrency"] == [{"limit": 2, "key": "event.data.user", "scope": "fn"}]
    assert stored["throttle"] == {"limit": 3, "period": 30.0, "burst": 2, "key": "event.data.k"}  # limit + burst at once, as Inngest
    assert stored["rate_limit"] is None  # idempotency overrides rateLimit, as in Inngest
    alone = config.to_stored({k: v for k, v in event_only.items() if k != "idempotency"}, app="my-app", meta={}, notes=[])
    assert alone["rate_limit"] == {"limit": 5, "period": 60.0, "key": "event.data.k"}
    assert stored["debounce"] == {"period": 10.0, "key": "event.data.k", "timeout": 60.0}
    assert stored["priority"] == {"run": "event.data.prio"}
    batched = {k: v for k, v in CAPTURED_PY.items() if k not in ("cancel", "debounce", "priority", "singleton")}
    batched["triggers"] = CAPTURED_PY["triggers"][:1]  # batching needs event triggers
    batch = config.to_stored(batched, app="my-app", meta={}, notes=[])["batch_events"]
    assert batch["max_size"] == 10 and batch["timeout"] == 5.0 and batch["key"] == "event.data.k"
    assert stored["cancel_on"][0]["event"] == "app/cancel" and stored["cancel_on"][0]["timeout"] == 3600
    assert stored["idempotency"] == "event.data.id"
    assert stored["timeouts"] == {"start": 30.0, "finish": 300.0}
    assert stored["singleton"] == {"key": "event.data.k", "mode": "skip"}
    assert stored["inngest"]["url"].endswith("fnId=my-app-full&stepId=step")


def test_failure_function_listens_to_the_engine_failure_event() -> None:
    raw = {
        "id": "app-f-failure",
        "triggers": [{"event": "inngest/function.failed", "expression": "event.data.function_id == 'app-f'"}],
        "steps": {"step": {"runtime": {"url": "http://127.0.0.1:1/api/inngest?fnId=app-f-failure&stepId=step"}, "retries": {"attempts": 0}}},
    }
    built = config.build(raw, app="app", notes=[])
    assert built.triggers[0].event == "stepline/function.failed"
    assert built.failure_handler_for == "app-f" and built.retries == 0


def test_wildcards_over_inngest_names_cover_the_engines_names() -> None:
    assert events.trigger_name("inngest/function.*") == "stepline/function.*"
    assert events.trigger_name("inngest/*") == "stepline/function.*"
    assert events.trigger_name("app/*") == "app/*"
    assert events.trigger_name("inngest/function.failed") == "stepline/function.failed"


def test_bad_config_names_the_field() -> None:
    raw = {**_fn(), "throttle": {"limit": 3, "period": "often"}}
    with pytest.raises(errors.ConfigError, match=r"throttle\.period"):
        config.build(raw, app="my-app", notes=[])


def _fn(**options: object) -> dict[str, object]:
    url = "http://127.0.0.1:1/api/inngest?fnId=app-f&stepId=step"
    return {"id": "app-f", "triggers": [{"event": "app/e"}], "steps": {"step": {"runtime": {"url": url}}}, **options}


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (5, [{"limit": 5, "key": None, "scope": "fn"}]),  # TS: a number
        ({"limit": 1}, [{"limit": 1, "key": None, "scope": "fn"}]),  # TS: an object, the usual form
        ({"limit": 2, "key": "event.data.user", "scope": "account"}, [{"limit": 2, "key": "event.data.user", "scope": "account"}]),
        ({"limit": 2, "key": "event.data.user", "scope": "ENV"}, [{"limit": 2, "key": "event.data.user", "scope": "env"}]),
        ([{"limit": 3.0, "key": "event.data.u", "scope": "fn"}, {"limit": 9}], [  # PY: always a list
            {"limit": 3, "key": "event.data.u", "scope": "fn"}, {"limit": 9, "key": None, "scope": "fn"}]),
        ({"step": [{"limit": 4}]}, [{"limit": 4, "key": None, "scope": "fn"}]),  # the {fn, step} form, step limits
        ({"limit": 0}, []),  # 0 means no limit, as in Inngest
    ],
)
def test_concurrency_in_every_shape_the_sdks_send(sent: object, stored: object) -> None:
    assert config.to_stored(_fn(concurrency=sent), app="app", meta={}, notes=[])["concurrency"] == stored


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": {"fn": [{"limit": 2}]}}, r"concurrency\.fn: limits on runs in progress"),
        ({"concurrency": [{"limit": 1}, {"limit": 2}, {"limit": 3}]}, r"concurrency: at most two limits"),
        ({"concurrency": {"limit": 2.5}}, r"concurrency\.limit: expected a whole number"),
        ({"concurrency": {"limit": 2, "scope": "env"}}, r"concurrency\.key: scope 'env' needs a key"),
        ({"concurrency": {"limit": 2, "keys": "event.data.u"}}, r"concurrency: Stepline does not support 'keys'"),
        ({"concurrency": "5"}, r"concurrency: expected a number, an object"),
        ({"throttle": {"limit": 1, "period": "1s", "per": "user"}}, r"throttle: Stepline does not support 'per'"),
        ({"rateLimit": {"limit": 1, "period": "2d"}}, r"rateLimit\.period: at most 24h"),
        ({"batchEvents": {"maxSize": 5}}, r"batchEvents\.timeout: is required"),
        ({"batchEvents": {"maxSize": 5, "timeout": "1d"}}, r"batchEvents\.timeout: '1d' counts days or weeks.*'24h'"),
        ({"batchEvents": {"maxSize": 5, "timeout": "5s", "if": "event.data.x =="}}, r"batchEvents: Batch\.if_"),
        ({"singleton": {"mode": "replace"}}, r"singleton\.mode: expected 'skip' or 'cancel'"),
        ({"triggers": [{"cron": "* * * * *", "jitter": "10s"}]}, r"triggers\[0\]\.jitter: cron jitter is not supported"),
        ({"triggers": [{"cron": "TZ=Europe/Paris 0 */5 * * * *"}]}, r"triggers\[0\]\.cron: '0 \*/5 \* \* \* \*' has 6 fields; Inngest takes five"),
        ({"optimizeParallelism": False}, r"optimizeParallelism: not supported by Stepline"),
        ({"concurrency": {"limit": 2, "scope": "account"}}, r"concurrency\.key: scope 'account' needs a key"),
        ({"batchEvents": {"maxSize": 1, "timeout": "5s"}}, r"batchEvents\.maxSize: expected a whole number >= 2"),
        ({"batchEvents": {"maxSize": 5, "timeout": "5s"}, "debounce": {"period": "2s"}}, r"batchEvents: cannot be combined with debounce"),
        ({"batchEvents": {"maxSize": 5, "timeout": "5s"}, "cancel": [{"event": "a/b"}], "priority": {"run": "1"}},
         r"batchEvents: cannot be combined with cancel or priority\.run"),
        ({"batchEvents": {"maxSize": 5, "timeout": "5s"}, "singleton": {"mode": "skip"}}, r"batchEvents: cannot be combined with singleton"),
        ({"debounce": {"period": "500ms"}}, r"debounce\.period: between 1s and 7d"),
        ({"debounce": {"period": "8d"}}, r"debounce\.period: between 1s and 7d"),
        ({"cancel": [{"event": f"a/{i}"} for i in range(6)]}, r"cancel: at most 5 rules"),
    ],
)
def test_config_stepline_cannot_honour_is_refused_at_sync_naming_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(errors.ConfigError, match=r"function 'app-f': " + message):
        config.to_stored(_fn(**options), app="app", meta={}, notes=[])


def test_native_functions_meet_the_same_combination_rules() -> None:
    app = stepline.App("combo")
    with pytest.raises(errors.ConfigError, match="batch_events cannot be combined with debounce"):
        @app.function(id="f", trigger=stepline.TriggerEvent("a/b"), batch_events=stepline.Batch(max_size=3, timeout="1s"),
                      debounce=stepline.Debounce(period="1s"))
        async def f(ctx: stepline.Context) -> None: ...
    with pytest.raises(errors.ConfigError, match="cancel_on: at most 5 rules"):
        @app.function(id="g", trigger=stepline.TriggerEvent("a/b"), cancel_on=[stepline.CancelOn(f"a/{i}") for i in range(6)])
        async def g(ctx: stepline.Context) -> None: ...


def test_batch_if_is_kept() -> None:
    stored = config.to_stored(_fn(batchEvents={"maxSize": 3, "timeout": "60s", "if": "event.data.batch == true"}), app="app", meta={}, notes=[])
    assert stored["batch_events"] == {"max_size": 3, "timeout": 60.0, "key": None, "if": "event.data.batch == true"}


@pytest.mark.parametrize(
    ("op", "shown"),
    [
        ({"id": "h1", "displayName": "fetch", "userland": {"id": "fetch", "index": None}}, "fetch"),  # PY, first use
        ({"id": "h2", "displayName": "fetch", "userland": {"id": "fetch", "index": 2}}, "fetch:2"),  # PY, a repeat
        ({"id": "h3", "displayName": "Fetch page", "userland": {"id": "fetch", "index": 1}}, "Fetch page"),  # TS name given
        ({"id": "h4", "name": "2026-01-01T00:00:00Z"}, "2026-01-01T00:00:00Z"),  # nothing better
    ],
)
def test_steps_are_named_as_people_know_them(op: dict[str, object], shown: str) -> None:
    assert driver.display_name(op) == shown


def test_cron_tick_shown_as_inngest_sends_it() -> None:
    """``cron`` as declared (TZ= included), the tick as RFC 3339, and the event's id the
    scheduled time; a schedule declared in two zones cannot be told apart by its tick and
    keeps its stored form."""
    crons = events.declared_crons([{"event": "a/b"}, {"cron": "TZ=Europe/Paris 0 3 * * *"}, {"cron": "0 * * * *"},
                                   {"cron": "TZ=Asia/Tokyo 0 * * * *"}])
    assert crons == {"0 3 * * *": "TZ=Europe/Paris 0 3 * * *"}
    tick = {"name": "stepline/scheduled.timer", "data": {"cron": "0 3 * * *", "tick": 1_796_608_800_000}, "id": "x", "ts": 1}
    sent = events.to_sdk(tick, crons)
    assert sent["data"] == {"cron": "TZ=Europe/Paris 0 3 * * *", "tick": 1_796_608_800_000,
                            "scheduledAt": "2026-12-07T02:00:00Z", "fireAt": "2026-12-07T02:00:00Z"}
    assert sent["id"] == "2026-12-07T02:00:00Z"  # as Inngest names a tick: its scheduled time
    assert events.to_sdk({**tick, "data": {"cron": "0 * * * *", "tick": 0}}, crons)["data"]["cron"] == "0 * * * *"


def test_inngests_own_cel_functions() -> None:
    """Inngest's additions to CEL, with its lenient results on odd input (no error)."""
    from stepline import cel_extras, expressions

    variables = {"event": {"data": {"email": "Ada@Example.com", "at": "2024-01-01T00:00:00Z", "ms": 1_704_067_200_000,
                                    "blob": "eyJhIjogMX0=", "list": "[1]"}}}
    for expression in ("lowercase(event.data.email) == 'ada@example.com'", "uppercase('x') == 'X'",
                       "json_parse(b64decode(event.data.blob)).a == 1", "size(json_parse(event.data.list)) == 0",
                       "date(event.data.ms) == date(event.data.at)", "date(event.data.at) < now_minus('1d')",
                       "now_plus('1h') > now()", "b64decode('not base64!') == ''"):
        assert expressions.matches(expression, variables), expression
    assert cel_extras.date(12345) is None and cel_extras.date("garbage") is None and cel_extras.now_plus("soon") is None
    assert expressions.key("lowercase(event.data.email)", variables) == "ada@example.com"


def test_whole_numbers_meet_doubles_as_on_inngest() -> None:
    """Inngest reads event numbers as doubles: arithmetic with a double works on ``100`` too,
    while what works on ints stays as it was."""
    from stepline import expressions

    variables = {"event": {"data": {"total": 100, "n": 3, "items": [{"qty": 2}], "ok": True}}}
    for expression in ("event.data.total * 1.1 > 100.0", "event.data.items[0].qty * 0.5 == 1.0",
                       "event.data.n / 2 == 1", "event.data.ok && event.data.total + 0.5 == 100.5"):
        assert expressions.matches(expression, variables), expression
    assert not expressions.matches("event.data.total * 1.1 > 200.0", variables)
    assert expressions.evaluate("event.data.n * 1.5", variables) == 4.5
