"""Waits keyed by the value they need: an event reads and evaluates only the waits its
value can match, and resolves exactly what evaluating every wait would."""

from __future__ import annotations

import itertools
import threading

import cel
import pytest

import stepline
from stepline.engine import Engine
from stepline.store import ops_runs, wait_keys
from tests.helpers import (
    counting_statements,
    counting_vm_instructions,
    eventually,
    runs_for_event,
    wait_run,
)

# --- which expressions have a key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "path", "event_path", "literal"),
    [
        ("event.data.order_id == async.data.order_id", "data.order_id", "data.order_id", None),
        ("async.data.ref == event.data.id", "data.ref", "data.id", None),
        ("event.data.k == async.data.k && async.data.amount > 10", "data.k", "data.k", None),
        ("async.data.amount > 10 && (event.data.k == async.data.k)", "data.k", "data.k", None),
        ('async.data.signal == "approve \\"this\\""', "data.signal", None, 'approve "this"'),
        ('"ready" == async.data.state', "data.state", None, "ready"),
        ("async.data.n == 3", "data.n", None, 3.0),
        ('async.data.note == "a && b || c" && event.data.k == async.data.k', "data.note", None, "a && b || c"),
    ],
)
def test_an_equality_at_the_top_level_gives_a_key(expression: str, path: str, event_path: str | None, literal: object) -> None:
    key = wait_keys.key_of(expression)
    assert key is not None
    assert (key.path, key.event_path, key.literal) == (path, event_path, literal)


@pytest.mark.parametrize(
    "expression",
    [
        None,
        "async.data.amount > event.data.min",
        "event.data.k == async.data.k || async.data.any == true",  # the equality need not hold
        "event.data.k == async.data.k ? true : false",
        "!(event.data.k == async.data.k)",
        "event.data.a == event.data.b",
        "async.data.a == async.data.b",
        "async.data.k == 'single quoted'",  # not read: evaluated as before
        "size(async.data.items) == 2",
    ],
)
def test_other_expressions_have_no_key(expression: str | None) -> None:
    assert wait_keys.key_of(expression) is None


VALUES = [
    0, 1, -1, 1.0, -0.0, 0.5, 2**53, 2**53 + 1, float(2**53), 2**63 - 1, float(2**63 - 1), True, False, None, "", "1", "é",
    [], [1, 2], [1.0, 2], [2, 1], {}, {"a": 1, "b": [1, {"c": None}]}, {"b": [1.0, {"c": None}], "a": 1.0}, {"a": "1"},
    "x" * 300, "x" * 299 + "y",
]


def test_values_cel_calls_equal_share_a_code() -> None:
    """No miss: whenever the expression's equality holds, the lookup finds the wait."""
    program = cel.compile("event.data.k == async.data.k")
    for mine, theirs in itertools.product(VALUES, VALUES):
        if program.execute({"event": {"data": {"k": mine}}, "async": {"data": {"k": theirs}}}) is True:
            assert wait_keys.encode(mine) == wait_keys.encode(theirs), (mine, theirs)
    assert wait_keys.encode("x" * 300).startswith("sha256:")  # an indexed column stays narrow


def test_a_wait_on_a_field_its_own_event_lacks_has_a_key_no_value_has() -> None:
    for trigger in ({"name": "t", "data": {}}, {"name": "t", "data": None}, {"name": "t"}):
        assert wait_keys.wait_key("event.data.k == async.data.k", trigger) == ("data.k", wait_keys.NEVER)
    assert all(wait_keys.encode(value) != wait_keys.NEVER for value in VALUES)
    assert wait_keys.wait_key("event.data.k == async.data.k", {"name": "t", "data": {"k": 7}}) == ("data.k", "7.0")


@pytest.mark.parametrize(
    ("expression", "trigger_data", "stored"),
    [
        ("async.data.price <= event.data.target", {"target": 7}, ("max:data.price", 7.0)),
        ("async.data.price < event.data.target", {"target": 7.5}, ("max:data.price", 7.5)),
        ("event.data.floor < async.data.v", {"floor": -2}, ("min:data.v", -2.0)),  # the incoming side first
        ("async.data.v >= 10", {}, ("min:data.v", 10.0)),
        ("3.5 > async.data.v", {}, ("max:data.v", 3.5)),
        ("size(async.data.items) == 2 && async.data.v > event.data.n", {"n": 2**70}, ("min:data.v", float(2**70))),
        ("async.data.v > event.data.floor", {}, ("min:data.v", None)),  # the run lacks the field: no event matches
        ("async.data.v > event.data.floor", {"floor": "b"}, None),  # strings compare with strings: not keyed
        ("async.data.v > event.data.floor", {"floor": True}, None),
        ("async.data.k == event.data.k && async.data.v > 1", {"k": 1}, None),  # the equality keys it instead
        ("async.data.v > event.data.floor || true", {"floor": 1}, None),
        ("async.data.v != 3", {}, None),
        ("event.data.a < event.data.b", {"a": 1, "b": 2}, None),
    ],
)
def test_a_comparison_with_a_number_gives_a_range_key(expression: str, trigger_data: dict, stored: object) -> None:
    trigger = {"name": "t", "data": trigger_data}
    found = None if wait_keys.wait_key(expression, trigger) else wait_keys.wait_range_key(expression, trigger)
    assert found == stored


