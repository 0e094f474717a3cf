"""``stepline apps``: list, add, remove and re-sync Inngest SDK apps (through the server's API)."""

from __future__ import annotations

import json
from typing import Any

import click


def _api(method: str, url: str | None, path: str, *, params: dict[str, Any] | None = None, body: Any = None) -> Any:
    import os

    import httpx

    from stepline import cli

    base = cli._base_url(url)
    token = os.environ.get("STEPLINE_API_TOKEN", "")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, base + path, params={k: v for k, v in (params or {}).items() if v}, json=body, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the server at {base}: {exc}; is `stepline dev` running?") from exc
    reply = response.json()
    if response.status_code >= 400 and "url" not in reply:
        raise click.ClickException(reply.get("error", response.text))
    return reply


def _url_option(fn: Any) -> Any:
    return click.option("--url", default=None, envvar="STEPLINE_URL", help="Server URL (default http://127.0.0.1:8288).")(fn)


def _show(app: dict[str, Any]) -> None:
    state = "ok" if not app.get("error") else f"error: {app['error']}"
    click.echo(f"{app.get('name') or '?':<24} {app['url']:<48} {app.get('sdk') or '':<14} {state}")
    for fid in app.get("functions") or []:
        click.echo(f"    {fid}")
    for note in app.get("notes") or []:
        click.echo(f"    note: {note}")


@click.group()
def apps() -> None:
    """Inngest SDK apps served by this server: list, add, remove, re-sync."""


@apps.command("list")
@click.option("--json", "as_json", is_flag=True)
@_url_option
def list_apps(as_json: bool, url: str | None) -> None:
    """Known apps, their functions and their last sync's outcome."""
    body = _api("GET", url, "/api/v1/inngest/apps")
    if as_json:
        click.echo(json.dumps(body["data"], indent=2))
        return
    for app in body["data"]:
        _show(app)


@apps.command("add")
@click.argument("app_url")
@_url_option
def add_app(app_url: str, url: str | None) -> None:
    """Sync the app serving at APP_URL (e.g. http://127.0.0.1:3000/api/inngest)."""
    _show(_api("POST", url, "/api/v1/inngest/apps", body={"url": app_url}))


@apps.command("remove")
@click.argument("app")
@_url_option
def remove_app(app: str, url: str | None) -> None:
    """Remove APP (its name or serve URL): its functions stop matching events; runs already made are kept."""
    body = _api("DELETE", url, "/api/v1/inngest/apps", params={"app": app})
    click.echo(f"removed {', '.join(body['removed']) or app}: {len(body['functions'])} function(s) archived")
    for fid in body["functions"]:
        click.echo(f"    {fid}")


@apps.command("sync")
@click.argument("app_url", required=False)
@_url_option
def sync_apps(app_url: str | None, url: str | None) -> None:
    """Ask every known app (or APP_URL) to register again, e.g. after a deploy."""
    for app in _api("POST", url, "/api/v1/inngest/apps/sync", params={"url": app_url})["data"]:
        _show(app)
