"""``stepline apps``: list, add, remove and re-sync Inngest SDK apps (through the server's API)."""

from __future__ import annotations

import json
from typing import Any

import click

from stepline import cli_api


def _api(method: str, url: str | None, path: str, *, params: dict[str, Any] | None = None, body: Any = None) -> Any:
    """An apps call (syncing waits on the app: up to a minute); a refused sync comes back as
    the app's status, which names its URL, and is shown rather than raised."""
    return cli_api.call(
        method, url, path, json_body=body, timeout=60, accept=lambda reply: isinstance(reply, dict) and "url" in reply,
        **(params or {}),
    )


def _show(app: dict[str, Any]) -> None:
    state = "ok" if not app.get("error") else f"error: {app['error']}"
    click.echo(f"{app.get('name') or '?':<24} {app['url']:<48} {app.get('sdk') or '':<14} {state}")
    for fid in app.get("functions") or []:
        click.echo(f"    {fid}")
    for note in app.get("notes") or []:
        click.echo(f"    note: {note}")


NO_APPS = "no Inngest SDK apps are known here; add one with `stepline apps add <its serve URL>` (or start with `stepline dev -u <URL>`)"


@click.group()
def apps() -> None:
    """Inngest SDK apps served by this server: list, add, remove, re-sync."""


@apps.command("list")
@click.option("--json", "as_json", is_flag=True)
@cli_api.url_option
def list_apps(as_json: bool, url: str | None) -> None:
    """Known apps, their functions and their last sync's outcome."""
    body = _api("GET", url, "/api/v1/inngest/apps")
    if as_json:
        click.echo(json.dumps(body["data"], indent=2))
        return
    for app in body["data"]:
        _show(app)
    if not body["data"]:
        click.echo(NO_APPS)


@apps.command("add")
@click.argument("app_url")
@cli_api.url_option
def add_app(app_url: str, url: str | None) -> None:
    """Sync the app serving at APP_URL (e.g. http://127.0.0.1:3000/api/inngest); exits 1 when it is refused."""
    app = _api("POST", url, "/api/v1/inngest/apps", body={"url": app_url})
    _show(app)
    if app.get("error"):
        raise SystemExit(1)  # a deploy script must see it


@apps.command("remove")
@click.argument("app")
@cli_api.url_option
def remove_app(app: str, url: str | None) -> None:
    """Remove APP (its name or serve URL): its functions stop matching events; runs already made are kept."""
    body = _api("DELETE", url, "/api/v1/inngest/apps", params={"app": app})
    click.echo(f"removed {', '.join(body['removed']) or app}: {len(body['functions'])} function(s) archived")
    for fid in body["functions"]:
        click.echo(f"    {fid}")


@apps.command("sync")
@click.argument("app_url", required=False)
@cli_api.url_option
def sync_apps(app_url: str | None, url: str | None) -> None:
    """Ask every known app (or APP_URL) to register again, e.g. after a deploy; exits 1 when any refuses."""
    synced = _api("POST", url, "/api/v1/inngest/apps/sync", params={"url": app_url})["data"]
    for app in synced:
        _show(app)
    if not synced:
        click.echo(NO_APPS)
    if any(app.get("error") for app in synced):
        raise SystemExit(1)
