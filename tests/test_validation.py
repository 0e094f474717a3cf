"""Bad declarations fail at import with errors that name the field; limits are enforced."""

from __future__ import annotations

import types

import pytest

import stepline
from stepline import cel_extras, expressions
from stepline import event as event_mod
from tests.helpers import send_and_wait


def test_invalid_cel_is_rejected_when_declared() -> None:
    app = stepline.App("t")
    with pytest.raises(stepline.ExpressionError, match="TriggerEvent.if_"):
        app.function(id="f", trigger=stepline.TriggerEvent("t/x", if_="event.data.x =="))


@pytest.mark.parametrize(
    ("field", "expression", "said"),
    [
        ("TriggerEvent.if_", 'event.data.name.startWith("a")', "unknown function 'startWith' (did you mean 'startsWith'?)"),
        ("TriggerEvent.if_", "sizee(event.data.items) > 0", "unknown function 'sizee' (did you mean 'size'?)"),
        ("Throttle.key", "lowerCase(event.data.email)", "unknown function 'lowerCase' (did you mean 'lowercase'?)"),
        ("TriggerEvent.if_", "math.greatest(1, 2) == 2", "unknown function 'greatest'; the functions known are b64decode, "),
    ],
)
def test_a_cel_function_evaluation_does_not_know_is_refused_when_declared(field: str, expression: str, said: str) -> None:
    """Accepted, it would fail on every event (no match, an empty key) with nothing said at declaration."""
    app = stepline.App("t")
    with pytest.raises(stepline.ExpressionError) as raised:
        if field == "Throttle.key":
            app.function(id="f", trigger=stepline.TriggerEvent("t/x"),
                         throttle=stepline.Throttle(limit=1, period="1s", key=expression))
        else:
            app.function(id="f", trigger=stepline.TriggerEvent("t/x", if_=expression))
    assert str(raised.value).startswith(f"{field}: invalid CEL expression {expression!r}: {said}")


def test_every_function_declarations_accept_is_one_evaluation_knows() -> None:
    """The list of functions a declaration accepts is the library's own plus Inngest's: each
    passes the check and evaluates without failing."""
    stamp = 'timestamp("2024-02-03T04:05:06Z")'
    native = {
        "size": "size([1]) == 1", "contains": "'ab'.contains('a')", "startsWith": "'ab'.startsWith('a')",
        "endsWith": "'ab'.endsWith('b')", "matches": "'ab'.matches('^a')", "string": "string(1) == '1'",
        "bytes": "bytes('a') == b'a'", "int": "int('2') == 2", "uint": "uint(2) == 2u", "double": "double(2) == 2.0",
        "dyn": "dyn(1) == 1", "type": "type(1) == int", "duration": "duration('1s') < duration('2s')",
        "timestamp": f"{stamp} > timestamp('2020-01-01T00:00:00Z')", "getFullYear": f"{stamp}.getFullYear() == 2024",
        "getMonth": f"{stamp}.getMonth() == 1", "getDayOfYear": f"{stamp}.getDayOfYear() == 33",
        "getDayOfMonth": f"{stamp}.getDayOfMonth() == 2", "getDate": f"{stamp}.getDate() == 3",
        "getDayOfWeek": f"{stamp}.getDayOfWeek() == 6", "getHours": f"{stamp}.getHours() == 4",
        "getMinutes": f"{stamp}.getMinutes() == 5", "getSeconds": f"{stamp}.getSeconds() == 6",
        "getMilliseconds": f"{stamp}.getMilliseconds() == 0", "of": "optional.of(1).hasValue()",
        "none": "!optional.none().hasValue()", "ofNonZeroValue": "!optional.ofNonZeroValue(0).hasValue()",
        "value": "optional.of(1).value() == 1", "hasValue": "optional.of(1).hasValue()",
        "or": "optional.none().or(optional.of(2)).value() == 2", "orValue": "optional.none().orValue(3) == 3",
    }
    assert set(native) == expressions.NATIVE_FUNCTIONS
    inngest = {name: f"{name}({'' if name == 'now' else repr('1h')}) != null" for name in cel_extras.NAMES}
    for name, expression in {**native, **inngest}.items():
        assert expressions.check(expression, field="test") == expression
        value, failure = expressions.evaluate_checked(expression, {})
        assert failure is None and value is not None, (name, failure)
        if name in native:
            assert value is True, (name, expression)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: stepline.Throttle(limit=0, period="1m"), "Throttle.limit"),
        (lambda: stepline.Throttle(limit=5, period="1 fortnight"), "Throttle.period"),
        (lambda: stepline.Concurrency(limit=3, scope="world"), "Concurrency.scope"),
        (lambda: stepline.TriggerCron("every tuesday"), "TriggerCron.cron"),
        (lambda: stepline.TriggerCron("* * * * *", timezone="Mars/Olympus"), "TriggerCron.timezone"),
        (lambda: stepline.CancelOn("x", match="data.a", if_="true"), "CancelOn"),
        (lambda: stepline.Debounce(period="0s"), "Debounce.period"),
        (lambda: stepline.Batch(max_size=10, timeout="-1s"), "Batch.timeout"),
        (lambda: stepline.Singleton(mode="maybe"), "Singleton.mode"),
    ],
)
def test_config_objects_name_the_bad_field(make, field: str) -> None:
    with pytest.raises(stepline.ConfigError, match=field):
        make()


