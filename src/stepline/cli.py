"""``stepline``: dev | start | worker | send | runs | migrate | admin."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import click

from stepline import errors, eventloop, gctuning
from stepline import settings as settings_mod
from stepline.app import App
from stepline.cli_api import ApiError, base_url, call, url_option
from stepline.store.records import TERMINAL, RunStatus

DEFAULT_APP = "stepline.examples.app:app"
log = logging.getLogger("stepline.cli")


def _env_help() -> str:
    from stepline.llm import providers

    llm = ["LLM providers (stepline.llm):"] + [f"  {name:<32} {text}" for name, text in providers.ENV_VARS]
    client = [
        "Commands that talk to a server (send, runs, functions, budgets, apps):",
        f"  {'STEPLINE_URL':<32} the server's URL, as --url (default: http://STEPLINE_HOST:STEPLINE_PORT)",
        f"  {'STEPLINE_API_TOKEN':<32} sent as their bearer token when set",
    ]
    # "\b" keeps click from re-wrapping each paragraph
    return "\b\n" + settings_mod.help_text() + "\n\n\b\n" + "\n".join(client) + "\n\n\b\n" + "\n".join(llm)


ENV_HELP = _env_help()


def load_apps(specs: Sequence[str]) -> list[App]:
    """``module:attribute`` → App (the attribute may also be a list of Apps)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    apps: list[App] = []
    for spec in specs:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise click.BadParameter(f"{spec!r}: write APP as module:attribute, e.g. myproject.jobs:app")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise click.BadParameter(f"{spec!r}: cannot import {module_name!r}: {exc}") from exc
        except errors.SteplineError as exc:  # a function declared wrongly, e.g. a CEL expression that does not compile
            raise click.ClickException(f"{spec}: {_first_line(exc)}; fix it in {module_name} and start again") from exc
        value = getattr(module, attribute, None)
        found = value if isinstance(value, (list, tuple)) else [value]
        if not found or not all(isinstance(a, App) for a in found):
            raise click.BadParameter(f"{spec!r}: {attribute!r} is not a stepline.App in {module_name}")
        apps.extend(a for a in found if isinstance(a, App))  # all are, as checked: this tells the type checker
    return apps


def _settings(**overrides: Any) -> settings_mod.Settings:
    try:
        return settings_mod.from_env().replace(**overrides)
    except errors.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _setup_logging(level: str) -> None:
    """Text or JSON lines (STEPLINE_LOG_FORMAT); inside a run each carries its run, function, step and attempt."""
    from stepline.observability import logs

    try:
        logs.configure(level, settings_mod.from_env().log_format)
    except errors.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the engine's own


def _stopping_already(signum: int, frame: Any) -> None:
    """The handler uvicorn restores, and calls, after serving (see ``_serve``)."""


def _warn_of_weak_secrets(settings: settings_mod.Settings) -> None:
    # The server's modules load only for commands that serve.
    from stepline.server import auth_limits

    for name, value in (("STEPLINE_EVENT_KEY", settings.event_key), ("STEPLINE_API_TOKEN", settings.api_token)):
        if not auth_limits.is_strong(value):
            log.warning(
                "%s has %d characters: with fewer than %d, a client sending wrong values from the same address (every "
                "client, behind a proxy) can hold the right one back for up to 15 min; make one with `openssl rand -hex 16`",
                name, len(value.strip()), auth_limits.STRONG_LENGTH,
            )


