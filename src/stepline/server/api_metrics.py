"""Functions with live counts, metrics as JSON, ``/metrics`` in Prometheus text, ``/health``."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from stepline import errors
from stepline.engine import Engine
from stepline.server import common, id_route
from stepline.server.responses import JSON
from stepline.server.shared_reads import Shared, SharedReads
from stepline.store import Store

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _shared(request: Request) -> SharedReads:
    return request.app.state.shared_reads  # type: ignore[no-any-return]


def _aged(response: Response, answer: Shared[Any]) -> Response:
    """An answer read for other requests says how old it is (``Age``, RFC 9111)."""
    if answer.shared:
        response.headers["Age"] = str(int(answer.age))
    return response


async def _functions(request: Request) -> Shared[list[Any]]:
    return await _shared(request).get("functions", common.engine(request).store.functions_overview)


@common.route(common.api_token)
async def list_functions(request: Request) -> Response:
    answer = await _functions(request)
    return _aged(JSON({"data": answer.value}), answer)


@common.route(common.api_token)
async def get_function(request: Request) -> Response:
    function_id = request.path_params["function_id"]
    answer = await _functions(request)
    for fn in answer.value:
        if fn["id"] == function_id:
            return _aged(JSON(fn), answer)
    raise errors.NotFoundError(f"no function with id {function_id!r}")


@common.route(common.api_token)
async def metrics_json(request: Request) -> Response:
    """``?window=1h`` for run stats (default 1h), ``?days=14`` for tokens and cost."""
    window = common.parse_window(request.query_params.get("window"), "1h")
    days_text = request.query_params.get("days", "14")
    if not common.is_digits(days_text) or not 1 <= int(days_text) <= 366:
        raise errors.ConfigError(f"days: expected a whole number 1..366, got {days_text!r}")
    store = common.engine(request).store

    async def read() -> Any:
        now = int(time.time() * 1000)
        day_ms = 86_400_000
        usage_since = (now // day_ms - int(days_text) + 1) * day_ms  # whole UTC days, today included
        return await store.metrics_overview(now - int(window * 1000), usage_since)

    answer = await _shared(request).get(("metrics", window, int(days_text)), read)
    return _aged(JSON({**answer.value, "window_seconds": window, "days": int(days_text)}), answer)


def _label(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: dict[str, Any], value: float | None) -> str:
    inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
    shown = "NaN" if value is None else (repr(float(value)) if isinstance(value, float) else str(value))
    return f"{name}{{{inner}}} {shown}" if inner else f"{name} {shown}"


async def _retention_lines(engine: Engine) -> list[str]:
    """Table sizes (refreshed at most once a minute) and what the retention sweeps deleted."""
    sizes = await engine.retention.table_sizes()
    status = await engine.store.sweep_status()
    space = await engine.store.file_space()
    out = ["# HELP stepline_table_rows Rows per table (PostgreSQL: as of its last ANALYZE).", "# TYPE stepline_table_rows gauge"]
    out += [_line("stepline_table_rows", {"table": t["table"]}, t["rows"]) for t in sizes]
    out += ["# HELP stepline_table_bytes Bytes per table with its indexes and TOAST.", "# TYPE stepline_table_bytes gauge"]
    out += [_line("stepline_table_bytes", {"table": t["table"]}, t["bytes"]) for t in sizes if t["bytes"] is not None]
    if space:
        out += ["# HELP stepline_database_bytes SQLite: size of the database file and of its WAL.", "# TYPE stepline_database_bytes gauge"]
        out += [_line("stepline_database_bytes", {"file": "db"}, space["file_bytes"]), _line("stepline_database_bytes", {"file": "wal"}, space["wal_bytes"])]
        out += ["# HELP stepline_database_free_bytes SQLite: free pages inside the file.", "# TYPE stepline_database_free_bytes gauge"]
        out.append(_line("stepline_database_free_bytes", {}, space["freelist_count"] * space["page_size"]))
    out += ["# HELP stepline_retention_deleted_rows_total Rows the retention sweeps deleted, per table.", "# TYPE stepline_retention_deleted_rows_total counter"]
    out += [_line("stepline_retention_deleted_rows_total", {"table": t}, n) for t, n in sorted(status["deleted"].items())]
    out += ["# HELP stepline_retention_last_sweep_timestamp_seconds When the last retention sweep finished.", "# TYPE stepline_retention_last_sweep_timestamp_seconds gauge"]
    last = status["last_finished_at"]
    out.append(_line("stepline_retention_last_sweep_timestamp_seconds", {}, None if last is None else last / 1000.0))
    out += ["# HELP stepline_retention_sweeping 1 while a process holds the retention sweep.", "# TYPE stepline_retention_sweeping gauge"]
    out.append(_line("stepline_retention_sweeping", {}, 1 if status["owner"] else 0))
    return out


# The totals workers count (stepline.observability.counters), as /metrics shows them.
_COUNTERS = (
    (
        "lease_losses", "cause",
        "Runs stopped on a worker without an outcome: their lease was taken over (taken_over), could not be "
        "renewed in time (not_renewed), or the database could not take one of their writes (store_error).",
    ),
    ("retries", "kind", "Retries: a step attempt that failed and runs again (kind=step), or the whole function (kind=function)."),
)


async def _counter_lines(store: Store) -> list[str]:
    """Lease losses and retries per function, as every worker counted them."""
    totals = await store.counters()
    out: list[str] = []
    for name, detail, help_text in _COUNTERS:
        out += [f"# HELP stepline_{name}_total {help_text}", f"# TYPE stepline_{name}_total counter"]
        out += [
            _line(f"stepline_{name}_total", {"function": function_id, detail: value}, n)
            for (counter, function_id, value), n in sorted(totals.items())
            if counter == name
        ]
    return out


async def prometheus_text(engine: Engine) -> str:
    """``/metrics``: one read of everything it reports."""
    store = engine.store
    now = int(time.time() * 1000)
    depth = await store.queue_depth()
    counts = await store.status_counts()
    stats = await store.function_stats(since_ms=now - 3600_000)
    usage = await store.usage_by_model()
    out = [
        "# HELP stepline_queue_depth Runs in the queue per function: ready now, scheduled for later, leased by a worker.",
        "# TYPE stepline_queue_depth gauge",
    ]
    for d in depth:
        for state in ("ready", "scheduled", "leased"):
            out.append(_line("stepline_queue_depth", {"function": d["function_id"], "state": state}, d[state]))
    out += ["# HELP stepline_runs Runs per function and status, of those stored (retention deletes finished ones).", "# TYPE stepline_runs gauge"]
    for c in counts:
        out.append(_line("stepline_runs", {"function": c["function_id"], "status": c["status"]}, c["count"]))
    out += [
        "# HELP stepline_run_success_ratio Completed / (completed + failed) over the last hour.",
        "# TYPE stepline_run_success_ratio gauge",
    ]
    for s in stats:
        if s["success_rate"] is not None:
            out.append(_line("stepline_run_success_ratio", {"function": s["function_id"]}, float(s["success_rate"])))
    out += [
        "# HELP stepline_run_duration_seconds Run duration quantiles over the last hour.",
        "# TYPE stepline_run_duration_seconds gauge",
    ]
    for s in stats:
        for quantile, ms in (("0.5", s["p50_ms"]), ("0.95", s["p95_ms"])):
            if ms is not None:
                labels = {"function": s["function_id"], "quantile": quantile}
                out.append(_line("stepline_run_duration_seconds", labels, ms / 1000.0))
    out += ["# HELP stepline_llm_tokens_total Model tokens by kind.", "# TYPE stepline_llm_tokens_total counter"]
    for u in usage:
        tokens = (("prompt", u["prompt_tokens"]), ("completion", u["completion_tokens"]),
                  ("reasoning", u["reasoning_tokens"]), ("cached", u["cached_tokens"]))
        for kind, n in tokens:
            out.append(_line("stepline_llm_tokens_total", {"provider": u["provider"], "model": u["model"], "kind": kind}, n))
    out += ["# HELP stepline_llm_cost_usd_total Model cost in US dollars.", "# TYPE stepline_llm_cost_usd_total counter"]
    for u in usage:
        out.append(_line("stepline_llm_cost_usd_total", {"provider": u["provider"], "model": u["model"]}, float(u["cost_usd"])))
    out += ["# HELP stepline_function_paused 1 for each paused function (mode queue: its runs wait; skip: its events start none).",
            "# TYPE stepline_function_paused gauge"]
    for function_id, pause in sorted((await store.paused_functions()).items()):
        out.append(_line("stepline_function_paused", {"function": function_id, "mode": pause["mode"]}, 1))
    out += await _counter_lines(store)
    out += await _retention_lines(engine)
    out += ["# HELP stepline_up 1 while the server can read its database.", "# TYPE stepline_up gauge", "stepline_up 1"]
    return "\n".join(out) + "\n"


@common.route(common.api_token)
async def metrics_prometheus(request: Request) -> Response:
    engine = common.engine(request)
    answer = await _shared(request).get("prometheus", partial(prometheus_text, engine))
    return _aged(PlainTextResponse(answer.value, media_type=PROMETHEUS_TYPE), answer)


WRITES_FAILING = 5.0  # seconds of failed (or lock-blocked) writes after which /health answers 503


@common.route(common.open_access)
async def health(request: Request) -> Response:
    """200 while the database answers and takes this process's writes; 503 (with the reason)
    when it does not answer, or every write of the last ``WRITES_FAILING`` seconds failed, or
    waited that long for a write lock another process holds (SQLite: events are refused
    meanwhile); a read-only or locked database answers reads, and a load balancer must still
    steer away."""
    engine = common.engine(request)
    worker = engine.worker
    try:
        await engine.store.ping()
    except Exception as exc:  # noqa: BLE001 - health reports, it does not raise
        return JSON({"status": "unavailable", "database": engine.store.dialect, "error": str(exc)}, status_code=503)
    failing = engine.store.write_failure()
    if failing is not None and failing[0] >= WRITES_FAILING:
        return JSON({"status": "unavailable", "database": engine.store.dialect,
                     "error": f"no write has gone through for {failing[0]:.0f} s: {failing[1]}"}, status_code=503)
    return JSON(
        {
            "status": "ok",
            "mode": "dev" if common.options(request).dev else "production",
            "database": engine.store.dialect,
            "worker": None if worker is None else {"id": worker.id, "in_flight": worker.in_flight},
        }
    )


def routes() -> list[Route]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_prometheus, methods=["GET"]),
        Route("/api/v1/metrics", metrics_json, methods=["GET"]),
        Route("/api/v1/functions", list_functions, methods=["GET"]),
        id_route.IdRoute("/api/v1/functions/{function_id}", get_function, methods=["GET"]),
    ]
