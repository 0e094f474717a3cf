"""The handler behind every SDK function: drive the app's serve URL step by step.

Each opcode the SDK reports maps onto the native step API, keyed by the SDK's
hashed step id, so the run's journal *is* the memoized state sent back:

- ``StepRun`` / ``Step``: ``record_step(id, lambda: data)`` saves what the app computed;
- ``StepPlanned``: ``record_step(id, call the app for that step)``, so native step
  retries (backoff, ``Retry-After``, ``StepError``) apply to it;
- ``StepError`` / ``StepFailed``: the same step, raising the app's error (retriable,
  or final); a final failure becomes an ``{"error"}`` memo the SDK raises in user code;
- ``Sleep`` / ``WaitForEvent`` / ``InvokeFunction``: ``sleep_until``, ``wait_for_event``,
  ``invoke`` (the run is suspended and resumes with the memo).

Several ops in one reply are a parallel block. Its steps run concurrently; the app is
asked what comes next once all of them are done (Inngest's coalesced fan-in), or as
soon as one is done when the app asked for early continuation (an op with
``parallelMode: "race"``, or request version 1, TS 3's default): then the function goes
on after ``Promise.race`` while the other branches still run, and their steps are
committed when they finish, before the run ends. Sleeps, waits and invokes reported
beside other work suspend the run only once nothing else is left to do, and all
together; one still pending from an earlier pass (re-reported by the SDK) holds the
run only when the function has nothing else to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from stepline import context, errors, expressions, jsonutil
from stepline.engine.signals import Suspend
from stepline.function import InngestMeta
from stepline.inngest import durations, events, gateway, memos, protocol
from stepline.store.records import JournalRow, StepState, StepStatus


class Runtime(Protocol):
    """What an execution needs of the SDK apps' runtime (``runtime.InngestRuntime``), which
    imports this module: the app's serve URL, early waits, and the function ids it knows."""

    @property
    def http(self) -> httpx.AsyncClient: ...

    async def call(self, meta: InngestMeta, step_id: str, body: dict[str, Any], *, run_id: str) -> protocol.Reply: ...

    def watch_prepared_wait(self, run_id: str, key: str) -> None: ...

    async def step_row(self, run_id: str, key: str) -> StepState | None: ...

    async def resolve_function_id(self, slug: str) -> str: ...

log = logging.getLogger("stepline.inngest")

LAZY_OPS = {"DeferAdd", "DeferAbort"}  # TS 4's experimental defer(): refused (UnsupportedStep), never dropped
WAIT_OPS = {"WaitForEvent", "WaitForSignal"}
SUSPENDING_OPS = {"Sleep", "InvokeFunction", *WAIT_OPS}
_PENDING = ("sleeping", "waiting", "invoking")  # journal statuses of a suspension not yet resolved
MAX_EMPTY_REPLIES = 3


class UnsupportedStep(errors.NonRetriableError):
    """The app asked for an op Stepline does not carry out: the run fails, naming it,
    rather than go on as if it had been done."""


def refuse_lazy_ops(ops: list[dict[str, Any]], run_id: str) -> None:
    """``defer()`` (TS 4, experimental) sends ``DeferAdd`` / ``DeferAbort`` beside other ops
    and awaits no answer: dropped, the deferred run would silently never start."""
    lazy = [op for op in ops if op.get("op") in LAZY_OPS]
    if lazy:
        named = ", ".join(f"{op.get('op')} (defer {display_name(op)!r})" for op in lazy[:5])
        raise UnsupportedStep(
            f"Stepline does not support defer() (createDefer, the TypeScript SDK's experimental deferred runs): "
            f"run {run_id} asked for {named}, and the deferred run would never start. Start that work with "
            "step.sendEvent (an event that triggers the function) or step.invoke instead"
        )


def display_name(op: dict[str, Any]) -> str:
    """What people read for a step: the user's name or id (repeats as ``id:n``, as native keys)."""
    raw = op.get("userland")
    userland: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = str(op.get("displayName") or userland.get("id") or op.get("name") or op.get("id"))
    index = userland.get("index")
    repeated = isinstance(index, int) and not isinstance(index, bool) and index > 0 and name == userland.get("id")
    return f"{name}:{index}" if repeated else name  # a name the user gave is shown as given