async def _serve(
    apps: list[App], settings: settings_mod.Settings, *, dev: bool, run_server: bool, run_worker: bool, sdk: dict[str, Any] | None = None,
    extra_routes: list[Any] | None = None,
) -> None:
    import uvicorn

    from stepline import inngest
    from stepline.engine import Engine
    from stepline.server import create_app, serving
    from stepline.server.common import ServerOptions
    from stepline.store import migrate, open_store, wait_for_database

    wait_for_database(settings.db, settings.connect_wait)  # a database restarting as this process starts
    # Migrating takes yoyo's lock, a write: only when there is something to apply, so a
    # database that refuses writes is reported at once rather than after the lock's timeout.
    store = open_store(settings.db, migrate_now=dev and bool(migrate.pending(settings.db)))
    engine = Engine(store, settings, apps)
    sdk_apps = inngest.attach(engine, inngest.InngestOptions(
        dev=dev, signing_key=settings.inngest_signing_key, signing_key_fallback=settings.inngest_signing_key_fallback, **(sdk or {})
    ))  # functions of Inngest SDK apps, kept in the store
    await engine.start(run_worker=run_worker)
    await sdk_apps.start()
    run_ends = None
    if dev:  # a line for each run's end, as it happens
        from stepline import cli_run_log

        run_ends = asyncio.create_task(cli_run_log.follow_run_ends(store))
    try:
        if run_server:
            options = ServerOptions(dev=dev, event_key=settings.event_key, api_token=settings.api_token)
            app = create_app(engine, options, extra_routes=extra_routes)
            server = uvicorn.Server(serving.uvicorn_config(app, settings))
            sock = serving.listening_socket(settings)
            names = ", ".join(f.id for a in apps for f in a.functions) or "none"
            port = sock.getsockname()[1]  # the one given, or the one chosen for port 0
            click.echo(
                f"stepline {'dev' if dev else 'start'}: http://{settings.host}:{port}  db={settings.db}  "
                f"functions: {names}  loop: {eventloop.kind()}"
            )
            if not dev:
                _warn_of_weak_secrets(settings)
            # uvicorn hands the signal that stopped it back to the process once it has
            # served: SIGTERM's default action would then end the process before the engine
            # below drains (runs left leased, steps in flight run again elsewhere). While it
            # serves, that hand-back finds nothing left to do; a second signal during the
            # drain acts as usual.
            previous = {sig: signal.signal(sig, _stopping_already) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                await server.serve(sockets=[sock])
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            click.echo(f"stepline worker {engine.worker.id if engine.worker else ''}: db={settings.db}  loop: {eventloop.kind()}")
            await stop.wait()
    finally:
        if run_ends is not None:
            run_ends.cancel()
        await sdk_apps.stop()
        await engine.stop()
    _leave_steps_still_running()


@click.group(epilog=ENV_HELP)
@click.version_option(package_name="stepline")
def main() -> None:
    """Stepline: durable background functions for Python web apps."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_only_database(db: str, exc: BaseException) -> str | None:
    """The one-line explanation when ``exc`` (or anything it was raised from) says the
    database refuses writes; None otherwise."""
    from stepline.store.migrate import redact

    cause = None
    seen: BaseException | None = exc
    while seen is not None:  # the innermost one says it plainest
        if type(seen).__name__ == "ReadOnlySqlTransaction" or "readonly database" in str(seen):
            cause = seen
        seen = seen.__cause__ or seen.__context__
    if cause is None:
        return None
    return (
        f"the database {redact(db)} is read-only ({_first_line(cause)}); make it writable by this user "
        "(SQLite: the file and its directory; PostgreSQL: a role that may write, with "
        "default_transaction_read_only off), or point --db / STEPLINE_DB at a writable one"
    )


def _run(main_coro: Any, settings: settings_mod.Settings) -> None:
    """Run a long-lived command on the configured loop. A Stepline error, or a database that
    refuses writes, becomes a one-line message; other errors keep their traceback."""
    gctuning.tune_for_worker()  # the apps are loaded: what exists now lives as long as the process
    try:
        eventloop.run(main_coro, settings.loop)
    except errors.SteplineError as exc:
        raise click.ClickException(_read_only_database(settings.db, exc) or _first_line(exc)) from exc
    except Exception as exc:
        problem = _read_only_database(settings.db, exc)
        if problem is None:
            raise
        raise click.ClickException(problem) from exc


def _leave_steps_still_running() -> None:
    """Synchronous steps still running in their threads once the engine stopped (their runs
    were handed back at the end of the grace) would hold the loop's close and the
    interpreter's exit until they return, an hour for some: the process exits without
    them, saying so."""
    threads = [t for t in threading.enumerate() if t.name.startswith(("stepline-step", "stepline-fn"))]
    deadline = time.monotonic() + 0.2  # idle ones are on their way out
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threads if t.is_alive()]
    if not stuck:
        return
    click.echo(f"stepline: left {len(stuck)} thread(s) of synchronous steps still running after the grace (their "
               "runs were handed back to the queue)", err=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _common_server_options(fn: Any) -> Any:
    fn = click.option("--db", default=None, help="SQLite path or postgresql:// URL (STEPLINE_DB).")(fn)
    fn = click.option("--port", type=click.IntRange(min=0, max=65535), default=None, help="Port (STEPLINE_PORT, default 8288).")(fn)
    fn = click.option("--host", default=None, help="Bind address (STEPLINE_HOST, default 127.0.0.1).")(fn)
    return fn


@main.command(epilog=ENV_HELP)
@click.argument("apps", nargs=-1)
@_common_server_options
@click.option("-u", "--sdk-url", multiple=True, help="URL of an Inngest SDK app to sync (repeatable).")
@click.option("--no-discovery", is_flag=True, help="Do not look for Inngest SDK apps on the usual local ports.")
@click.option("--no-poll", is_flag=True, help="Do not re-sync known Inngest SDK apps every few seconds.")
def dev(apps: tuple[str, ...], db: str | None, port: int | None, host: str | None, sdk_url: tuple[str, ...], no_discovery: bool, no_poll: bool) -> None:
    """Server and worker in one process, SQLite by default, no keys (loopback only)."""
    settings = _settings(db=db, port=port, host=host)
    if not _is_loopback(settings.host):
        raise click.UsageError(
            f"`stepline dev` has no authentication, so it binds loopback only, not {settings.host!r}; "
            "to serve other machines use `stepline start` with STEPLINE_EVENT_KEY and STEPLINE_API_TOKEN"
        )
    _setup_logging(settings.log_level)
    from stepline import cli_dev_models

    dev_models = cli_dev_models.start(os.environ)  # SIMULATED models when no provider key is set
    if dev_models is not None:
        click.echo(dev_models.notice)
    loaded = load_apps(apps or [DEFAULT_APP])
    with contextlib.suppress(KeyboardInterrupt):
        sdk = {"sdk_urls": sdk_url, "discovery": not no_discovery, "poll": not no_poll}
        shared = [dev_models.route()] if dev_models is not None else []  # other processes find the SIMULATED models there
        _run(_serve(loaded, settings, dev=True, run_server=True, run_worker=True, sdk=sdk, extra_routes=shared), settings)


@main.command(epilog=ENV_HELP)
@click.argument("apps", nargs=-1)
@_common_server_options
@click.option("--no-worker", is_flag=True, help="Serve the API only (workers run elsewhere).")
def start(apps: tuple[str, ...], db: str | None, port: int | None, host: str | None, no_worker: bool) -> None:
    """Production server, and a worker for the APPs' functions and synced Inngest SDK apps' unless --no-worker. Needs an event key and an API token."""
    settings = _settings(db=db, port=port, host=host)
    _setup_logging(settings.log_level)
    missing = [n for n, v in (("STEPLINE_EVENT_KEY", settings.event_key), ("STEPLINE_API_TOKEN", settings.api_token)) if not v.strip()]
    if missing:
        raise click.ClickException(
            f"`stepline start` is the production server and needs {' and '.join(missing)} (blank or "
            "whitespace-only values do not count); set them, or use `stepline dev` on your own machine"
        )
    loaded = load_apps(apps)
    with contextlib.suppress(KeyboardInterrupt):
        _run(_serve(loaded, settings, dev=False, run_server=True, run_worker=not no_worker), settings)  # SDK apps need a worker too


@main.command(epilog=ENV_HELP)
@click.argument("apps", nargs=-1)
@click.option("--db", default=None, help="SQLite path or postgresql:// URL (STEPLINE_DB).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Runs executed at once (STEPLINE_CONCURRENCY).")
def worker(apps: tuple[str, ...], db: str | None, concurrency: int | None) -> None:
    """A worker process: executes the APPs' functions (and synced Inngest SDK apps'); no HTTP server."""
    settings = _settings(db=db, concurrency=concurrency)
    _setup_logging(settings.log_level)
    loaded = load_apps(apps)
    with contextlib.suppress(KeyboardInterrupt):
        _run(_serve(loaded, settings, dev=False, run_server=False, run_worker=True), settings)


@main.command()
@click.option("--db", default=None, help="SQLite path or postgresql:// URL (STEPLINE_DB).")
@click.option("--dry-run", is_flag=True, help="List the pending migrations and what each changes; apply nothing.")
def migrate(db: str | None, dry_run: bool) -> None:
    """Apply pending schema migrations."""
    from stepline.store import migrate as migrate_mod

    settings = _settings(db=db)
    if dry_run:
        todo = migrate_mod.describe_pending(settings.db)
        click.echo(f"{len(todo)} migration(s) pending{':' if todo else ''}")
        for migration_id, summary in todo:
            click.echo(f"  {migration_id}: {summary}")
        return
    try:
        applied = migrate_mod.apply(settings.db)
    except Exception as exc:
        problem = _read_only_database(settings.db, exc)
        if problem is None and isinstance(exc, errors.SteplineError):
            problem = _first_line(exc)  # a full disk, a damaged file: said in one line
        if problem is None:
            raise
        raise click.ClickException(problem) from exc
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


@main.command()
@click.argument("name")
@click.option("--data", default="{}", help="The event's data as a JSON object.")
@click.option("--id", "event_id", default=None, help="De-duplication id (24 h).")
@click.option("--event-key", default=None, help="Event key (STEPLINE_EVENT_KEY; 'dev' in dev mode).")
@click.option("--wait", is_flag=True, help="Wait for the runs it started; print their status and outputs (exit 1 if one did not complete).")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds --wait waits at most.")
@click.option("--json", "as_json", is_flag=True, help="Print the event id and its runs as JSON.")
@url_option
def send(
    name: str, data: str, event_id: str | None, event_key: str | None, wait: bool, timeout: float, as_json: bool,
    url: str | None,
) -> None:
    """Send one event; prints its id (stdout) and the runs it started (stderr)."""
    from stepline import cli_show
    from stepline.client import Client

    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--data is not valid JSON: {exc}") from exc
    event: dict[str, Any] = {"name": name, "data": payload}
    if event_id:
        event["id"] = event_id
    key = event_key or _settings().event_key or "dev"
    try:
        with Client(base_url(url), key) as client:
            ids = client.send(event)
    except errors.SteplineError as exc:
        raise click.ClickException(str(exc)) from exc
    # The runs an event starts commit with it, so they are there at once (reading them needs
    # the API token in production: STEPLINE_API_TOKEN).
    try:
        detail = call("GET", url, f"/api/v1/events/{ids[0]}")
    except click.ClickException as exc:
        if wait or as_json:
            raise
        click.echo(ids[0])
        click.echo(f"(the runs it started are not shown: {exc.message})", err=True)
        return
    runs_ = detail["runs"]
    if wait and not as_json:
        click.echo(ids[0])  # before the wait: the id is known, whatever the wait comes to
        for line in cli_show.started_lines(detail):
            click.echo(line, err=True)
    if wait:
        runs_ = [_wait_for_run(url, r["id"], timeout) for r in runs_]
    if as_json:
        click.echo(json.dumps({"event_id": ids[0], "runs": runs_, "why_no_runs": detail.get("why_no_runs")}, indent=2))
    else:
        if not wait:
            click.echo(ids[0])
        if wait:
            for run in runs_:
                click.echo("\n".join(cli_show.outcome_lines(run)))
        else:
            for line in cli_show.started_lines(detail):
                click.echo(line, err=True)
    if wait and (not runs_ or any(r["status"] != RunStatus.COMPLETED for r in runs_)):
        sys.exit(1)


def _wait_for_run(url: str | None, run_id: str, timeout: float) -> dict[str, Any]:
    """The run once it has ended; a ClickException after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        run: dict[str, Any] = call("GET", url, f"/api/v1/runs/{run_id}")
        if run["status"] in TERMINAL:
            return run
        if time.monotonic() >= deadline:
            raise click.ClickException(f"run {run_id} is still {run['status']} after {timeout:g} s; `stepline runs show {run_id}` follows it")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