def test_function_declaration_errors_name_the_function_and_field() -> None:
    app = stepline.App("t")
    with pytest.raises(stepline.ConfigError, match="retries"):
        app.function(id="f", trigger=stepline.TriggerEvent("t/x"), retries=-1)
    with pytest.raises(stepline.ConfigError, match="function id"):
        app.function(id="has spaces", trigger=stepline.TriggerEvent("t/x"))
    with pytest.raises(stepline.ConfigError, match="function id"):  # '$' also matched before a final line break
        app.function(id="f\n", trigger=stepline.TriggerEvent("t/x"))
    with pytest.raises(stepline.ConfigError, match="Budget.name"):
        stepline.Budget(limit_usd=1, period="1d", name="b\n")
    with pytest.raises(stepline.ConfigError, match=r"f: name 'f\\u202e' contains a bidirectional formatting character"):
        app.function(id="f", name="f\u202e", trigger=stepline.TriggerEvent("t/x"))
    with pytest.raises(stepline.ConfigError, match=r"f: app id 't\\x1b' contains a control character"):
        stepline.App("t\x1b").function(id="f", trigger=stepline.TriggerEvent("t/x"))
    assert app.function(id="f2", name="Résumé 日本 🙂", trigger=stepline.TriggerEvent("t/x"))
    with pytest.raises(stepline.ConfigError, match="throttle"):
        app.function(id="f", trigger=stepline.TriggerEvent("t/x"), throttle={"limit": 5})  # type: ignore[arg-type]
    with pytest.raises(stepline.ConfigError, match="concurrency: at most two"):
        app.function(id="f", trigger=stepline.TriggerEvent("t/x"), concurrency=[stepline.Concurrency(1)] * 3)

    @app.function(id="dup", trigger=stepline.TriggerEvent("t/x"))
    async def one(ctx: stepline.Context) -> None: ...

    with pytest.raises(stepline.ConfigError, match="declared twice"):
        app.function(id="dup", trigger=stepline.TriggerEvent("t/x"))(one.handler)


def test_events_are_validated_with_clear_messages() -> None:
    with pytest.raises(stepline.EventError, match="'name' is required"):
        event_mod.validate({"data": {}})
    with pytest.raises(stepline.EventError, match="'data' must be a JSON object"):
        event_mod.validate({"name": "x", "data": [1]})
    with pytest.raises(stepline.EventError, match="unknown field"):
        event_mod.validate({"name": "x", "payload": {}})
    with pytest.raises(stepline.EventError, match="over the event size limit of 1000 bytes.*STEPLINE_MAX_EVENT_BYTES"):
        event_mod.validate({"name": "x", "data": {"blob": "a" * 2000}}, max_bytes=1000)


