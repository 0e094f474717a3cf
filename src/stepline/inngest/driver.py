"""The handler behind every SDK function: drive the app's serve URL step by step.

Each opcode the SDK reports maps onto the native step API, keyed by the SDK's
hashed step id, so the run's journal *is* the memoized state sent back:

- ``StepRun`` / ``Step``: ``record_step(id, lambda: data)`` saves what the app computed;
- ``StepPlanned``: ``record_step(id, call the app for that step)``, so native step
  retries (backoff, ``Retry-After``, ``StepError``) apply to it;
- ``StepError`` / ``StepFailed``: the same step, raising the app's error (retriable,
  or final); a final failure becomes an ``{"error"}`` memo the SDK raises in user code;
- ``Sleep`` / ``WaitForEvent`` / ``InvokeFunction``: ``sleep_until``, ``wait_for_event``,
  ``invoke`` (the run is suspended and resumes with the memo);
- several ops in one reply: a parallel block, run concurrently; discovery resumes
  once all of them are done (Inngest's coalesced fan-in).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from stepline import context, errors, expressions, jsonutil
from stepline.inngest import durations, events, gateway, memos, protocol

if TYPE_CHECKING:
    from stepline.inngest.runtime import InngestRuntime

log = logging.getLogger("stepline.inngest")

LAZY_OPS = {"DeferAdd", "DeferAbort"}
WAIT_OPS = {"WaitForEvent", "WaitForSignal"}
# Suspending ops last: once one suspends, the run takes no new step in this pass.
_ORDER = {"InvokeFunction": 1, "WaitForEvent": 2, "WaitForSignal": 2, "Sleep": 3}
MAX_EMPTY_REPLIES = 3


class SDKExecution:
    """One execution (until the run ends or suspends) of an SDK function's run: calls to
    the app's serve URL, each reply's steps run through the engine's ``context.RunDriver``."""

    def __init__(self, runtime: InngestRuntime, meta: dict[str, Any], ctx: context.Context) -> None:
        self.rt = runtime
        self.meta = meta
        self.ctx = ctx
        self.step = ctx.step.driver
        self.memos: dict[str, Any] = {}
        self.stack: list[str] = []
        self.attempts: dict[str, int] = {}
        self.errors: dict[str, Any] = {}  # the app's own error per failed step, sent back as reported
        self.prepared: set[str] = set()  # waits registered ahead of the steps beside them
        self.version = -1
        bodies = [e.to_dict() for e in (ctx.events or [ctx.event])]
        self.events = [events.to_sdk(b) for b in bodies]

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
        for entry in self.step.journal():  # the journal the engine loaded with the run
            row = dataclasses.asdict(entry)
            if memos.finished(row):
                self.memos[row["key"]] = memos.memo_of(row)
                self.stack.append(row["key"])
                # Mark the step reached, so the engine knows the run still uses it; the
                # engine answers from this same journal, so the compute never runs.
                if row["status"] == "completed":
                    again = _value(jsonutil.loads(row["output"]))
                else:
                    again = _raiser(protocol.make_error(jsonutil.loads(row["error"]) or {}, final=True))
                try:
                    await self.step.record_step(row["key"], row["kind"], again, None)
                except errors.StepError:
                    pass
            elif row["status"] == "retrying":
                self.attempts[row["key"]] = int(row["attempts"])
        attempt = self.ctx.attempt
        empty = 0
        while True:
            reply = await self.request("step", die=False, attempt=attempt)
            attempt = 0
            if reply.done:
                return reply.value
            ops = [op for op in reply.ops if op.get("op") not in LAZY_OPS]
            for op in ops:
                if op.get("op") == "RunComplete":
                    return op.get("data")
            fresh: dict[str, dict[str, Any]] = {}
            for op in ops:
                if isinstance(op.get("id"), str) and op["id"] not in self.memos and op["id"] not in fresh:
                    fresh[op["id"]] = op
            if not fresh:
                empty += 1
                if empty >= MAX_EMPTY_REPLIES:
                    raise errors.NonRetriableError(
                        f"the app reported no new step {empty} times in a row for run {self.ctx.run_id}; "
                        "its function may be waiting on something Stepline does not support"
                    )
                continue
            empty = 0
            await self.block(list(fresh.values()), reply)

    async def block(self, ops: list[dict[str, Any]], reply: protocol.Reply) -> None:
        ordered = sorted(ops, key=lambda op: _ORDER.get(str(op.get("op")), 0))
        waits = [op for op in ordered if op.get("op") in WAIT_OPS]
        if waits and len(ordered) > len(waits):
            # Steps beside a wait may cause the awaited event (send, then wait for the reply):
            # register the waits first, run the steps, then take the waits.
            for op in waits:
                await self.prepare_wait(op)
            results = await asyncio.gather(*(self.op(op, reply) for op in ordered if op not in waits), return_exceptions=True)
            results += await asyncio.gather(*(self.op(op, reply) for op in waits), return_exceptions=True)
        else:
            results = await asyncio.gather(*(self.op(op, reply) for op in ordered), return_exceptions=True)
        for result in results:  # control flow (suspend, halt, cancel) first
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def prepare_wait(self, op: dict[str, Any]) -> None:
        name, expression, timeout = _wait_of(op)
        if expression is not None:
            expressions.check(expression, field=f"waitForEvent {op.get('displayName') or op['id']}")
        await self.rt.prepare_wait(self.ctx.run_id, str(op["id"]), name, expression, timeout)
        self.prepared.add(str(op["id"]))

    def done(self, step_id: str, memo: Any) -> None:
        self.memos[step_id] = memo
        self.stack.append(step_id)

    async def op(self, op: dict[str, Any], reply: protocol.Reply) -> None:
        kind, sid = str(op.get("op")), str(op["id"])
        opts = op.get("opts") or {}
        if kind in ("StepRun", "Step"):
            data = op.get("data")
            if kind == "Step" and isinstance(data, dict) and set(data) <= {"data", "error"}:
                if "error" in data and data["error"] is not None:
                    await self.record(sid, op, _raiser(protocol.make_error(data["error"], final=True)))
                    return
                data = data.get("data")
            await self.record(sid, op, _value(data))
        elif kind in ("StepError", "StepFailed"):
            final = kind == "StepFailed" or reply.no_retry
            await self.record(sid, op, _raiser(protocol.make_error(op.get("error"), final=final, retry_after=reply.retry_after)))
        elif kind == "StepPlanned":
            await self.record(sid, op, lambda: self.target(sid))
        elif kind == "Sleep":
            when = durations.until(opts.get("duration") or op.get("name") or "0s", field=f"sleep {op.get('displayName') or sid}")
            await self.ctx.step.sleep_until(sid, when)
            self.done(sid, None)
        elif kind in WAIT_OPS:
            name, expression, timeout = _wait_of(op)
            if sid in self.prepared:
                row = await self.rt.step_row(self.ctx.run_id, sid)
                if row is not None and row["status"] == "completed":  # it arrived while the block ran
                    body = jsonutil.loads(row["output"])
                    await self.step.record_step(sid, "wait", _value(body), None)
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
            error = {"name": "UnsupportedStep", "message": f"Stepline does not support the {kind} step yet (step {op.get('displayName') or sid})"}
            await self.record(sid, op, _raiser(protocol.make_error(error, final=True)))

    async def record(
        self,
        sid: str,
        op: dict[str, Any],
        compute: Callable[[], Awaitable[Any]],
        *,
        kind: str = "run",
        meta: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        """Save a run-type step through the engine; a final failure becomes an error memo."""
        name = op.get("displayName") or (op.get("userland") or {}).get("id") or op.get("name")

        def describe(result: Any) -> dict[str, Any]:
            return {**(meta(result) if meta else {}), "inngest": {"name": name, "op": op.get("op")}}

        try:
            value = await self.step.record_step(sid, kind, compute, describe)
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
            self.done(sid, memos.error_memo(exc.to_dict(), "invoke"))
            return
        self.done(sid, {"data": value})


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