@main.group()
def runs() -> None:
    """List, show, cancel and replay runs (through the server's API)."""


@runs.command("list")
@click.option("--function", "function_id", default=None)
@click.option("--status", default=None)
@click.option("--limit", type=int, default=20)
@click.option("--json", "as_json", is_flag=True)
@url_option
def runs_list(function_id: str | None, status: str | None, limit: int, as_json: bool, url: str | None) -> None:
    """Newest runs first."""
    body = call("GET", url, "/api/v1/runs", function_id=function_id, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps(body["data"], indent=2))
        return
    click.echo(f"{'RUN ID':<28} {'FUNCTION':<24} {'STATUS':<10} {'WHY':<20} {'PROGRESS':>8}  CREATED")
    for run in body["data"]:
        progress = "" if run["progress"] is None else f"{run['progress']:.0f}%"
        why = "" if run["status"] in TERMINAL else run["wait_reason"] or ""
        click.echo(
            f"{run['id']:<28} {run['function_id'][:24]:<24} {run['status']:<10} {why:<20} {progress:>8}  {run['created_at']}"
        )


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@url_option
def runs_show(run_id: str, as_json: bool, url: str | None) -> None:
    """One run with its steps, attempts, model calls and output (given an event id: the runs it started)."""
    from stepline import cli_show

    try:
        run = call("GET", url, f"/api/v1/runs/{run_id}")
    except ApiError as exc:
        event = _get_if_found(url, f"/api/v1/events/{run_id}") if exc.status == 404 else None
        if event is None:
            raise
        if as_json:
            click.echo(json.dumps(event, indent=2))
        else:
            click.echo("\n".join(cli_show.event_lines(event)))
        return
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo("\n".join(cli_show.run_lines(run)))