async def test_over_size_step_output_fails_the_step_naming_the_limit(make_engine) -> None:
    app = stepline.App("t")

    @app.function(id="big", trigger=stepline.TriggerEvent("t/big"), retries=3)
    async def big(ctx: stepline.Context) -> None:
        await ctx.step.run("blob", lambda: "x" * 5000)

    engine = await make_engine(app, max_step_output_bytes=4096)
    run = await send_and_wait(engine, {"name": "t/big"})
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert step["attempts"] == 1
    assert "over the step output limit of 4096 bytes" in step["error"]["message"]
    assert "STEPLINE_MAX_STEP_OUTPUT_BYTES" in step["error"]["message"]


async def test_a_step_sending_more_events_than_a_request_may_carry_fails_naming_the_limit(make_engine) -> None:
    """One send_event step commits its events together, holding the writer meanwhile: it
    takes no more than one HTTP request may carry, and sends nothing when over."""
    app = stepline.App("t")

    @app.function(id="fan", trigger=stepline.TriggerEvent("t/fan"), retries=3)
    async def fan(ctx: stepline.Context) -> None:
        await ctx.step.send_event("few", [{"name": "t/item", "data": {"i": i}} for i in range(3)])
        await ctx.step.send_event("many", [{"name": "t/item", "data": {"i": i}} for i in range(4)])

    engine = await make_engine(app, max_events_per_request=3)
    run = await send_and_wait(engine, {"name": "t/fan"})
    assert run["status"] == "failed" and run["error"]["name"] == "LimitError"
    assert "step 'many' sends 4 events, over the limit of 3 a step" in run["error"]["message"]
    assert "STEPLINE_MAX_EVENTS_PER_REQUEST" in run["error"]["message"]
    assert [s["id"] for s in run["steps"]] == ["few"]
    assert len(await engine.store.list_events(name="t/item")) == 3


async def test_over_size_return_value_fails_the_run_naming_the_limit(make_engine) -> None:
    """A return value over the output limit was stored whole (5 MiB where steps stop at 4),
    then read with the run by every API call and dashboard view. It now fails the run, once,
    naming the limit and the fix; the steps before it stay saved."""
    app = stepline.App("t")
    attempts = 0

    @app.function(id="big", trigger=stepline.TriggerEvent("t/big"), retries=3)
    async def big(ctx: stepline.Context) -> str:
        nonlocal attempts
        attempts += 1
        part = await ctx.step.run("part", lambda: "x" * 3000)
        return part * 2

    engine = await make_engine(app, max_step_output_bytes=4096)
    run = await send_and_wait(engine, {"name": "t/big"})
    assert (run["status"], attempts, run["output"]) == ("failed", 1, None)
    assert "function 'big' returned 6002 bytes, over the output limit of 4096 bytes" in run["error"]["message"]
    assert "STEPLINE_MAX_STEP_OUTPUT_BYTES" in run["error"]["message"]
    assert [(st["id"], st["status"]) for st in run["steps"]] == [("part", "completed")]


async def test_app_not_running_cannot_send() -> None:
    app = stepline.App("idle")
    with pytest.raises(stepline.SteplineError, match="not running"):
        await app.send({"name": "x"})


def test_public_api_matches_all() -> None:
    # Submodules become attributes of the package once anything imports them: not public names.
    exported = {name for name, value in vars(stepline).items() if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert set(stepline.__all__) == exported | {"__version__"}


async def test_event_limits_given_in_code_apply_as_the_variables_do(make_engine) -> None:
    engine = await make_engine(stepline.App("limits-in-code"), max_name_bytes=10)
    with pytest.raises(stepline.EventError, match="STEPLINE_MAX_NAME_BYTES"):
        await engine.send({"name": "a/very-long-name", "data": {}})
    await engine.send({"name": "a/short", "data": {}})  # within the limit