NUMBERS = [-(2**70), -1.5, -1, -0.0, 0, 0.5, 1, 1.0, 2, 2**53, 2**53 + 1, float(2**53), 2**63 - 1, 2**70, 1e300]
OTHERS = [None, True, False, "", "1", "b", [1], {"a": 1}]


@pytest.mark.parametrize(
    "expression",
    [
        "async.data.v > event.data.t", "async.data.v >= event.data.t", "async.data.v < event.data.t",
        "async.data.v <= event.data.t", "event.data.t < async.data.v", "event.data.t >= async.data.v",
    ],
)
def test_a_range_key_never_leaves_out_a_wait_its_expression_matches(expression: str) -> None:
    """Every pair of values the expression (as ingest evaluates it) calls a match is one the
    range scan reads: ints past a double's precision, mixed ints and doubles, signed zeros."""
    read = matched = 0
    for mine, theirs in itertools.product(NUMBERS + OTHERS, NUMBERS + OTHERS):
        trigger, incoming = {"data": {"t": mine}}, {"data": {"v": theirs}}
        key = wait_keys.wait_range_key(expression, trigger)
        is_match, _ = ops_runs.expressions.match_checked(expression, {"event": trigger, "async": incoming})
        if key is None:  # not keyed: evaluated by every event
            assert not isinstance(mine, (int, float)) or isinstance(mine, bool)
            continue
        range_path, stored = key
        lookup = wait_keys.range_lookup(range_path, incoming)
        scanned = lookup is not None and stored is not None and (
            stored <= lookup[1] if lookup[0] == "min" else stored >= lookup[1]
        )
        read += scanned
        matched += bool(is_match)
        if is_match:
            assert scanned, (expression, mine, theirs)
    assert matched > 50 and read < len(NUMBERS) ** 2  # the check had matches to miss, and the scan narrows


# --- on both backends -------------------------------------------------------------------------


