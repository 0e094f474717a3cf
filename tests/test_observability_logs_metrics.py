"""JSON log lines that say which run they belong to, and the counters /metrics gains.

The logs come from a real ``stepline worker`` process (``STEPLINE_LOG_FORMAT=json``):
every line it writes must be one JSON object, and the lines logged inside a run (by the
function, by an async or a sync step body, by the engine about a retry) carry its run
id, function, step and attempt. The counters are read from ``/metrics`` of a server on
loopback while a worker (another engine on the same database) retries steps and
functions and loses a lease as tests/test_fencing.py provokes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from typing import Any

import httpx

import stepline
from tests.helpers import LongCall, eventually, runs_for_event, wait_run
from tests.server_live import serve  # noqa: F401 - fixture
from tests.test_crash import REPO
from tests.test_fencing import execute

# --- JSON logs from a worker process ---------------------------------------------------------

logged_app = stepline.App("obs-logs")
user_log = logging.getLogger("user.code")


async def _async_body() -> str:
    user_log.info("inside the async step")
    return "a"


def _sync_body() -> str:
    user_log.info("inside the sync step")  # in a thread of the worker's pool
    return "s"


@logged_app.function(id="logged", trigger=stepline.TriggerEvent("obs/log"), retries=1)
async def logged(ctx: stepline.Context) -> str:
    user_log.info("in the function, between steps")
    await ctx.step.run("async-step", _async_body)
    await ctx.step.run("sync-step", _sync_body)

    async def flaky() -> str:
        user_log.info("inside the flaky step")
        if ctx.attempt == 0:
            raise RuntimeError("the first attempt fails")
        return "ok"

    return await ctx.step.run("flaky", flaky)


def _worker_env(db_url: str, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src"), REPO]),
        STEPLINE_POLL_INTERVAL="0.05",
        STEPLINE_RETRY_BASE="0.02",
        STEPLINE_LOG_LEVEL="INFO",
        **extra,
    )


async def test_json_log_lines_parse_and_carry_the_run(make_engine: Any, db_url: str, tmp_path: Any) -> None:
    log_path = tmp_path / "worker.log"  # its log lines (stderr); stdout has the start-up banner
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stepline.cli", "worker", "tests.test_observability_logs_metrics:logged_app", "--db", db_url],
            env=_worker_env(db_url, STEPLINE_LOG_FORMAT="json"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=log_file,
        )
    try:
        sender = await make_engine(run_worker=False)
        await eventually(lambda: _registered(sender, "logged"), timeout=30, what="the worker to register its functions",
                         diagnose=lambda: log_path.read_text())
        event_id = await sender.send({"name": "obs/log", "data": {}})
        (run,) = await runs_for_event(sender, event_id)
        assert (await wait_run(sender, run["id"], timeout=30))["status"] == "completed"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

    def one(message: str, **fields: Any) -> dict[str, Any]:
        found = [r for r in records if r["message"] == message and all(r.get(k) == v for k, v in fields.items())]
        assert found, f"no line {message!r} with {fields} in:\n" + "\n".join(lines)
        return found[0]

    run_fields = {"run_id": run["id"], "function_id": "logged"}
    assert "step" not in one("in the function, between steps", **run_fields, attempt=0)
    one("inside the async step", **run_fields, step="async-step", attempt=1)
    one("inside the sync step", **run_fields, step="sync-step", attempt=1)
    one("inside the flaky step", **run_fields, step="flaky", attempt=1)
    one("inside the flaky step", **run_fields, step="flaky", attempt=2)
    retried = [r for r in records if r["logger"] == "stepline.executor" and "retrying" in r["message"]]
    assert retried and retried[0]["run_id"] == run["id"] and retried[0]["step"] == "flaky"  # the engine's own line too


async def _registered(engine: Any, function_id: str) -> bool:
    return any(f["id"] == function_id for f in await engine.store.functions_overview())


def test_an_unknown_log_format_is_refused_naming_the_variable(db_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stepline.cli", "worker", "--db", db_url],
        env=_worker_env(db_url, STEPLINE_LOG_FORMAT="xml"), cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "STEPLINE_LOG_FORMAT='xml': expected one of text, json" in done.stderr


def test_text_log_lines_write_control_and_bidi_characters_as_escapes() -> None:
    """A message quoting an event's data (an error, a name stored before the checks at ingest)
    forged log lines and drove the terminal in the text format; a traceback keeps its lines."""
    script = (
        "import logging\n"
        "from stepline.observability import logs\n"
        "logs.configure('INFO', 'text')\n"
        "log = logging.getLogger('stepline.test')\n"
        "log.warning('step failed (%s); retrying', 'bad\\n2026 ERROR forged\\x1b[2J\\u202eexe josé 日本')\n"
        "try:\n    raise ValueError('x')\nexcept ValueError:\n    log.exception('with a traceback')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_worker_env(""), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].endswith("stepline.test: step failed (bad\\n2026 ERROR forged\\x1b[2J\\u202eexe josé 日本); retrying"), lines
    assert lines[1].endswith("stepline.test: with a traceback") and lines[2] == "Traceback (most recent call last):", lines


# --- /metrics: retries and lease losses ------------------------------------------------------

retry_app = stepline.App("obs-retries")
_failures: dict[str, int] = {}


@retry_app.function(id="flaky-step", trigger=stepline.TriggerEvent("obs/flaky-step"), retries=3)
async def flaky_step(ctx: stepline.Context) -> str:
    async def call() -> str:
        seen = _failures.get(ctx.run_id, 0)
        if seen < 2:
            _failures[ctx.run_id] = seen + 1
            raise RuntimeError("the provider is down")
        return "ok"

    return await ctx.step.run("call", call)


@retry_app.function(id="flaky-fn", trigger=stepline.TriggerEvent("obs/flaky-fn"), retries=2)
async def flaky_fn(ctx: stepline.Context) -> str:
    if ctx.attempt == 0:
        raise RuntimeError("the function fails once, outside any step")
    return "ok"


def _metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


async def test_metrics_count_step_and_function_retries_per_function(serve: Any) -> None:  # noqa: F811
    server = serve(retry_app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        before = (await client.get("/metrics")).text
        assert "# TYPE stepline_retries_total counter" in before
        assert _metric(before, "stepline_retries_total", function="flaky-step", kind="step") is None
        for name in ("obs/flaky-step", "obs/flaky-fn"):
            await client.post("/e/dev", json={"name": name, "data": {}})

        async def counted() -> str | None:
            text = (await client.get("/metrics")).text
            step = _metric(text, "stepline_retries_total", function="flaky-step", kind="step")
            function = _metric(text, "stepline_retries_total", function="flaky-fn", kind="function")
            return text if (step, function) == (2.0, 1.0) else None

        text = await eventually(counted, what="two step retries and one function retry in /metrics")
        assert _metric(text, "stepline_retries_total", function="flaky-step", kind="function") is None

        await client.post("/e/dev", json={"name": "obs/flaky-fn", "data": {}})
        await eventually(
            lambda: _moved(client, "stepline_retries_total", 2.0, function="flaky-fn", kind="function"),
            what="the function retry counter to move on",
        )


async def _moved(client: httpx.AsyncClient, name: str, value: float, **labels: str) -> bool:
    return _metric((await client.get("/metrics")).text, name, **labels) == value


async def test_metrics_count_a_lease_lost_on_another_process(make_engine: Any, serve: Any, db_url: str) -> None:  # noqa: F811
    long_call = LongCall(30)
    app = stepline.App("obs-lease")

    @app.function(id="held", trigger=stepline.TriggerEvent("obs/held"), retries=0)
    async def held(ctx: stepline.Context) -> str:
        return str(await ctx.step.run("call", long_call))

    server = serve(run_worker=False)  # an API server; the run is on a worker elsewhere
    worker = await make_engine(app, lease=2.0)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert _metric((await client.get("/metrics")).text, "stepline_lease_losses_total", function="held", cause="taken_over") is None
        event_id = await worker.send({"name": "obs/held", "data": {}})
        await long_call.wait_started()
        (run,) = await runs_for_event(worker, event_id)
        # Another worker reclaimed it (as after this one stalled past its lease).
        execute(db_url, "UPDATE queue SET lease_owner = 'w-other', lease_epoch = lease_epoch + 1 WHERE run_id = ?", (run["id"],))
        await long_call.wait_interrupted()
        await eventually(
            lambda: _moved(client, "stepline_lease_losses_total", 1.0, function="held", cause="taken_over"),
            what="the lease loss in the API server's /metrics",
        )


# --- /metrics: every series is documented -----------------------------------------------------


def _monitoring_guide() -> str:
    with open(os.path.join(REPO, "docs", "deployment.md"), encoding="utf-8") as doc:
        text = doc.read()
    return text.split("## What to monitor", 1)[1].split("\n## ", 1)[0]


async def test_every_series_metrics_emits_is_in_the_monitoring_guide(serve: Any) -> None:  # noqa: F811
    """docs/deployment.md "What to monitor" says what each series of a real scrape is; a
    paused function and a run make every optional series appear."""
    server = serve(retry_app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/api/v1/functions/flaky-fn/pause", json={"mode": "queue"})
        await client.post("/e/dev", json={"name": "obs/flaky-step", "data": {}})
        await eventually(lambda: _moved(client, "stepline_retries_total", 2.0, function="flaky-step", kind="step"),
                         what="the step's retries in /metrics")
        text = (await client.get("/metrics")).text
    series = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    sampled = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert sampled <= series and {"stepline_up", "stepline_retention_sweeping", "stepline_function_paused"} <= series
    guide = _monitoring_guide()
    assert sorted(name for name in series if f"`{name}" not in guide) == []


def test_json_log_lines_escape_what_would_drive_a_terminal() -> None:
    """JSON lines are read in terminals too (``tail -f``): C1 controls (U+009B starts a terminal
    sequence), DEL, line and paragraph separators and bidi overrides were written raw (JSON
    escapes only C0). They are written as JSON escapes now: the same string to a parser."""
    script = (
        "import logging\n"
        "from stepline.observability import logs\n"
        "logs.configure('INFO', 'json')\n"
        "logging.getLogger('stepline.test').warning('bad %s', '\\x9b2J\\x7f\\u2028forged\\u202eexe josé 日本')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_worker_env(""), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stderr.splitlines()[0]
    assert not any(c in line for c in "\x9b\x7f\u2028\u202e"), ascii(line)
    assert "josé 日本" in line and json.loads(line)["message"] == "bad \x9b2J\x7f\u2028forged\u202eexe josé 日本"