def _get_if_found(url: str | None, path: str) -> Any:
    """``GET path``, or None when the server answers 404."""
    try:
        return call("GET", url, path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _act_on_run(url: str | None, run_id: str, action: str, command: str) -> Any:
    """``POST /api/v1/runs/{run_id}/{action}``; given an event id, say so and name its runs."""
    try:
        return call("POST", url, f"/api/v1/runs/{run_id}/{action}")
    except ApiError as exc:
        event = _get_if_found(url, f"/api/v1/events/{run_id}") if exc.status == 404 else None
        if event is None:
            raise
        runs_ = ", ".join(r["id"] for r in event["runs"]) or "none"
        hint = f"; e.g. stepline runs {command} {event['runs'][0]['id']}" if event["runs"] else ""
        raise click.ClickException(f"{run_id} is an event id ({event['name']}), not a run id: its runs are {runs_}{hint}") from None


@runs.command("cancel")
@click.argument("run_id")
@url_option
def runs_cancel(run_id: str, url: str | None) -> None:
    """Cancel a run (it stops at its next step)."""
    body = _act_on_run(url, run_id, "cancel", "cancel")
    click.echo(f"{body['id']}: {body['status']}")


@runs.command("rerun")
@click.argument("run_id")
@url_option
def runs_rerun(run_id: str, url: str | None) -> None:
    """Start a new run that reuses the committed steps of a failed or cancelled run."""
    body = _act_on_run(url, run_id, "rerun-from-failed-step", "rerun")
    click.echo(body["id"])


@runs.command("replay")
@click.argument("run_id")
@url_option
def runs_replay(run_id: str, url: str | None) -> None:
    """Start a new run of the same function with the same event."""
    body = _act_on_run(url, run_id, "replay", "replay")
    click.echo(body["id"])


main.add_command(importlib.import_module("stepline.inngest.cli").apps)  # `stepline apps`: Inngest SDK apps
main.add_command(importlib.import_module("stepline.cli_admin").admin)  # `stepline admin`: retention, sizes, backups
main.add_command(importlib.import_module("stepline.cli_budgets").budgets)  # `stepline budgets`: spend, limits, overrides
main.add_command(importlib.import_module("stepline.cli_functions").functions)  # `stepline functions`: pause, invoke, replay


if __name__ == "__main__":
    main()
