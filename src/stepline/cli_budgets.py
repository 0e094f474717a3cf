"""``stepline budgets``: list | show | set, cost budgets through the server's API."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote

import click

from stepline import shown_text
from stepline.budgets import usd
from stepline.cli_api import call, url_option


def _key_path(budget: str, key: str) -> str:
    return f"/api/v1/budgets/{quote(budget, safe='')}/{quote(key, safe='')}"


def _limit(state: dict[str, Any]) -> str:
    parts = []
    if state["limit_usd"] is not None:
        parts.append(usd(state["limit_usd"]))
    if state["limit_tokens"] is not None:
        parts.append(f"{state['limit_tokens']} tok")
    text = " + ".join(parts) or "none"
    return text + (" (override)" if state["override"] else "")


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _row(state: dict[str, Any]) -> str:
    spent = f"{usd(state['spent_usd'])} {state['spent_tokens']} tok"
    reserved = f"{usd(state['reserved_usd'])} {state['reserved_tokens']} tok"
    key = shown_text.escape(state["key"])  # a key expression's value: an event's data, as sent
    return (
        f"{state['budget'][:28]:<28} {key[:20]:<20} {spent:<24} {reserved:<22} {_limit(state):<28} "
        f"{_when(state['period_end']):<17} {state['paused_runs']:>6}"
    )


HEADER = f"{'BUDGET':<28} {'KEY':<20} {'SPENT':<24} {'RESERVED':<22} {'LIMIT':<28} {'PERIOD ENDS (UTC)':<17} {'PAUSED':>6}"


@click.group()
def budgets() -> None:
    """Cost budgets: what each key spent this period, its limit, and overrides."""


@budgets.command("list")
@click.option("--budget", default=None, help="Only this budget's keys.")
@click.option("--json", "as_json", is_flag=True)
@url_option
def list_budgets(budget: str | None, as_json: bool, url: str | None) -> None:
    """Declared budgets, and each key that spent this period or has an override, the most spent first."""
    body = call("GET", url, "/api/v1/budgets", budget=budget)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for declared in body["budgets"]:
        limit = declared["limit_usd"] if declared["limit_usd"] is not None else declared["limit_tokens"]
        click.echo(
            f"{declared['name']}: {declared['scope']} budget, per {declared['key'] or 'everything'}, limit {limit} "
            f"per {declared['period']}, on exceeded {declared['on_exceeded']} ({', '.join(declared['functions'])})"
        )
    click.echo(HEADER)
    for state in body["data"]:
        click.echo(_row(state))


@budgets.command("show")
@click.argument("budget")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@url_option
def show(budget: str, key: str, as_json: bool, url: str | None) -> None:
    """One key of one budget in its current period (KEY is * for a budget without a key)."""
    state = call("GET", url, _key_path(budget, key))
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(HEADER)
    click.echo(_row(state))


@budgets.command("set")
@click.argument("budget")
@click.argument("key")
@click.option("--usd", "limit_usd", type=float, default=None, help="The key's limit in US dollars.")
@click.option("--tokens", "limit_tokens", type=int, default=None, help="The key's limit in tokens.")
@click.option("--clear", is_flag=True, help="Remove the override: the declared limits apply again.")
@url_option
def set_limit(budget: str, key: str, limit_usd: float | None, limit_tokens: int | None, clear: bool, url: str | None) -> None:
    """Override one key's limits (e.g. a premium user); its paused runs resume at once."""
    if clear == (limit_usd is not None or limit_tokens is not None):
        raise click.UsageError("give --usd and/or --tokens, or --clear")
    body = {"limit_usd": limit_usd, "limit_tokens": limit_tokens}
    state = call("PUT", url, _key_path(budget, key), json_body=body)
    click.echo(HEADER)
    click.echo(_row(state))
    if state["resumed_runs"]:
        click.echo(f"resumed {len(state['resumed_runs'])} paused run(s): {', '.join(state['resumed_runs'])}")