class SDKExecution:
    """One execution (until the run ends or suspends) of an SDK function's run: calls to
    the app's serve URL, each reply's steps run through the engine's ``context.RunDriver``."""

    def __init__(self, runtime: Runtime, meta: InngestMeta, ctx: context.Context) -> None:
        self.rt = runtime
        self.meta = meta
        self.ctx = ctx
        self.step = ctx.step.driver
        self.memos: dict[str, Any] = {}
        self.stack: list[str] = []
        self.attempts: dict[str, int] = {}
        self.errors: dict[str, Any] = {}  # the app's own error per failed step, sent back as reported
        self.prepared: set[str] = set()  # waits registered ahead of the steps beside them
        self.running: dict[str, asyncio.Task[None]] = {}  # ops being carried out, by id
        self.early: set[str] = set()  # running ops whose end asks the app at once what comes next
        self.parked: dict[str, dict[str, Any]] = {}  # sleeps, waits, invokes reported, not yet suspended on
        self.pending: set[str] = set()  # suspensions of an earlier pass not yet resolved
        self.version = -1
        bodies = [e.to_dict() for e in (ctx.events or [ctx.event])]
        crons = events.declared_crons((meta.get("raw") or {}).get("triggers"))
        self.events = [events.to_sdk(b, crons) for b in bodies]

    # --- requests --------------------------------------------------------------------

    def _body(self, step_id: str, *, die: bool, attempt: int) -> dict[str, Any]:
        return {
            "event": self.events[0],
            "events": self.events,
            "steps": {k: self.memos[k] for k in self.stack},
            "ctx": {
                "run_id": self.ctx.run_id,
                "attempt": attempt,
                "max_attempts": int(self.meta.get("retries", 4)) + 1,
                "disable_immediate_execution": die,
                "use_api": False,
                "stack": {"stack": list(self.stack), "current": len(self.stack)},
                "env": "",
                "step_id": step_id,
            },
            "version": self.version,
            "use_api": False,
            "defers": {},
        }

    async def request(self, step_id: str, *, die: bool, attempt: int) -> protocol.Reply:
        reply = await self.rt.call(self.meta, step_id, self._body(step_id, die=die, attempt=attempt), run_id=self.ctx.run_id)
        if self.version == -1 and reply.version is not None:
            self.version = reply.version
        return reply

    # --- the run ---------------------------------------------------------------------

    async def run(self) -> Any:
        await self.replay_journal()
        attempt = self.ctx.attempt
        empty = 0
        try:
            while True:
                # While steps run on, the app must only plan: a step it ran inline could be one already running.
                reply = await self.request("step", die=bool(self.running), attempt=attempt)
                attempt = 0
                if reply.done:
                    return await self.finish(reply.value)
                refuse_lazy_ops(reply.ops, self.ctx.run_id)
                ops = reply.ops
                complete = next((op for op in ops if op.get("op") == "RunComplete"), None)
                if complete is not None:
                    return await self.finish(complete.get("data"))
                work, suspends, seen = self.sort(ops)
                if not work and not self.running:
                    if seen or suspends or self.parked:
                        await self.suspend([*self.parked.values(), *suspends, *seen])  # nothing else to do
                        continue  # every one of them was already resolved
                    empty += 1
                    if empty >= MAX_EMPTY_REPLIES:
                        done_again = [display_name(op) for op in ops if op.get("id") in self.memos]
                        if done_again:  # the SDK hashes ids: "a" used twice is "a:1", which may be taken
                            raise errors.NonRetriableError(
                                f"the app asked {empty} times in a row for step(s) already finished ({', '.join(done_again[:5])}) "
                                f"in run {self.ctx.run_id}: most likely two steps share an id (a repeated id is "
                                "numbered 'id:1', 'id:2', which another step may already use); give each step its own id"
                            )
                        raise errors.NonRetriableError(
                            f"the app reported no new step {empty} times in a row for run {self.ctx.run_id}; "
                            "its function may be waiting on something Stepline does not support"
                        )
                    continue
                empty = 0
                planned = [str(op["id"]) for op in (*work, *suspends)]
                if planned:  # every step the run knows of, and these: past the limit, none of these runs
                    known = {*self.memos, *self.running, *self.pending, *self.parked, *planned}
                    self.step.check_plan(len(known), planned[0])
                self.parked.update((str(op["id"]), op) for op in suspends)
                for op in suspends:  # the steps beside a wait may cause the awaited event: listen first
                    if op.get("op") in WAIT_OPS and str(op["id"]) not in self.prepared:
                        await self.prepare_wait(op)
                for op in work:
                    self.start(op, reply)
                await self.settle_some()
                if not self.running and self.parked and not self.early_block() and not any(map(_races, self.parked.values())):
                    # Inngest's fan-in: the block is done once its sleeps and waits are (a race may have been won: ask)
                    await self.suspend(list(self.parked.values()))
        except asyncio.CancelledError:
            for task in self.running.values():  # the run is cancelled or the worker stops: so are its steps
                task.cancel()
            await self.drain(quiet=True)
            raise
        except BaseException:
            await self.drain(quiet=True)  # a suspension or a lost lease: the steps under way end first
            raise

    async def replay_journal(self) -> None:
        """Memos of the steps the journal (loaded with the run) holds, marked reached: the
        engine answers them from that same journal, so nothing runs again."""
        for entry in self.step.journal():
            row: JournalRow = {
                "key": entry.key, "kind": entry.kind, "status": entry.status, "output": entry.output,
                "error": entry.error, "attempts": entry.attempts,
            }
            if memos.finished(row):
                self.memos[row["key"]] = memos.memo_of(row)
                self.stack.append(row["key"])
                if row["status"] == StepStatus.COMPLETED:
                    again = _value(jsonutil.loads(row["output"]))
                else:
                    again = _raiser(protocol.make_error(jsonutil.loads(row["error"]) or {}, final=True))
                try:
                    await self.step.record_step(row["key"], row["kind"], again, None, executes=False)
                except errors.StepError:
                    pass
            elif row["status"] == "retrying":
                self.attempts[row["key"]] = int(row["attempts"])
            elif row["status"] in _PENDING:
                self.pending.add(row["key"])

    def sort(self, ops: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(new work to start, new sleeps/waits/invokes, suspensions reported again) of a reply."""
        work: list[dict[str, Any]] = []
        suspends: list[dict[str, Any]] = []
        seen: list[dict[str, Any]] = []
        ids: set[str] = set()
        for op in ops:
            sid = op.get("id")
            if not isinstance(sid, str) or sid in self.memos or sid in self.running or sid in ids:
                continue
            ids.add(sid)
            self.step.name_step(sid, display_name(op))
            if op.get("op") not in SUSPENDING_OPS:
                work.append(op)
            elif sid in self.pending:
                seen.append(op)  # suspended in an earlier pass, still pending
            elif sid not in self.parked:
                suspends.append(op)
        return work, suspends, seen

    def early_block(self) -> bool:
        """Whether this app asks what comes next after each step (request version 1)."""
        return self.version == 1

    def start(self, op: dict[str, Any], reply: protocol.Reply) -> None:
        sid = str(op["id"])
        if self.early_block() or _races(op):
            self.early.add(sid)
        self.running[sid] = asyncio.create_task(self.op(op, reply), name=f"stepline-inngest-{self.ctx.run_id}-{sid[:8]}")

    async def settle_some(self) -> None:
        """Wait for the running ops: all of them, or the first of those that continue early."""
        while self.running:
            done, _ = await asyncio.wait(self.running.values(), return_when=asyncio.FIRST_COMPLETED)
            finished = [sid for sid, task in self.running.items() if task in done]
            for sid in finished:
                del self.running[sid]
            # Every finished op's error is read (asyncio logs one never read), the first raised.
            failures = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
            failure = failures[0] if failures else None
            if failure is not None:
                await self.drain(quiet=True)
                raise failure
            if any(sid in self.early for sid in finished):
                self.early.difference_update(finished)
                return  # ask the app now; the others keep running

    async def drain(self, *, quiet: bool) -> None:
        """Wait for every running op (their steps are committed as they finish)."""
        tasks = list(self.running.values())
        self.running.clear()
        if not tasks:
            return
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if not quiet:
            for result in results:  # a lost lease or a cancel stops the run; a branch's retry does not matter now
                if isinstance(result, BaseException) and not isinstance(result, (Exception, Suspend)):
                    raise result

    async def finish(self, value: Any) -> Any:
        """The function returned: branches still running are awaited, so their steps are saved."""
        await self.drain(quiet=False)
        return value

    async def suspend(self, ops: list[dict[str, Any]]) -> None:
        """Suspend on every sleep, wait and invoke the function waits for, together; returns
        only when all of them were already resolved (their memos are then known)."""
        self.parked.clear()
        results = await asyncio.gather(*(self.op(op, None) for op in ops), return_exceptions=True)
        for result in results:  # control flow (suspend, halt, cancel) first
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def prepare_wait(self, op: dict[str, Any]) -> None:
        name, expression, timeout = _wait_of(op)
        if expression is not None:
            expressions.check(expression, field=f"waitForEvent {display_name(op)}")
        await self.step.prepare_wait(str(op["id"]), name, expression, timeout, display_name(op))
        self.prepared.add(str(op["id"]))

    def done(self, step_id: str, memo: Any) -> None:
        self.memos[step_id] = memo
        self.stack.append(step_id)

    async def op(self, op: dict[str, Any], reply: protocol.Reply | None) -> None:
        kind, sid = str(op.get("op")), str(op["id"])
        opts = op.get("opts") or {}
        if kind in ("StepRun", "Step"):
            data = op.get("data")
            if kind == "Step" and isinstance(data, dict) and set(data) <= {"data", "error"}:
                if "error" in data and data["error"] is not None:
                    await self.record(sid, op, _raiser(protocol.make_error(data["error"], final=True)), executes=False)
                    return
                data = data.get("data")
            await self.record(sid, op, _value(data), executes=False)  # the app ran it, in the run's own slot
        elif kind in ("StepError", "StepFailed"):
            final = kind == "StepFailed" or (reply is not None and reply.no_retry)
            retry_after = None if reply is None else reply.retry_after
            await self.record(sid, op, _raiser(protocol.make_error(op.get("error"), final=final, retry_after=retry_after)), executes=False)
        elif kind == "StepPlanned":  # a request of its own to the app: a concurrency slot of its own
            await self.record(sid, op, lambda: self.target(sid))
        elif kind == "Sleep":
            when = durations.until(opts.get("duration") or op.get("name") or "0s", field=f"sleep {display_name(op)}")
            await self.ctx.step.sleep_until(sid, when)
            self.done(sid, None)
        elif kind in WAIT_OPS:
            name, expression, timeout = _wait_of(op)
            if expression is not None:  # checked here to name the user's step, not its hashed id
                expressions.check(expression, field=f"waitForEvent {display_name(op)}")
            if sid in self.prepared:
                row = await self.rt.step_row(self.ctx.run_id, sid)
                if row is not None and row["status"] == StepStatus.COMPLETED:  # it arrived while the block ran
                    body = jsonutil.loads(row["output"])
                    await self.step.record_step(sid, "wait", _value(body), None, executes=False)
                    self.done(sid, memos.wait_memo(body))
                    return
                self.rt.watch_prepared_wait(self.ctx.run_id, sid)
            found = await self.ctx.step.wait_for_event(sid, event=name, timeout=timeout, if_=expression)
            self.done(sid, memos.wait_memo(None if found is None else found.to_dict()))
        elif kind == "InvokeFunction":
            await self.invoke(sid, opts)
        elif kind == "Gateway":
            await self.record(sid, op, lambda: gateway.fetch(self.rt.http, opts))
        elif kind == "AIGateway":
            call = gateway.Inference(self.rt.http, opts)
            await self.record(sid, op, call, kind="ai.infer", meta=call.meta)
        else:
            error = {"name": "UnsupportedStep", "message": f"Stepline does not support the {kind} step yet (step {display_name(op)})"}
            await self.record(sid, op, _raiser(protocol.make_error(error, final=True)), executes=False)

    async def record(
        self,
        sid: str,
        op: dict[str, Any],
        compute: Callable[[], Awaitable[Any]],
        *,
        kind: str = "run",
        meta: Callable[[Any], dict[str, Any]] | None = None,
        executes: bool = True,
    ) -> None:
        """Save a run-type step through the engine; a final failure becomes an error memo.
        ``executes``: Stepline carries the step out (a request to the app, an HTTP call), so
        it takes a concurrency slot; not for an outcome the app reported."""
        name = display_name(op)

        def describe(result: Any) -> dict[str, Any]:
            return {**(meta(result) if meta else {}), "inngest": {"name": name, "op": op.get("op")}}

        try:
            value = await self.step.record_step(sid, kind, compute, describe, executes=executes)
        except errors.StepError as exc:
            error = self.errors.get(sid) or op.get("error") or exc.to_dict()
            self.done(sid, memos.error_memo(error, "run"))
            return
        self.done(sid, {"data": value})

    async def target(self, sid: str) -> Any:
        """Ask the app to run exactly one planned step; its result or error."""
        reply = await self.request(sid, die=True, attempt=self.attempts.get(sid, 0))
        if reply.done:
            raise protocol.make_error({"name": "StepNotReached", "message": f"the app finished the function instead of running step {sid}"}, final=False)
        refuse_lazy_ops(reply.ops, self.ctx.run_id)
        for op in reply.ops:
            if op.get("id") != sid:
                continue
            kind = op.get("op")
            if kind in ("StepRun", "Step"):
                data = op.get("data")
                if kind == "Step" and isinstance(data, dict) and set(data) <= {"data", "error"}:
                    if data.get("error") is not None:
                        raise protocol.make_error(data["error"], final=True)
                    data = data.get("data")
                return data
            if kind in ("StepError", "StepFailed"):
                self.errors[sid] = op.get("error")
                raise protocol.make_error(op.get("error"), final=kind == "StepFailed" or reply.no_retry, retry_after=reply.retry_after)
        raise protocol.make_error({"name": "StepNotFound", "message": f"the app did not run the planned step {sid}"}, final=False)

    async def invoke(self, sid: str, opts: dict[str, Any]) -> None:
        function_id = await self.rt.resolve_function_id(str(opts.get("function_id") or ""))
        payload = opts.get("payload") or {}
        data = dict(payload.get("data") or {})
        data["_inngest"] = {"fn_id": function_id, "correlation_id": f"{self.ctx.run_id}.{sid}"}
        timeout = opts.get("timeout")
        seconds = None if not timeout else durations.seconds_until(timeout, field="invoke timeout")
        try:
            value = await self.ctx.step.invoke(sid, function=function_id, data=data, timeout=seconds)
        except errors.StepError as exc:
            # The journal's error is whole (the invoked run's own error within); the exception's is not.
            entry = next((e for e in self.step.journal() if e.key == sid and e.error), None)
            stored = jsonutil.loads(entry.error) if entry is not None else None
            self.done(sid, memos.error_memo(stored if isinstance(stored, dict) else exc.to_dict(), "invoke"))
            return
        self.done(sid, {"data": value})


def _races(op: dict[str, Any]) -> bool:
    """Whether the op belongs to a race (``parallelMode: "race"``): its end may settle the block."""
    return (op.get("opts") or {}).get("parallelMode") == "race"


def _wait_of(op: dict[str, Any]) -> tuple[str, str | None, float]:
    """(event name, CEL ``if``, timeout seconds) of a WaitForEvent or WaitForSignal op."""
    opts = op.get("opts") or {}
    timeout = durations.seconds_until(opts.get("timeout") or "0s", field=f"{op.get('op')} timeout")
    if op.get("op") == "WaitForSignal":
        return events.SIGNAL_EVENT, events.signal_expression(str(opts.get("signal") or op.get("name"))), timeout
    return events.trigger_name(str(opts.get("event") or op.get("name"))), opts.get("if") or None, timeout


def _value(data: Any) -> Callable[[], Awaitable[Any]]:
    async def compute() -> Any:
        return data

    return compute


def _raiser(exc: Exception) -> Callable[[], Awaitable[Any]]:
    async def compute() -> Any:
        raise exc

    return compute
