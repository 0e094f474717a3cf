"""``stepline functions``: list | show | pause | resume | invoke | replay-failed, through the
server's API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from stepline import shown_text
from stepline.budgets import usd
from stepline.cli_api import call, url_option


def _path(function_id: str, action: str = "") -> str:
    return f"/api/v1/functions/{quote(function_id, safe='')}{'/' + action if action else ''}"


def _paused(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    reason = f": {shown_text.escape(p['reason'])}" if p.get("reason") else ""
    return f"paused ({p['mode']}{reason}) since {p['paused_at']}"


def _state(f: dict[str, Any]) -> str:
    if f.get("archived"):
        return "archived (its app no longer registers it; its runs wait for it to come back)"
    return _paused(f.get("paused")) or "active"


@click.group()
def functions() -> None:
    """Registered functions: counts, pause and resume, invoke, replay failed runs."""


@functions.command("list")
@click.option("--json", "as_json", is_flag=True)
@url_option
def list_functions(as_json: bool, url: str | None) -> None:
    """Every function with its live counts and whether it is paused."""
    data = call("GET", url, "/api/v1/functions")["data"]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{'FUNCTION':<28} {'QUEUED':>6} {'RUNNING':>7} {'SLEEPING':>8} {'WAITING':>7} {'FAILED 1H':>9}  STATE")
    for f in data:
        c = f["counts"]
        click.echo(
            f"{f['id'][:28]:<28} {c['queued']:>6} {c['running']:>7} {c['sleeping']:>8} {c['waiting']:>7} "
            f"{c['failed_last_hour']:>9}  {_state(f)}"
        )


@functions.command("show")
@click.argument("function_id")
@click.option("--window", default="24h", show_default=True, help="Window of outcomes, durations and cost.")
@click.option("--json", "as_json", is_flag=True)
@url_option
def show(function_id: str, window: str, as_json: bool, url: str | None) -> None:
    """One function: triggers, pause, counts, p50/p95, cost, newest runs."""
    f = call("GET", url, _path(function_id, "summary"), window=window)
    if as_json:
        click.echo(json.dumps(f, indent=2))
        return
    triggers = ", ".join(t.get("event") or f"cron {t.get('cron')}" for t in f["triggers"])
    click.echo(f"function {f['id']}  app {f['app_id']}  triggers {triggers}")
    if f["paused"]:
        click.echo(_paused(f["paused"]))
    c = f["counts"]
    click.echo(f"now: {c['queued']} queued, {c['running']} running, {c['sleeping']} sleeping, {c['waiting']} waiting")
    click.echo(
        f"last {window}: {c['completed']} completed, {c['failed']} failed, {c['cancelled']} cancelled; "
        f"p50 {f['p50_ms'] if f['p50_ms'] is not None else '—'} ms, p95 {f['p95_ms'] if f['p95_ms'] is not None else '—'} ms; "
        f"{f['usage']['calls']} model call(s), {f['usage']['total_tokens']} tokens, {usd(f['usage']['cost_usd'])}"
    )
    for r in f["recent_runs"][:10]:
        click.echo(f"  {r['id']}  {r['status']:<10} {r['created_at']}")


@functions.command("pause")
@click.argument("function_id")
@click.option("--mode", type=click.Choice(["queue", "skip"]), default="queue", show_default=True,
              help="queue: its runs wait until resumed; skip: its events and cron ticks start no runs.")
@click.option("--reason", default=None, help="Why (shown beside the pause).")
@url_option
def pause(function_id: str, mode: str, reason: str | None, url: str | None) -> None:
    """Pause a function on every process (it stays paused across restarts)."""
    body = call("POST", url, _path(function_id, "pause"), json_body={"mode": mode, "reason": reason})
    click.echo(f"{function_id}: {_paused(body['paused'])}")


@functions.command("resume")
@click.argument("function_id")
@url_option
def resume(function_id: str, url: str | None) -> None:
    """Resume a paused function; the runs it held start in the order they came."""
    body = call("POST", url, _path(function_id, "resume"))
    state = "resumed" if body["was_paused"] else "was not paused"
    click.echo(f"{function_id}: {state}; {body['resumed_runs']} held run(s) go on")


@functions.command("invoke")
@click.argument("function_id")
@click.option("--data", default="{}", help="The data the run gets (ctx.event.data), a JSON object.")
@url_option
def invoke(function_id: str, data: str, url: str | None) -> None:
    """Start a run of this function now, whatever its triggers; prints the run id."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--data is not valid JSON: {exc}") from exc
    body = call("POST", url, _path(function_id, "invoke"), json_body={"data": payload})
    click.echo(body["run_id"])


@functions.command("replay-failed")
@click.argument("function_id")
@click.option("--since", default=None, help="Runs that failed at or after (ISO 8601 or epoch ms).")
@click.option("--until", default=None, help="Runs that failed before.")
@click.option("--limit", type=int, default=1000, show_default=True)
@url_option
def replay_failed(function_id: str, since: str | None, until: str | None, limit: int, url: str | None) -> None:
    """Replay each run that failed in the window and has no replay yet; prints the new run ids."""
    body: dict[str, Any] = {"limit": limit}
    for name, value in (("since", since), ("until", until)):
        if value:
            body[name] = value
    result = call("POST", url, _path(function_id, "replay-failed"), json_body=body)
    click.echo(f"replayed {result['replayed']} of {result['matched']} failed run(s); {result['already_replayed']} had a replay already")
    for item in result["runs"]:
        click.echo(f"  {item['id']}  (replays {item['replay_of']})")