def waiting_app() -> stepline.App:
    app = stepline.App("keys")

    @app.function(id="waiter", trigger=stepline.TriggerEvent("order/placed"))
    async def waiter(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("paid", event="order/paid", match="data.order", timeout="1h")
        return {"got": got.data if got else None}

    @app.function(id="guarded", trigger=stepline.TriggerEvent("order/held"))
    async def guarded(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event(
            "released", event="order/released", if_="event.data.order == async.data.order && 10 / async.data.d > 1", timeout="1h"
        )
        return {"got": got.data if got else None}

    @app.function(id="loose", trigger=stepline.TriggerEvent("order/watched"))
    async def loose(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("any", event="order/paid", if_="async.data.amount > event.data.over", timeout="1h")
        return {"got": got.data if got else None}

    @app.function(id="cancellable", trigger=stepline.TriggerEvent("order/shipping"),
                  cancel_on=[stepline.CancelOn(event="order/cancelled", match="data.order")])
    async def cancellable(ctx: stepline.Context) -> str:
        await ctx.step.sleep("wait", "1h")
        return "shipped"

    @app.function(id="brief", trigger=stepline.TriggerEvent("order/quick"))
    async def brief(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("paid", event="order/paid", match="data.order", timeout="300ms")
        return {"got": got.data if got else None}

    return app


def count_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs whose waits or cancel rules are evaluated from now on, one entry per evaluation."""
    evaluated: list[str] = []
    real = ops_runs.expressions.match_checked

    def counting(source: str | None, variables: dict) -> tuple[bool, object]:
        if "async" in variables:  # a wait's, not a trigger's
            evaluated.append(variables["event"].get("data", {}).get("order", "?"))
        return real(source, variables)  # type: ignore[return-value]

    monkeypatch.setattr(ops_runs.expressions, "match_checked", counting)
    return evaluated


async def start(engine: Engine, name: str, datas: list[dict], status: str) -> list[str]:
    started = await engine.send_many([{"name": name, "data": data} for data in datas])
    runs = [(await runs_for_event(engine, e))[0]["id"] for e in started]
    for run_id in runs:
        await wait_run(engine, run_id, status)
    return runs


async def test_an_event_evaluates_only_the_waits_its_key_can_match(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = await make_engine(waiting_app())
    orders = [f"o-{i}" for i in range(40)]
    started = await engine.send_many([{"name": "order/placed", "data": {"order": o}} for o in orders])
    runs = [(await runs_for_event(engine, e))[0]["id"] for e in started]
    for run_id in runs:
        await wait_run(engine, run_id, "waiting")
    evaluated: list[str] = []
    real = ops_runs.expressions.match_checked

    def counting(source: str | None, variables: dict) -> tuple[bool, object]:
        evaluated.append(variables["async"]["data"].get("order", "?"))
        return real(source, variables)  # type: ignore[return-value]

    monkeypatch.setattr(ops_runs.expressions, "match_checked", counting)
    await engine.send({"name": "order/paid", "data": {"order": "o-17", "amount": 5}})
    assert (await wait_run(engine, runs[17]))["output"] == {"got": {"order": "o-17", "amount": 5}}
    assert evaluated == ["o-17"]  # one candidate read, not forty
    evaluated.clear()
    await engine.send({"name": "order/paid", "data": {"order": "nobody", "amount": 5}})
    assert evaluated == []
    assert [(await engine.get_run(r))["status"] for r in runs].count("waiting") == len(runs) - 1


async def test_keyed_and_unkeyed_waits_of_one_name_both_resolve(make_engine) -> None:
    engine = await make_engine(waiting_app())
    keyed = (await runs_for_event(engine, await engine.send({"name": "order/placed", "data": {"order": 7}})))[0]["id"]
    loose = (await runs_for_event(engine, await engine.send({"name": "order/watched", "data": {"over": 100}})))[0]["id"]
    await wait_run(engine, keyed, "waiting")
    await wait_run(engine, loose, "waiting")
    await engine.send({"name": "order/paid", "data": {"order": 7.0, "amount": 500}})  # CEL: 7 == 7.0
    assert (await wait_run(engine, keyed))["output"] == {"got": {"order": 7.0, "amount": 500}}
    assert (await wait_run(engine, loose))["output"] == {"got": {"order": 7.0, "amount": 500}}


async def test_an_event_without_the_keyed_field_is_no_match_as_before(make_engine) -> None:
    engine = await make_engine(waiting_app())
    run_id = (await runs_for_event(engine, await engine.send({"name": "order/placed", "data": {"order": "a"}})))[0]["id"]
    await wait_run(engine, run_id, "waiting")
    unrelated = await engine.send({"name": "order/paid", "data": {"amount": 3}})
    assert (await engine.store.event_detail(unrelated))["skipped_functions"] == []
    await engine.send({"name": "order/paid", "data": {"order": "a"}})
    assert (await wait_run(engine, run_id))["output"] == {"got": {"order": "a"}}


async def test_the_rest_of_a_keyed_expression_still_decides_and_its_failure_is_told(make_engine) -> None:
    engine = await make_engine(waiting_app())
    run_id = (await runs_for_event(engine, await engine.send({"name": "order/held", "data": {"order": "h"}})))[0]["id"]
    await wait_run(engine, run_id, "waiting")
    failing = await engine.send({"name": "order/released", "data": {"order": "h", "d": 0}})  # 10 / 0
    (skip,) = (await engine.store.event_detail(failing))["skipped_functions"]
    assert skip["reason"] == "wait_expression_error" and skip["detail"]["run_id"] == run_id
    await engine.send({"name": "order/released", "data": {"order": "h", "d": 20}})  # 10 / 20 > 1 is false
    await engine.send({"name": "order/released", "data": {"order": "other", "d": 0}})  # another key: not evaluated
    assert (await engine.get_run(run_id))["status"] == "waiting"
    await engine.send({"name": "order/released", "data": {"order": "h", "d": 2}})
    assert (await wait_run(engine, run_id))["output"] == {"got": {"order": "h", "d": 2}}


async def test_cancel_on_with_match_cancels_only_its_own_run(make_engine) -> None:
    engine = await make_engine(waiting_app())
    ids = await engine.send_many([{"name": "order/shipping", "data": {"order": o}} for o in ("s1", "s2")])
    first, second = [(await runs_for_event(engine, e))[0]["id"] for e in ids]
    await wait_run(engine, first, "sleeping")
    await wait_run(engine, second, "sleeping")
    await engine.send({"name": "order/cancelled", "data": {"order": "s2"}})
    assert (await wait_run(engine, second))["status"] == "cancelled"
    assert (await engine.get_run(first))["status"] == "sleeping"  # decided in the same transaction as the other


# --- what a wait keeps of its run's event ------------------------------------------------------

TRIGGER = {
    "name": "doc/uploaded", "id": "e1", "ts": 1, "user": {"id": "u"},
    "data": {"doc": "d1", "n": 3, "tags": ["a", "b"], "meta": {"owner": "ann", "size": 10}, "items": list(range(50)),
             "list": [1, 2]},
}


@pytest.mark.parametrize(
    "expression",
    [
        "event.data.doc == async.data.doc",
        "event.data.doc == async.data.doc && async.data.approved == true",
        "async.data.n > event.data.n || event.data.meta.owner == async.data.owner",
        "event.data.tags.exists(t, t == async.data.tag)",
        "event.data.items.size() == async.data.count",
        "has(event.data.missing) || event.data.meta.size == async.data.size",
        "event.data.meta.owner == async.data.owner && event.data.meta == async.data.meta",
        "event.data.list.first == async.data.x",  # a field of a list: an error on the whole event too
        "event.user.id == async.user.id && event.name == 'doc/uploaded'",
        "event . data . doc == async.data.doc",
        "async.data.signal == \"event.data.doc\"",
        "async.data.x == 1",
    ],
)
def test_a_wait_evaluates_the_same_on_the_part_of_its_event_it_keeps(expression: str) -> None:
    view = wait_keys.trigger_view(expression, TRIGGER)
    assert view is not None
    assert "items" not in view.get("data", {}) or "items" in expression
    for incoming in ({"data": {"doc": "d1", "approved": True, "n": 1, "tag": "b", "count": 50, "size": 10,
                               "owner": "ann", "meta": {"owner": "ann", "size": 10}, "x": 1}, "user": {"id": "u"}},
                     {"data": {"doc": "d2", "approved": False, "n": 9, "tag": "z", "count": 1, "size": 1, "owner": "bob"}},
                     {"data": {}}):
        whole = ops_runs.expressions.match_checked(expression, {"event": TRIGGER, "async": incoming})
        part = ops_runs.expressions.match_checked(expression, {"event": view, "async": incoming})
        assert whole[0] == part[0] and (whole[1] is None) == (part[1] is None), (expression, incoming, whole, part)


@pytest.mark.parametrize("expression", ["event == async", "event['data'].doc == async.data.doc", "event.size() > 0"])
def test_a_wait_that_reads_its_event_whole_keeps_it_whole(expression: str) -> None:
    assert wait_keys.trigger_view(expression, TRIGGER) is None


async def test_waits_are_evaluated_on_what_they_read_of_a_large_event(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event key could start runs from events of a megabyte that wait on one shared key,
    then send small events of that key that match nothing: each was paid for by reading and
    parsing every waiting run's whole event."""
    engine = await make_engine(waiting_app())
    padding = ["x" * 1000] * 400  # 400 KB that the wait's expression never reads
    started = await engine.send_many([{"name": "order/held", "data": {"order": "shared", "padding": padding}}] * 3)
    runs = [(await runs_for_event(engine, e))[0]["id"] for e in started]
    for run_id in runs:
        await wait_run(engine, run_id, "waiting")
    seen: list[int] = []
    real = ops_runs.expressions.match_checked

    def measuring(source: str | None, variables: dict) -> tuple[bool, object]:
        seen.append(len(ops_runs.jsonutil.dumps(variables["event"])))
        return real(source, variables)  # type: ignore[return-value]

    monkeypatch.setattr(ops_runs.expressions, "match_checked", measuring)
    await engine.send({"name": "order/released", "data": {"order": "shared", "d": 20}})  # 10 / 20 > 1: no match
    assert len(seen) == 3 and max(seen) < 100, seen
    await engine.send({"name": "order/released", "data": {"order": "shared", "d": 2}})
    for run_id in runs:
        assert (await wait_run(engine, run_id))["output"] == {"got": {"order": "shared", "d": 2}}


# --- a field missing on either side: no event reads the wait ---------------------------------


async def test_an_event_without_the_keyed_field_reads_no_wait_keyed_on_it(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event key could make each event without the matched field evaluate every wait
    keyed on it (3,000 waiting runs: 200 such events held the writer 14 s)."""
    engine = await make_engine(waiting_app())
    waiting = await start(engine, "order/placed", [{"order": f"o-{i}"} for i in range(20)], "waiting")
    guarded = await start(engine, "order/held", [{"order": f"h-{i}"} for i in range(20)], "waiting")
    shipping = await start(engine, "order/shipping", [{"order": f"s-{i}"} for i in range(20)], "sleeping")
    loose = await start(engine, "order/watched", [{"over": 100}], "waiting")
    evaluated = count_evaluations(monkeypatch)
    await engine.send_many([
        {"name": "order/paid", "data": {"amount": 5}},  # match="data.order"
        {"name": "order/released", "data": {"d": 2}},  # if_="event.data.order == async.data.order && ..."
        {"name": "order/cancelled", "data": {"x": 1}},  # cancel_on match="data.order"
        {"name": "order/paid", "data": {"order": None, "amount": 5}},  # present, though null: read by key
    ])
    assert evaluated == []  # not sixty-one; the loose wait's amount > 100 is keyed too: 5 cannot pass
    await engine.send({"name": "order/paid", "data": {"amount": 500}})
    assert (await wait_run(engine, loose[0]))["output"] == {"got": {"amount": 500}}
    evaluated.clear()
    await engine.send_many([
        {"name": "order/paid", "data": {"order": "o-3"}},
        {"name": "order/released", "data": {"order": "h-4", "d": 2}},
        {"name": "order/cancelled", "data": {"order": "s-5"}},
    ])
    assert evaluated == ["o-3", "h-4", "s-5"]
    assert (await wait_run(engine, waiting[3]))["output"] == {"got": {"order": "o-3"}}
    assert (await wait_run(engine, guarded[4]))["output"] == {"got": {"order": "h-4", "d": 2}}
    assert (await wait_run(engine, shipping[5]))["status"] == "cancelled"
    still = [r for i, r in enumerate(waiting + guarded) if i not in (3, 24)]
    assert {(await engine.get_run(r))["status"] for r in still} == {"waiting"}


async def test_a_wait_whose_run_event_lacks_the_field_is_read_by_no_event(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs started by events without the matched field could never be resumed, yet each
    was evaluated by every event of the name (10,000: 0.17 s of the writer per event)."""
    engine = await make_engine(waiting_app())
    keyless = await start(engine, "order/placed", [{}] * 20, "waiting")
    guarded = await start(engine, "order/held", [{"other": 1}] * 20, "waiting")
    shipping = await start(engine, "order/shipping", [{}] * 20, "sleeping")
    (keyed,) = await start(engine, "order/placed", [{"order": "o-1"}], "waiting")
    evaluated = count_evaluations(monkeypatch)
    await engine.send_many([
        {"name": "order/released", "data": {"order": "x", "d": 2}},
        {"name": "order/cancelled", "data": {"order": "x"}},
        {"name": "order/paid", "data": {"order": "o-1"}},
    ])
    assert evaluated == ["o-1"]  # not twenty of each as well
    assert (await wait_run(engine, keyed))["output"] == {"got": {"order": "o-1"}}
    assert {(await engine.get_run(r))["status"] for r in keyless + guarded} == {"waiting"}
    assert {(await engine.get_run(r))["status"] for r in shipping} == {"sleeping"}
    await engine.cancel(keyless[0])
    await engine.cancel(shipping[0])
    assert (await wait_run(engine, keyless[0]))["status"] == "cancelled"
    assert (await wait_run(engine, shipping[0]))["status"] == "cancelled"


async def test_a_wait_no_event_can_match_still_times_out(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = await make_engine(waiting_app())
    evaluated = count_evaluations(monkeypatch)
    started = await engine.send_many([{"name": "order/quick", "data": {}}, {"name": "order/quick", "data": {"order": "q"}}])
    lacking, keyed = [(await runs_for_event(engine, e))[0]["id"] for e in started]
    await wait_run(engine, keyed, "waiting")
    await engine.send({"name": "order/paid", "data": {"order": "q"}})
    assert (await wait_run(engine, keyed))["output"] == {"got": {"order": "q"}}
    assert (await wait_run(engine, lacking))["output"] == {"got": None}
    assert evaluated == ["q"]


async def test_an_event_resuming_many_runs_records_them_in_one_write(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event's outcome lists every run it resumed, written once: written once per run,
    the list grew with each write and one event resuming N waits cost N² (20,000 waits:
    10 s on SQLite, minutes on PostgreSQL, every other write held meanwhile)."""
    engine = await make_engine(waiting_app())
    loose = await start(engine, "order/watched", [{"over": 0}] * 30, "waiting")
    writes: list[str] = []
    real = ops_runs.update_outcome_txn

    def counting(conn: object, event_id: str, change: object) -> None:
        writes.append(event_id)
        real(conn, event_id, change)  # type: ignore[arg-type]

    monkeypatch.setattr(ops_runs, "update_outcome_txn", counting)
    paid = await engine.send({"name": "order/paid", "data": {"amount": 1}})
    for run_id in loose:
        assert (await wait_run(engine, run_id))["output"] == {"got": {"amount": 1}}
    assert writes.count(paid) == 1
    detail = await engine.store.event_detail(paid)
    assert sorted(detail["resumed_runs"]) == sorted(loose)


async def test_an_event_resuming_many_runs_costs_a_few_statements_not_several_per_run(make_engine) -> None:
    """The waits one event answers are resolved a few statements per 512: one by one (4
    statements each, in the ingest's transaction), 10,000 waiting runs held PostgreSQL's
    writer 3.7 s. Each run still resumes with the event."""
    engine = await make_engine(waiting_app())
    loose = await start(engine, "order/watched", [{"over": 0}] * 60, "waiting")
    with counting_statements() as statements:
        await engine.send({"name": "order/paid", "data": {"amount": 1}})
    (counted,) = statements
    assert counted < 30, f"{counted} statements to resume {len(loose)} runs"
    for run_id in loose:
        assert (await wait_run(engine, run_id))["output"] == {"got": {"amount": 1}}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_event_resolving_many_waits_is_committed_off_the_event_loop(
    make_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small ingest commits on the caller's thread (the event loop) when SQLite's writer is
    idle; one whose waits and cancel rules are many goes to the writer thread instead, or the
    server would answer no one while it resolves them (20,000 waits: 0.4 s; 100,000 cancel
    rules: 6 s). A few still resolve inline."""
    first = await make_engine(waiting_app())
    loose = await start(first, "order/watched", [{"over": 0}] * 100, "waiting")  # over INLINE_MAX_WAITS
    (held,) = await start(first, "order/held", [{"order": "h"}], "waiting")
    await first.stop(grace=1.0)
    engine = await make_engine(waiting_app(), run_worker=False)  # nothing else writes: small ingests commit inline

    async def writer_idle() -> bool | None:  # what its start wrote is committed, and the writer let go
        store = engine.store.db
        return True if store._queued == 0 and not store._commit_lock.locked() else None

    await eventually(writer_idle, what="the writer to be idle")
    threads: list[str] = []  # one per run made due
    real = ops_runs.make_due_many_txn

    def noting(conn: object, run_ids: list[str], now: int) -> None:
        threads.extend(threading.current_thread().name for _ in run_ids)
        real(conn, run_ids, now)  # type: ignore[arg-type]

    monkeypatch.setattr(ops_runs, "make_due_many_txn", noting)
    here = threading.current_thread().name
    await engine.send({"name": "order/released", "data": {"order": "h", "d": 2}})  # one wait
    assert threads == [here]
    threads.clear()
    await eventually(writer_idle, what="the writer to be idle")
    await engine.send({"name": "order/paid", "data": {"amount": 1}})
    assert len(threads) == len(loose) and here not in threads, threads[:3]
    assert (await engine.get_run(held))["status"] == "queued"
    assert {(await engine.get_run(r))["status"] for r in loose} == {"queued"}


def bidding_app() -> stepline.App:
    app = stepline.App("bids")

    @app.function(id="bid", trigger=stepline.TriggerEvent("bid/placed"))
    async def bid(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("price", event="price/quoted", if_="async.data.price <= event.data.order", timeout="1h")
        return {"got": got.data if got else None}

    @app.function(id="alarm", trigger=stepline.TriggerEvent("alarm/set"))
    async def alarm(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("hot", event="price/quoted", if_="event.data.order < async.data.temp", timeout="1h")
        return {"got": got.data if got else None}

    return app


async def test_an_event_evaluates_only_the_waits_its_number_can_satisfy(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits that compare a number are found by a range scan: an event evaluates those its
    value can satisfy, not every wait of its name (1,000 waiting runs and one POST of
    1,000 such events held the writer 32 s)."""
    engine = await make_engine(bidding_app())
    bids = await start(engine, "bid/placed", [{"order": i} for i in range(30)], "waiting")
    (alarm,) = await start(engine, "alarm/set", [{"order": 10}], "waiting")
    (blind,) = await start(engine, "bid/placed", [{"other": 1}], "waiting")  # no order: nothing can match it
    keys = await engine.store.db.read(
        lambda c: c.all("SELECT match_path, range_path, range_value FROM waits ORDER BY range_value")
    )
    assert {k["match_path"] for k in keys} == {None}  # the previous release evaluates them all, as before
    assert {(k["range_path"], k["range_value"]) for k in keys} >= {("max:data.price", 29.0), ("min:data.temp", 10.0)}
    evaluated = count_evaluations(monkeypatch)
    await engine.send({"name": "price/quoted", "data": {"price": 27.5}})
    assert sorted(evaluated) == [28, 29]  # not thirty-two
    for i in (28, 29):
        assert (await wait_run(engine, bids[i]))["output"] == {"got": {"price": 27.5}}
    evaluated.clear()
    await engine.send_many([
        {"name": "price/quoted", "data": {"price": 100}},
        {"name": "price/quoted", "data": {"price": "cheap"}},  # a string compares with no number
        {"name": "price/quoted", "data": {"temp": 9}},
        {"name": "price/quoted", "data": {}},
    ])
    assert evaluated == []
    await engine.send({"name": "price/quoted", "data": {"temp": 10}})  # read (10 <= 10); 10 < 10 is false
    assert evaluated == [10] and (await engine.get_run(alarm))["status"] == "waiting"
    evaluated.clear()
    await engine.send({"name": "price/quoted", "data": {"price": 3, "temp": 10.5}})
    assert sorted(evaluated) == sorted([*range(3, 28), 10])
    assert (await wait_run(engine, alarm))["output"] == {"got": {"price": 3, "temp": 10.5}}
    for i in range(3, 28):
        assert (await wait_run(engine, bids[i]))["output"] == {"got": {"price": 3, "temp": 10.5}}
    assert {(await engine.get_run(r))["status"] for r in [*bids[:3], blind]} == {"waiting"}


# --- alternatives: a top-level || of equalities, and `in` ------------------------------------


@pytest.mark.parametrize(
    ("expression", "trigger_data", "stored"),
    [
        ("async.data.id == event.data.a || async.data.id == event.data.b", {"a": 1, "b": "z"},
         [("data.id", "1.0"), ("data.id", '"z"')]),
        ('async.data.s in ["paid", "refunded"]', {}, [("data.s", '"paid"'), ("data.s", '"refunded"')]),
        ("async.data.s in event.data.l", {"l": ["p", 2, "p"]}, [("data.s", '"p"'), ("data.s", "2.0")]),
        ("async.data.s in event.data.l", {}, [("data.s", wait_keys.NEVER)]),  # no list: no event matches
        ("async.data.s in event.data.l", {"l": []}, [("data.s", wait_keys.NEVER)]),
        ("async.data.s in event.data.l || async.data.t == 1", {}, [("data.t", "1.0")]),
        ("(async.data.a == 1 && async.data.q > 2) || async.data.b in [true, null]", {},
         [("data.a", "1.0"), ("data.b", "true"), ("data.b", "null")]),
        ('async.data.x in ["a,b", "c"]', {}, [("data.x", '"a,b"'), ("data.x", '"c"')]),
        ("async.data.k == event.data.k", {"k": 7}, [("data.k", "7.0")]),  # one equality: one row, as before
        ("async.data.a == 1 || async.data.b > 2", {}, None),  # a branch with no equality: every event evaluates it
        ("async.data.s in event.data.m", {"m": {"a": 1}}, None),  # a map's keys: evaluated as before
        ("async.data.s in ['single']", {}, None),
        ('async.data.s in ["a"] + ["b"]', {}, None),
        ("async.data.s != 'x'", {}, None),
        ('async.data.s.startsWith("x")', {}, None),
        ("async.data.a == 1 ? true : async.data.b == 2", {}, None),
        ("async.data.s in event.data.l", {"l": list(range(wait_keys.MAX_ALTERNATIVES + 1))}, None),
    ],
)
def test_alternatives_give_a_key_each(expression: str, trigger_data: dict, stored: object) -> None:
    assert wait_keys.wait_key_set(expression, {"name": "t", "data": trigger_data}) == stored


ALT_VALUES = [0, 1.0, 2**53 + 1, True, None, "a", [1], {"a": 1.0}]
ALT_MISSING = object()


def _found(keys: list[tuple[str, str]], incoming: dict) -> bool:
    """Whether an event reads a wait stored under ``keys`` (as ``_candidate_waits`` looks)."""
    for path, code in keys:
        value = wait_keys.value_at(incoming, path)
        if value is wait_keys.MISSING:
            continue
        mine = wait_keys.encode(value)
        if mine is None or mine == code:  # a value without a code reads every wait of its path
            return True
    return False


@pytest.mark.parametrize(
    "expression",
    [
        "async.data.v == event.data.a || async.data.w == event.data.b",
        "async.data.v == event.data.a || event.data.b == async.data.v",
        "(async.data.v == event.data.a && async.data.w != event.data.b) || (async.data.w == event.data.b && 1 / 0 == 1)",
        "async.data.v in event.data.l",
        "async.data.v in event.data.l || async.data.w == event.data.a",
        'async.data.v in [1, "a", true, null, 0] || async.data.w in event.data.l',
        "async.data.v in event.data.l && async.data.w == event.data.a",
    ],
)
def test_alternatives_never_leave_out_a_wait_the_expression_matches(expression: str) -> None:
    """Every pair of a run's event and an incoming one that the engine's own CEL evaluation
    calls a match is one whose lookup reads the wait: missing fields, errors in the other
    branch, mixed ints and doubles, lists in lists."""
    lists: list[object] = [ALT_MISSING, [], [0, "a"], [1, None, True], [[1.0], {"a": 1}], [2**53 + 1], "a", {"a": 1}]
    singles: list[object] = [ALT_MISSING, *ALT_VALUES]
    checked = matched = keyed = 0
    for a, b, items in itertools.product(singles, singles, lists):
        data = {k: v for k, v in (("a", a), ("b", b), ("l", items)) if v is not ALT_MISSING}
        trigger = {"name": "t", "data": data}
        keys = wait_keys.wait_key_set(expression, trigger)
        keyed += keys is not None
        for v, w in itertools.product(singles, singles):
            incoming = {"name": "u", "data": {k: x for k, x in (("v", v), ("w", w)) if x is not ALT_MISSING}}
            is_match, _ = ops_runs.expressions.match_checked(expression, {"event": trigger, "async": incoming})
            checked += 1
            if is_match:
                matched += 1
                assert keys is None or _found(keys, incoming), (expression, trigger, incoming, keys)
    assert matched > 20 and keyed > len(lists) * len(singles)  # the check had matches to miss, and keys to test


def alternatives_app() -> stepline.App:
    app = stepline.App("alts")

    @app.function(id="either", trigger=stepline.TriggerEvent("pay/started"),
                  cancel_on=[stepline.CancelOn(event="pay/void", if_="async.data.ref == event.data.a || async.data.ref == event.data.b")])
    async def either(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event(
            "done", event="pay/done", if_="async.data.ref == event.data.a || async.data.ref == event.data.b", timeout="1h"
        )
        return {"got": got.data if got else None}

    @app.function(id="two-fields", trigger=stepline.TriggerEvent("pay/paired"))
    async def two_fields(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event(
            "done", event="pay/done", if_="async.data.ref == event.data.k || async.data.alt == event.data.k", timeout="1h"
        )
        return {"got": got.data if got else None}

    @app.function(id="member", trigger=stepline.TriggerEvent("pay/listed"))
    async def member(ctx: stepline.Context) -> dict:
        got = await ctx.step.wait_for_event("done", event="pay/done", if_="async.data.ref in event.data.refs", timeout="1h")
        return {"got": got.data if got else None}

    return app


async def test_an_event_evaluates_only_the_waits_one_of_its_alternatives_can_match(
    make_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waits on ``a || b`` and on ``in`` are found by the key of each alternative: an event
    evaluates the waits its value can match, each once, not every wait of its name."""
    engine = await make_engine(alternatives_app())
    either = await start(engine, "pay/started", [{"a": f"a{i}", "b": f"b{i}"} for i in range(20)], "waiting")
    member = await start(engine, "pay/listed", [{"refs": [f"m{i}", f"b{i}", "shared"]} for i in range(20)], "waiting")
    evaluated: list[dict] = []
    real = ops_runs.expressions.match_checked

    def counting(source: str | None, variables: dict) -> tuple[bool, object]:
        if "async" in variables:
            evaluated.append(variables["event"]["data"])
        return real(source, variables)  # type: ignore[return-value]

    monkeypatch.setattr(ops_runs.expressions, "match_checked", counting)
    await engine.send({"name": "pay/done", "data": {"ref": "b3"}})  # run 3 of each, by its second alternative
    assert (await wait_run(engine, either[3]))["output"] == {"got": {"ref": "b3"}}
    assert (await wait_run(engine, member[3]))["output"] == {"got": {"ref": "b3"}}
    assert len(evaluated) == 2  # not forty
    rows = await engine.store.db.read(lambda c: c.all("SELECT run_id FROM waits WHERE step_key IS NOT NULL"))
    assert {r["run_id"] for r in rows}.isdisjoint({either[3], member[3]})  # every alternative's row went with its wait
    evaluated.clear()
    await engine.send({"name": "pay/done", "data": {"ref": "nobody"}})
    await engine.send({"name": "pay/void", "data": {"ref": "m5"}})  # no run of "either" has m5
    assert evaluated == []
    await engine.send({"name": "pay/void", "data": {"ref": "a7"}})
    assert (await wait_run(engine, either[7]))["status"] == "cancelled"
    assert len(evaluated) == 1
    evaluated.clear()
    await engine.send({"name": "pay/done", "data": {"ref": "shared"}})  # every member run lists it
    for run_id in member:
        if run_id != member[3]:
            assert (await wait_run(engine, run_id))["output"] == {"got": {"ref": "shared"}}
    assert len(evaluated) == 19
    statuses = [(await engine.get_run(r))["status"] for r in either]
    assert statuses.count("waiting") == 18
    (paired,) = await start(engine, "pay/paired", [{"k": "p1"}], "waiting")
    evaluated.clear()
    await engine.send({"name": "pay/done", "data": {"ref": "p1", "alt": "p1"}})  # found by both alternatives
    assert (await wait_run(engine, paired))["output"] == {"got": {"ref": "p1", "alt": "p1"}}
    assert evaluated == [{"k": "p1"}]  # evaluated once


async def _ingest_vm_steps(engine: Engine, event: dict, tries: int = 5) -> int:
    """SQLite's VM instructions (in hundreds) that the ingest of ``event`` runs on the writer's
    connection, the fewest over ``tries`` (an idle worker's poll may share a try): what the
    lookups read, whatever the machine's speed."""
    conn = engine.store.db._writer_conn  # type: ignore[attr-defined]
    counts = []
    for _ in range(tries):
        with counting_vm_instructions(conn, 100) as steps:
            await engine.send(event)
        counts.append(steps[0] // 100)
    return min(counts)


async def test_an_ingest_reads_none_of_the_keyed_waits_to_learn_there_are_no_unkeyed_ones(make_sqlite_engine) -> None:
    """Whether an event name has waits that no key narrows is asked once a transaction. SQLite
    answered it through waits_by_range, where every wait keyed by a match has no range key
    either, so it read all of a name's keyed waits (10,000: 0.9 ms a transaction, an event
    that matched nothing cost 1.7 times as much as with 10 waiting). The partial index of
    unkeyed waits (migration 0023) answers it at once."""
    engine = await make_sqlite_engine(waiting_app())
    nobody = {"name": "order/paid", "data": {"order": "nobody", "amount": 1}}
    await start(engine, "order/placed", [{"order": f"o-{i}"} for i in range(10)], "waiting")
    few = await _ingest_vm_steps(engine, nobody)
    await start(engine, "order/placed", [{"order": f"p-{i}"} for i in range(2000)], "waiting")
    many = await _ingest_vm_steps(engine, nobody)
    assert many <= 2 * few + 20, f"{many}00 VM instructions with 2,010 keyed waits against {few}00 with 10"
    loose = await start(engine, "order/watched", [{"over": 100}], "waiting")  # an unkeyed wait: found, and it resolves
    await engine.send({"name": "order/paid", "data": {"order": "nobody", "amount": 500}})
    assert (await wait_run(engine, loose[0]))["output"] == {"got": {"order": "nobody", "amount": 500}}
