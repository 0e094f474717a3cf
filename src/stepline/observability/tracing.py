"""OpenTelemetry spans for runs, and the sender's side of an event's trace context.

Nothing here needs OpenTelemetry: without ``opentelemetry-api`` installed (the ``otel``
extra), or without a tracer provider set in the process, ``tracer()`` is None and the
engine makes no span at all. What it makes when there is one:

- ``process <function id>`` (CONSUMER): one per segment of a run, a claim or a
  resumption, ended when the run stops on this worker (done, suspended on a sleep, wait,
  invoke or retry, or lost): no span stays open across a sleep. Its parent is the trace
  context stored with the run's event, so a web request and the background work it
  caused make one trace; a run of several events (a batch), or of the last of several
  (debounce), is a new trace linked to each event's context instead. A cron run starts
  a trace of its own.
- ``step <step id>`` (INTERNAL): one per attempt of a step that executes, a child of the
  segment, current while the step's body runs (so what the body traces hangs under it).
  A step replayed from the journal makes none.

The sender's side: ``current_carrier()`` is the W3C context of the span current where an
event is sent (``app.send``, ``ctx.step.send_event``, ``stepline.Client`` as request
headers), stored with the event by ``stamp``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from stepline.observability import carrier as carrier_mod

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: every function here is a no-op
    otel_trace = None  # type: ignore[assignment]

TRACER_NAME = "stepline"
# Attribute names, as documented in docs/deployment.md "Tracing and logs".
RUN_ID = "stepline.run.id"
FUNCTION_ID = "stepline.function.id"
STEP_KEY = "stepline.step.key"
STEP_ATTEMPT = "stepline.step.attempt"
LEASE_EPOCH = "stepline.lease.epoch"
RUN_ATTEMPT = "stepline.run.attempt"
RUN_OUTCOME = "stepline.run.outcome"
EVENT_IDS = "stepline.event.ids"

_PROPAGATOR = TraceContextTextMapPropagator() if otel_trace is not None else None
_cached: tuple[Any, Any] = (None, None)  # (provider, its tracer)


def tracer() -> Any | None:
    """The tracer spans go to, or None when nothing would record them (no OpenTelemetry,
    or no tracer provider set in this process): then the engine makes no span."""
    global _cached
    if otel_trace is None:
        return None
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider)):
        return None
    if _cached[0] is not provider:
        _cached = (provider, provider.get_tracer(TRACER_NAME))
    return _cached[1]


# --- the sender's side ---------------------------------------------------------------------


def current_carrier() -> carrier_mod.Carrier | None:
    """The W3C context (traceparent, tracestate) of the span current here, if any."""
    if otel_trace is None:
        return None
    span_context = otel_trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    headers: dict[str, str] = {}
    assert _PROPAGATOR is not None
    _PROPAGATOR.inject(headers)
    if not carrier_mod.valid_traceparent(headers.get("traceparent")):
        return None
    return carrier_mod.make(headers["traceparent"], headers.get("tracestate"))


def stamp(events: Sequence[Any], trace: carrier_mod.Carrier | None) -> list[Any]:
    """``events`` with ``trace`` given to each one that has none of its own (dicts and
    ``Event`` objects; anything else is left for validation to refuse)."""
    if trace is None:
        return list(events)
    out: list[Any] = []
    for item in events:
        if isinstance(item, Mapping) and item.get("trace") is None:
            item = {**item, "trace": trace}
        elif dataclasses.is_dataclass(item) and not isinstance(item, type) and getattr(item, "trace", 0) is None:
            item = dataclasses.replace(item, trace=trace)
        out.append(item)
    return out


# --- the worker's side ---------------------------------------------------------------------


def _remote(trace: Any) -> Any | None:
    """The context of a stored carrier, or None when it holds no valid one."""
    if not isinstance(trace, Mapping) or not carrier_mod.valid_traceparent(trace.get("traceparent")):
        return None
    assert _PROPAGATOR is not None
    ctx = _PROPAGATOR.extract(carrier={k: str(v) for k, v in trace.items()})
    return ctx if otel_trace.get_current_span(ctx).get_span_context().is_valid else None


def start_segment(
    tracer: Any,
    *,
    function_id: str,
    run_id: str,
    epoch: int | None,
    attempt: int,
    events: Sequence[Mapping[str, Any]],
    link_only: bool,
) -> Any:
    """Start a run segment's span: the child of its one event's context, or (several
    events, or ``link_only``: a debounced run) a new trace linked to theirs."""
    contexts = [c for c in (_remote(e.get("trace")) for e in events) if c is not None]
    parent = otel_context.Context()  # never the worker's own context
    links = []
    if len(events) == 1 and contexts and not link_only:
        parent = contexts[0]
    else:
        links = [otel_trace.Link(otel_trace.get_current_span(c).get_span_context()) for c in contexts]
    attributes: dict[str, Any] = {RUN_ID: run_id, FUNCTION_ID: function_id, RUN_ATTEMPT: attempt}
    if epoch is not None:
        attributes[LEASE_EPOCH] = epoch
    ids = [str(e["id"]) for e in events if e.get("id") is not None]
    if ids:
        attributes[EVENT_IDS] = ids[:100]
    return tracer.start_span(
        f"process {function_id}", context=parent, kind=otel_trace.SpanKind.CONSUMER, attributes=attributes, links=links
    )


def start_step(tracer: Any, segment: Any, name: str, attributes: dict[str, Any]) -> Any:
    """Start a step attempt's span under its segment."""
    parent = otel_trace.set_span_in_context(segment, otel_context.Context())
    return tracer.start_span(f"step {name}", context=parent, kind=otel_trace.SpanKind.INTERNAL, attributes=attributes)


def attach(span: Any) -> Any:
    """Make ``span`` the current span here (and in what this context starts); returns the
    token that ``detach`` takes to undo it."""
    return otel_context.attach(otel_trace.set_span_in_context(span))


def detach(token: Any) -> None:
    otel_context.detach(token)


@contextlib.contextmanager
def current(span: Any) -> Iterator[None]:
    """``span`` is the current span here (and in what this context starts) until the block ends."""
    token = attach(span)
    try:
        yield
    finally:
        detach(token)


def end_segment(span: Any, outcome: str, *, failed: bool) -> None:
    """End a run segment's span, saying how the execution ended (completed, failed,
    cancelled, suspended, retrying, lost, stopped)."""
    span.set_attribute(RUN_OUTCOME, outcome)
    if failed:
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, "the run failed"))
    span.end()


def failed(span: Any, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
