"""What the CLI's commands share to talk to a running server: its URL and one API call.

``stepline runs``, ``apps``, ``budgets`` and ``functions`` all go through ``call``, so
they find the server, send the API token and report a refusal the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import httpx

from stepline import errors
from stepline import settings as settings_mod

F = TypeVar("F", bound=Callable[..., Any])


class ApiError(click.ClickException):
    """The server refused a call; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def url_option(fn: F) -> F:
    """The ``--url`` option of a command that talks to a server."""
    return click.option("--url", default=None, envvar="STEPLINE_URL", help="Server URL (STEPLINE_URL; default http://STEPLINE_HOST:STEPLINE_PORT, so http://127.0.0.1:8288).")(fn)


def base_url(url: str | None) -> str:
    """``--url``, else the server this machine's settings name (STEPLINE_HOST, STEPLINE_PORT)."""
    if url:
        return url.rstrip("/")
    try:
        settings = settings_mod.from_env()
    except errors.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    return f"http://{settings.host}:{settings.port}"


def call(
    method: str, server: str | None, path: str, /, *, json_body: Any = None, timeout: float = 10.0,
    accept: Callable[[Any], bool] | None = None, **params: Any,
) -> Any:
    """One call of the server's API at ``server`` (``--url``), its JSON answer back:
    ``params`` go in the query (None left out), ``json_body`` in the body. A refusal raises ``ApiError`` with the server's
    message, unless ``accept(answer)`` says the caller reads that answer itself."""
    token = os.environ.get("STEPLINE_API_TOKEN", "")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    query = {k: v for k, v in params.items() if v is not None}
    base = base_url(server)
    try:
        response = httpx.request(method, base + path, params=query, json=json_body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the server at {base}: {exc}; is `stepline dev` running?") from exc
    body = response.json()
    if response.status_code >= 400 and not (accept is not None and accept(body)):
        raise ApiError(response.status_code, body.get("error", response.text))
    return body
