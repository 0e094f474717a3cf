"""Every ``STEPLINE_*`` environment variable, in one place (shown by ``--help``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from stepline import durations, errors


@dataclasses.dataclass(frozen=True)
class Var:
    name: str
    field: str
    kind: type
    default: Any
    help: str


# Inngest's retry schedule (seconds), for attempts that found the app unreachable.
UNREACHABLE_BACKOFF = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0, 7200.0)

VARS: tuple[Var, ...] = (
    Var("STEPLINE_DB", "db", str, ".stepline/stepline.db", "database: a SQLite path or postgresql://user@host/db"),
    Var("STEPLINE_HOST", "host", str, "127.0.0.1", "address the server binds"),
    Var("STEPLINE_PORT", "port", int, 8288, "port the server listens on"),
    Var("STEPLINE_EVENT_KEY", "event_key", str, "", "key required on POST /e/{key} (production)"),
    Var("STEPLINE_API_TOKEN", "api_token", str, "", "bearer token for /api/v1 and the dashboard (production)"),
    Var("STEPLINE_SIGNING_KEY", "signing_key", str, "", "HMAC key for per-run browser tokens (defaults to the API token)"),
    Var("STEPLINE_INNGEST_SIGNING_KEY", "inngest_signing_key", str, "", "production: the INNGEST_SIGNING_KEY of the Inngest SDK apps this server runs"),
    Var("STEPLINE_INNGEST_SIGNING_KEY_FALLBACK", "inngest_signing_key_fallback", str, "", "production: the previous SDK signing key while rotating"),
    Var("STEPLINE_CONCURRENCY", "concurrency", int, 500, "runs one worker process executes at once"),
    Var("STEPLINE_SYNC_THREADS", "sync_threads", int, 32, "threads for sync handlers and sync step bodies"),
    Var("STEPLINE_CONNECT_WAIT", "connect_wait", float, 30.0, "seconds stepline start, worker and dev wait at start for a PostgreSQL server that does not answer yet (refused, starting up, out of connection slots, at a CONNECTION LIMIT) before giving up (0: at once)"),
    Var("STEPLINE_LEASE", "lease", float, 30.0, "seconds a worker's claim lasts without a heartbeat"),
    Var("STEPLINE_MAX_LEASE_LOSSES", "max_lease_losses", int, 10, "a run whose lease runs out this many times in a row without saving a step (each worker that took it crashed, stalled or could not save it) is failed, not leased again"),
    Var("STEPLINE_FENCING", "fencing", bool, True, "leases carry an epoch checked at every commit, and workers stop runs whose lease they cannot renew (0 only to see what that prevents: never in production)"),
    Var("STEPLINE_HANDOFF", "handoff", bool, True, "an idle worker takes new runs from its own process's ingests without a claim (0: always through the queue)"),
    Var("STEPLINE_RETRY_BASE", "retry_base", float, 1.0, "first retry backoff in seconds (doubles each attempt)"),
    Var("STEPLINE_RETRY_MAX", "retry_max", float, 600.0, "longest retry backoff in seconds"),
    Var("STEPLINE_UNREACHABLE_BACKOFF", "unreachable_backoff", tuple, UNREACHABLE_BACKOFF, "retry backoffs, comma-separated durations, of an attempt that could not reach its SDK app at all (a restart): Inngest's schedule by default, the last repeated, each plus up to 30 s of jitter (at most the backoff itself)"),
    Var("STEPLINE_POLL_INTERVAL", "poll_interval", float, 0.0, "seconds between looks for work from other processes (0: backend default)"),
    Var("STEPLINE_MAX_EVENT_BYTES", "max_event_bytes", int, 1024 * 1024, "largest event accepted"),
    Var("STEPLINE_MAX_EVENTS_PER_REQUEST", "max_events_per_request", int, 5000, "most events one HTTP request may carry (413 past it: send the rest in further requests)"),
    Var("STEPLINE_MAX_STEP_OUTPUT_BYTES", "max_step_output_bytes", int, 4 * 1024 * 1024, "largest step result or function return value saved"),
    Var("STEPLINE_MAX_RUN_STATE_BYTES", "max_run_state_bytes", int, 32 * 1024 * 1024, "largest total of a run's step results"),
    Var("STEPLINE_MAX_MESSAGE_BYTES", "max_message_bytes", int, 512 * 1024, "largest message a run publishes to its stream (ctx.publish, Inngest realtime), as JSON"),
    Var("STEPLINE_MAX_STEPS_PER_RUN", "max_steps_per_run", int, 1000, "most steps one run may reach (Inngest's limit); a new step past it fails the run, not retried"),
    Var("STEPLINE_MAX_JSON_DEPTH", "max_json_depth", int, 64, "deepest nesting of an event's data or user (and of any request body, plus its envelope)"),
    Var("STEPLINE_MAX_NAME_BYTES", "max_name_bytes", int, 256, "longest event name (and SDK trigger name or function id), in UTF-8 bytes"),
    Var("STEPLINE_MAX_ID_BYTES", "max_id_bytes", int, 256, "longest event id (the sender's de-duplication id), in UTF-8 bytes"),
    Var("STEPLINE_MAX_USER_ID_BYTES", "max_user_id_bytes", int, 256, "longest user id (data.user_id, data.userId or user.id), in UTF-8 bytes"),
    Var("STEPLINE_RETENTION", "retention", float, 7 * 86400.0, "finished runs (their steps, attempts, messages and events) are deleted this long after they end, e.g. 7d, 12h (0: kept forever); a function's retention= overrides it"),
    Var("STEPLINE_USAGE_RETENTION", "usage_retention", float, 400 * 86400.0, "LLM tokens and cost are kept this long as daily sums per function, user and model after their runs are deleted (0: forever)"),
    Var("STEPLINE_RETENTION_INTERVAL", "retention_interval", float, 60.0, "seconds between retention sweeps, one process at a time across all of them (0: this process never sweeps; `stepline admin prune` still does)"),
    Var("STEPLINE_LOG_LEVEL", "log_level", str, "INFO", "logging level: DEBUG, INFO, WARNING, ERROR"),
    Var("STEPLINE_LOG_FORMAT", "log_format", str, "text", "log lines: text, or json (one object per line; inside a run with its run_id, function_id, step and attempt)"),
    Var("STEPLINE_ALLOWED_HOSTS", "allowed_hosts", str, "", "stepline dev: Host names it answers besides loopback addresses, localhost and *.localhost (comma-separated; '.example.test' takes its subdomains too)"),
    Var("STEPLINE_MAX_HEADER_BYTES", "max_header_bytes", int, 16 * 1024, "largest request head, request line and headers (431 past it)"),
    Var("STEPLINE_HEADER_TIMEOUT", "header_timeout", float, 10.0, "seconds a client has to send a request's head (408 and the connection closes)"),
    Var("STEPLINE_BODY_IDLE_TIMEOUT", "body_idle_timeout", float, 10.0, "seconds a request body may pause between chunks (408)"),
    Var("STEPLINE_BODY_TIMEOUT", "body_timeout", float, 60.0, "seconds a whole request body may take (408)"),
    Var("STEPLINE_MAX_BODY_BUFFER", "max_body_buffer", int, 256 * 1024 * 1024, "request body bytes one server process holds at once, all requests together (503 with Retry-After past it; at least the largest ingest body)"),
    Var("STEPLINE_MAX_API_BODY_BYTES", "max_api_body_bytes", int, 64 * 1024, "largest body of an API call other than event ingest (413 past it)"),
    Var("STEPLINE_MAX_CONNECTIONS", "max_connections", int, 1000, "open connections the server keeps, at most the open-file limit less 100 (past it the longest-idle one closes)"),
    Var("STEPLINE_MAX_STREAMS_PER_RUN", "max_streams_per_run", int, 10, "run streams (Server-Sent Events) open at once for one run; all runs together hold at most half of STEPLINE_MAX_CONNECTIONS (429 / 503 past them)"),
    Var("STEPLINE_AUTH_FAILURES", "auth_failures", int, 5, "wrong keys or tokens one client may send before backing off 1 s, doubling to 15 min (429)"),
    Var("STEPLINE_AUTH_GLOBAL_FAILURES", "auth_global_failures", int, 100, "wrong keys or tokens all clients together may send a minute (429 past it)"),
    Var("STEPLINE_LOOP", "loop", str, "auto", "event loop of stepline dev/start/worker: auto (uvloop where installed), uvloop, asyncio"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    db: str = ".stepline/stepline.db"
    host: str = "127.0.0.1"
    port: int = 8288
    event_key: str = ""
    api_token: str = ""
    signing_key: str = ""
    inngest_signing_key: str = ""
    inngest_signing_key_fallback: str = ""
    concurrency: int = 500
    sync_threads: int = 32
    connect_wait: float = 30.0
    lease: float = 30.0
    fencing: bool = True
    handoff: bool = True
    retry_base: float = 1.0
    retry_max: float = 600.0
    unreachable_backoff: tuple[float, ...] = UNREACHABLE_BACKOFF
    poll_interval: float = 0.0
    max_event_bytes: int = 1024 * 1024
    max_events_per_request: int = 5000
    max_body_buffer: int = 256 * 1024 * 1024
    max_step_output_bytes: int = 4 * 1024 * 1024
    max_run_state_bytes: int = 32 * 1024 * 1024
    max_steps_per_run: int = 1000
    max_lease_losses: int = 10
    max_message_bytes: int = 512 * 1024
    max_json_depth: int = 64
    max_name_bytes: int = 256
    max_id_bytes: int = 256
    max_user_id_bytes: int = 256
    retention: float = 7 * 86400.0
    usage_retention: float = 400 * 86400.0
    retention_interval: float = 60.0
    log_level: str = "INFO"
    log_format: str = "text"
    loop: str = "auto"
    allowed_hosts: str = ""
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    body_idle_timeout: float = 10.0
    body_timeout: float = 60.0
    max_api_body_bytes: int = 64 * 1024
    max_connections: int = 1000
    max_streams_per_run: int = 10
    auth_failures: int = 5
    auth_global_failures: int = 100

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``STEPLINE_*`` variables; a bad value names the variable and what it takes."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in VARS:
        raw = environ.get(var.name)
        if raw is None or raw == "":
            continue
        try:
            if var.kind is bool:
                values[var.field] = _flag(raw)
            elif var.kind is int:
                values[var.field] = int(raw)
            elif var.kind is float:
                values[var.field] = _duration(raw, var.name)
            elif var.kind is tuple:
                values[var.field] = tuple(_duration(part, var.name) for part in raw.split(","))
            else:
                values[var.field] = raw
        except (ValueError, errors.ConfigError) as exc:
            expected = _EXPECTED.get(var.kind) or var.kind.__name__
            raise errors.ConfigError(f"{var.name}={raw!r}: expected {expected} ({var.help})") from exc
        value = values[var.field]
        if var.kind in (int, float) and (value <= 0 if var.field in _POSITIVE else value < 0):
            least = "above 0" if var.field in _POSITIVE else "0 or more"
            raise errors.ConfigError(f"{var.name}={raw!r}: expected a value {least} ({var.help})")
        if var.field == "port" and value > 65535:
            raise errors.ConfigError(f"{var.name}={raw!r}: expected a port, 0 to 65535 ({var.help})")
    return Settings(**values)


# Sizes, counts and times for which 0 means nothing would work (a worker that never runs
# anything, leases that expire as they are taken, requests refused whatever they hold).
_POSITIVE = frozenset({
    "concurrency", "sync_threads", "lease", "retry_max", "max_event_bytes", "max_events_per_request",
    "max_step_output_bytes", "max_run_state_bytes", "max_steps_per_run", "max_message_bytes", "max_lease_losses", "max_json_depth", "max_name_bytes", "max_id_bytes",
    "max_user_id_bytes", "max_header_bytes", "header_timeout", "body_idle_timeout", "body_timeout",
    "max_body_buffer", "max_api_body_bytes", "max_connections",
})


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_EXPECTED: dict[type, str] = {
    bool: "one of " + ", ".join(_TRUE + _FALSE),
    float: "seconds, or a duration like 30s, 5m, 7d",
    tuple: "durations separated by commas, like 15s,30s,1m",
}


def _duration(raw: str, name: str) -> float:
    raw = raw.strip()
    return durations.parse(float(raw) if raw.replace(".", "", 1).isdigit() else raw, field=name)


def _flag(raw: str) -> bool:
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ValueError(raw)


def help_text() -> str:
    lines = ["Environment variables:"]
    for var in VARS:
        lines.append(f"  {var.name:<32} {var.help} (default: {var.default!r})")
    return "\n".join(lines)
