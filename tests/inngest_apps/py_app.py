"""A FastAPI app written only against the official Python SDK (no Stepline import).

Every function records what it did in ``Recorder`` so tests can count executions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections import Counter
from typing import Any

import fastapi
import inngest
import inngest.fast_api

APP_ID = "py-app"


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.seen: dict[str, Any] = {}
        self.gates: dict[str, threading.Event] = {}

    def hit(self, name: str, value: Any = None) -> int:
        with self._lock:
            self.counts[name] += 1
            if value is not None:
                self.seen[name] = value
            return self.counts[name]

    def append(self, name: str, value: Any) -> None:
        with self._lock:
            self.seen.setdefault(name, []).append(value)

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(name, threading.Event())

    async def wait_gate(self, name: str) -> None:
        """Block a step until the test opens gate ``name`` (``POST /gate/<name>``)."""
        await asyncio.get_running_loop().run_in_executor(None, self.gate(name).wait, 60)


def build(rec: Recorder) -> fastapi.FastAPI:
    client = inngest.Inngest(app_id=APP_ID)  # mode and server URLs come from INNGEST_* env vars

    @client.create_function(fn_id="steps", trigger=inngest.TriggerEvent(event="py/steps"))
    async def steps(ctx: inngest.Context) -> dict[str, Any]:
        async def first() -> str:
            rec.hit("steps.first")
            return str(ctx.event.data["name"]).upper()

        async def second(name: str) -> str:
            rec.hit("steps.second")
            return f"hello {name}"

        name = await ctx.step.run("first", first)
        greeting = await ctx.step.run("second", second, name)
        return {"greeting": greeting, "attempt": ctx.attempt}

    @client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="py/sleep"))
    async def sleeper(ctx: inngest.Context) -> str:
        before = await ctx.step.run("before", lambda: _hit(rec, "sleep.before"))
        await ctx.step.sleep("nap", dt.timedelta(seconds=1))
        after = await ctx.step.run("after", lambda: _hit(rec, "sleep.after"))
        return f"{before}-{after}"

    @client.create_function(fn_id="waiter", trigger=inngest.TriggerEvent(event="py/wait"))
    async def waiter(ctx: inngest.Context) -> Any:
        got = await ctx.step.wait_for_event(
            "approval", event="py/approve", if_exp="async.data.id == event.data.id", timeout=dt.timedelta(seconds=2)
        )
        return None if got is None else {"approved_by": got.data["by"], "name": got.name}

    @client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="py/child"))
    async def child(ctx: inngest.Context) -> dict[str, Any]:
        doubled = await ctx.step.run("double", lambda: int(ctx.event.data["n"]) * 2)
        return {"doubled": doubled, "event": ctx.event.name}

    @client.create_function(fn_id="parent", trigger=inngest.TriggerEvent(event="py/parent"))
    async def parent(ctx: inngest.Context) -> Any:
        result = await ctx.step.invoke("call-child", function=child, data={"n": ctx.event.data["n"]})
        return {"child": result}

    @client.create_function(fn_id="sender", trigger=inngest.TriggerEvent(event="py/send"))
    async def sender(ctx: inngest.Context) -> list[str]:
        return await ctx.step.send_event("emit", inngest.Event(name="py/sent", data={"k": ctx.event.data["k"]}))

    @client.create_function(fn_id="on-sent", trigger=inngest.TriggerEvent(event="py/sent"))
    async def on_sent(ctx: inngest.Context) -> Any:
        rec.hit("on-sent", ctx.event.data)
        return ctx.event.data

    @client.create_function(fn_id="parallel", trigger=inngest.TriggerEvent(event="py/parallel"))
    async def parallel(ctx: inngest.Context) -> list[int]:
        def part(n: int) -> Any:
            async def run() -> int:
                rec.hit(f"parallel.{n}")
                return n * 10

            return lambda: ctx.step.run(f"part-{n}", run)

        results = await ctx.group.parallel(tuple(part(n) for n in (1, 2, 3)))
        total = await ctx.step.run("sum", lambda: sum(results))
        return [*results, total]

    @client.create_function(fn_id="repeated", trigger=inngest.TriggerEvent(event="py/repeated"))
    async def repeated(ctx: inngest.Context) -> dict[str, Any]:
        """One id used again in a loop and in a parallel block: the SDK keys the repeats "item:1", ..."""
        await ctx.step.sleep_until("past", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))

        def counted(name: str, value: Any) -> Any:
            def run() -> Any:
                rec.hit(name)
                return value

            return run

        serial = [await ctx.step.run("item", counted(f"repeated.item.{i}", i * 10)) for i in range(3)]
        parts = tuple((lambda i=i: ctx.step.run("part", counted(f"repeated.part.{i}", f"p{i}"))) for i in range(3))
        return {"serial": serial, "parallel": list(await ctx.group.parallel(parts))}

    @client.create_function(fn_id="flaky", trigger=inngest.TriggerEvent(event="py/flaky"), retries=3)
    async def flaky(ctx: inngest.Context) -> str:
        async def attempt() -> str:
            n = rec.hit("flaky")
            if n < 3:
                raise ValueError(f"transient failure {n}")
            return f"ok after {n}"

        return await ctx.step.run("unstable", attempt)

    async def nonretry_failed(ctx: inngest.Context) -> None:
        rec.hit("nonretry.on_failure", {"error": ctx.event.data.get("error"), "name": ctx.event.name})

    @client.create_function(
        fn_id="nonretry", trigger=inngest.TriggerEvent(event="py/nonretry"), retries=3, on_failure=nonretry_failed
    )
    async def nonretry(ctx: inngest.Context) -> None:
        async def boom() -> None:
            rec.hit("nonretry")
            raise inngest.NonRetriableError("permanent failure")

        await ctx.step.run("boom", boom)

    @client.create_function(fn_id="retry-after", trigger=inngest.TriggerEvent(event="py/retry-after"), retries=2)
    async def retry_after(ctx: inngest.Context) -> str:
        async def slow_api() -> str:
            n = rec.hit("retry-after")
            rec.seen.setdefault("retry-after.times", []).append(dt.datetime.now(dt.UTC).timestamp())
            if n == 1:
                raise inngest.RetryAfterError("rate limited", dt.timedelta(seconds=2))
            return "done"

        return await ctx.step.run("call", slow_api)

    @client.create_function(
        fn_id="cancellable",
        trigger=inngest.TriggerEvent(event="py/long"),
        cancel=[inngest.Cancel(event="py/stop", if_exp="event.data.id == async.data.id")],
    )
    async def cancellable(ctx: inngest.Context) -> str:
        await ctx.step.run("start", lambda: _hit(rec, "cancellable.start"))
        await ctx.step.sleep("long-nap", dt.timedelta(seconds=30))
        await ctx.step.run("end", lambda: _hit(rec, "cancellable.end"))
        return "not cancelled"

    @client.create_function(fn_id="fn-retry", trigger=inngest.TriggerEvent(event="py/fn-retry"), retries=2)
    async def fn_retry(ctx: inngest.Context) -> dict[str, Any]:
        before = await ctx.step.run("before", lambda: _hit(rec, "fn-retry.before"))
        if ctx.attempt == 0:
            raise ValueError("flaky function body")
        return {"attempt": ctx.attempt, "before": before}

    @client.create_function(fn_id="recover", trigger=inngest.TriggerEvent(event="py/recover"), retries=0)
    async def recover(ctx: inngest.Context) -> str:
        async def fails() -> None:
            rec.hit("recover.fails")
            raise ValueError("no luck")

        try:
            await ctx.step.run("fails", fails)
        except inngest.StepError as err:
            text = f"recovered from {err.name}: {err.message}"
            return await ctx.step.run("fallback", lambda: text)
        return "unreachable"

    @client.create_function(fn_id="collide", trigger=inngest.TriggerEvent(event="py/collide"), retries=0)
    async def collide(ctx: inngest.Context) -> str:
        # The SDK numbers a repeated id "a:1": a step of that very id then collides with it.
        await ctx.step.run("a", lambda: 1)
        await ctx.step.run("a", lambda: 2)
        await ctx.step.run("a:1", lambda: 3)
        return "unreachable"

    @client.create_function(fn_id="nul-name", trigger=inngest.TriggerEvent(event="py/nul-name"), retries=0)
    async def nul_name(ctx: inngest.Context) -> int:
        # The SDK sends the id hashed, and as the step's name as written: NUL and all.
        def counted() -> int:
            rec.hit("nul-name.step")
            return 1

        return await ctx.step.run("id\x00x", counted)

    @client.create_function(fn_id="half-pair", trigger=inngest.TriggerEvent(event="py/half-pair"), retries=0)
    async def half_pair(ctx: inngest.Context) -> str:
        # Half a UTF-16 pair, as text cut in the middle of an emoji by a careless slice.
        return await ctx.step.run("cut", lambda: "x\ud83dy")

    @client.create_function(fn_id="bad-wait", trigger=inngest.TriggerEvent(event="py/bad-wait"), retries=0)
    async def bad_wait(ctx: inngest.Context) -> None:
        await ctx.step.wait_for_event("approval", event="py/approved", if_exp="async.data.id ==", timeout=dt.timedelta(minutes=1))

    @client.create_function(fn_id="failing-child", trigger=inngest.TriggerEvent(event="py/failing-child"), retries=0)
    async def failing_child(ctx: inngest.Context) -> None:
        raise inngest.NonRetriableError("child says no")

    @client.create_function(fn_id="careful-parent", trigger=inngest.TriggerEvent(event="py/careful-parent"))
    async def careful_parent(ctx: inngest.Context) -> dict[str, Any]:
        try:
            await ctx.step.invoke("call", function=failing_child, data={})
        except inngest.StepError as err:
            return {"child_error": err.message}
        return {"child_error": None}

    @client.create_function(
        fn_id="batched",
        trigger=inngest.TriggerEvent(event="py/batched"),
        batch_events=inngest.Batch(max_size=3, timeout=dt.timedelta(seconds=5)),
    )
    async def batched(ctx: inngest.Context) -> list[int]:
        return [int(e.data["n"]) for e in ctx.events]

    @client.create_function(
        fn_id="once-per-order",
        trigger=inngest.TriggerEvent(event="py/order"),
        idempotency="event.data.order",
    )
    async def once_per_order(ctx: inngest.Context) -> str:
        return str(ctx.event.data["order"])

    @client.create_function(
        fn_id="rate-limited",
        trigger=inngest.TriggerEvent(event="py/search"),
        rate_limit=inngest.RateLimit(limit=2, period=dt.timedelta(minutes=1), key="event.data.user"),
    )
    async def rate_limited(ctx: inngest.Context) -> str:
        return str(ctx.event.data["q"])

    @client.create_function(fn_id="mixed", trigger=inngest.TriggerEvent(event="py/mixed"))
    async def mixed(ctx: inngest.Context) -> Any:
        # A native Stepline function of app "native", called the way SDK apps call each other.
        return await ctx.step.invoke_by_id("call-native", app_id="native", function_id="shout", data={"text": "hi"})

    @client.create_function(
        fn_id="vip-queue",
        trigger=inngest.TriggerEvent(event="py/vip"),
        concurrency=[inngest.Concurrency(limit=1)],
        priority=inngest.Priority(run="event.data.vip == true ? 120 : 0"),
    )
    async def vip_queue(ctx: inngest.Context) -> str:
        async def work() -> str:
            name = str(ctx.event.data["name"])
            rec.append("vip.order", name)
            if name == "first":
                await rec.wait_gate("vip")
            return name

        return await ctx.step.run("work", work)

    @client.create_function(
        fn_id="batch-if",
        trigger=inngest.TriggerEvent(event="py/batch-if"),
        batch_events=inngest.Batch(max_size=3, timeout=dt.timedelta(seconds=60), if_exp="event.data.batch == true"),
    )
    async def batch_if(ctx: inngest.Context) -> list[int]:
        return [int(e.data["n"]) for e in ctx.events]

    @client.create_function(fn_id="two-naps", trigger=inngest.TriggerEvent(event="py/naps"))
    async def two_naps(ctx: inngest.Context) -> str:
        await ctx.group.parallel((
            lambda: ctx.step.sleep("short-nap", dt.timedelta(seconds=1)),
            lambda: ctx.step.sleep("long-nap", dt.timedelta(seconds=2)),
        ))
        return "awake"

    @client.create_function(fn_id="two-waits", trigger=inngest.TriggerEvent(event="py/waits"))
    async def two_waits(ctx: inngest.Context) -> list[Any]:
        found = await ctx.group.parallel((
            lambda: ctx.step.wait_for_event("wait-a", event="py/a", if_exp="async.data.id == event.data.id", timeout=dt.timedelta(minutes=1)),
            lambda: ctx.step.wait_for_event("wait-b", event="py/b", if_exp="async.data.id == event.data.id", timeout=dt.timedelta(minutes=1)),
        ))
        return [None if e is None else e.data["n"] for e in found]

    @client.create_function(fn_id="chains", trigger=inngest.TriggerEvent(event="py/chains"))
    async def chains(ctx: inngest.Context) -> list[str]:
        # ParallelMode.RACE: each chain advances on its own (Inngest's early continuation).
        async def quick_two(first: str) -> str:
            rec.hit("chains.quick-2")
            return first + "q2"

        async def quick_chain() -> str:
            first = await ctx.step.run("quick-1", lambda: "q1")
            return await ctx.step.run("quick-2", quick_two, first)

        async def slow() -> str:
            await rec.wait_gate("chains")
            return "slow"

        results = await ctx.group.parallel(
            (quick_chain, lambda: ctx.step.run("slow", slow)), parallel_mode=inngest.ParallelMode.RACE
        )
        return list(results)

    @client.create_function(
        fn_id="on-finished",
        trigger=inngest.TriggerEvent(event="inngest/function.finished", expression="event.data.function_id == 'py-app-steps'"),
    )
    async def on_finished(ctx: inngest.Context) -> None:
        data = ctx.event.data
        rec.append("finished", {"run_id": data.get("run_id"), "result": data.get("result"),
                                "status": (data.get("_inngest") or {}).get("status")})

    @client.create_function(
        fn_id="on-cancelled",
        trigger=inngest.TriggerEvent(event="inngest/function.cancelled", expression="event.data.function_id == 'py-app-cancellable'"),
    )
    async def on_cancelled(ctx: inngest.Context) -> None:
        rec.append("cancelled", {"run_id": ctx.event.data.get("run_id")})

    async def failing_failure_failed(ctx: inngest.Context) -> None:
        if rec.hit("failing-failure.onFailure") == 1:
            raise RuntimeError("the handler failed once")

    @client.create_function(
        fn_id="failing-failure", trigger=inngest.TriggerEvent(event="py/failing-failure"), retries=0,
        on_failure=failing_failure_failed,
    )
    async def failing_failure(ctx: inngest.Context) -> None:
        raise inngest.NonRetriableError("fails at once")

    app = fastapi.FastAPI()
    inngest.fast_api.serve(
        app,
        client,
        [
            steps, sleeper, waiter, child, parent, sender, on_sent, parallel, repeated, flaky, nonretry, retry_after, cancellable,
            fn_retry, recover, collide, nul_name, half_pair, bad_wait, failing_child, careful_parent, batched, once_per_order, rate_limited, mixed, vip_queue,
            batch_if, two_naps, two_waits, chains, on_finished, on_cancelled, failing_failure,
        ],
    )

    @app.get("/counts")
    def counts() -> dict[str, Any]:
        return {"counts": dict(rec.counts), "seen": rec.seen}

    @app.post("/gate/{name}", status_code=204)
    def open_gate(name: str) -> None:
        rec.gate(name).set()

    return app


def _hit(rec: Recorder, name: str) -> int:
    return rec.hit(name)
