"""Stepline in Django (``pip install 'stepline[django]'``).

    # settings.py
    INSTALLED_APPS = [..., "stepline.integrations.django"]
    STEPLINE = {
        "APPS": ["myproject.jobs:app"],        # the stepline.App(s) with your functions
        "DB": "postgresql://.../stepline",     # the database the worker shares (or SQLite path)
        # or "URL": "http://stepline:8288", "EVENT_KEY": ..., "API_TOKEN": ...   (a Stepline server)
        # "SIGNING_KEY": ...                   # signs the job tokens pages get (shared by all web processes)
        # "RUN_WORKER": False                  # True: this process runs the functions too
    }

    # urls.py
    path("jobs/", include(stepline.integrations.django.job_urls(events=["doc/summarise"])))

    # views.py
    from stepline.integrations import django as stepline_django
    stepline_django.send({"name": "doc/uploaded", "data": {...}})          # sync views
    await stepline_django.asend({...})                                     # async views
    job = stepline_django.start_job({...})  /  await stepline_django.astart_job({...})

    python manage.py stepline_worker        # runs the functions (as `stepline worker`)

One connection per process, opened on first use and closed at exit; changing
``settings.STEPLINE`` (``override_settings`` in tests) opens a new one.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from stepline import errors
from stepline.integrations import jobs as jobs_mod
from stepline.integrations.blocking import BlockingConnection
from stepline.integrations.core import Events, Options, connect, load_app

T = TypeVar("T")
_lock = threading.Lock()
_open: list[tuple[BlockingConnection, jobs_mod.Jobs]] = []


def options(overrides: dict[str, Any] | None = None) -> Options:
    """``settings.STEPLINE`` as ``Options`` (unknown keys refused by name)."""
    from django.conf import settings

    values = dict(getattr(settings, "STEPLINE", {}) or {})
    values.update(overrides or {})
    specs = values.get("APPS", [])
    if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        raise errors.ConfigError("STEPLINE['APPS']: expected a list of 'module:attribute' strings")
    values.setdefault("RUN_WORKER", False)  # web processes send; `manage.py stepline_worker` runs the functions
    return Options.from_mapping(values, apps=[load_app(s) for s in specs])


def _current() -> tuple[BlockingConnection, jobs_mod.Jobs]:
    with _lock:
        if not _open:
            from django.conf import settings

            connection = BlockingConnection(connect(options()))
            base = str(getattr(settings, "STEPLINE_JOBS_PATH", "/jobs/"))
            _open.append((connection, jobs_mod.Jobs(connection.connection, base)))
        return _open[0]


def connection() -> BlockingConnection:
    return _current()[0]


def close() -> None:
    """Close this process's connection (the next call opens one from the settings again)."""
    with _lock:
        while _open:
            _open.pop()[0].close()


atexit.register(close)


def send(events: Events) -> list[str]:
    """Send events from a sync view; returns their ids once stored."""
    return connection().send(events)


async def asend(events: Events) -> list[str]:
    """Send events from an async view."""
    return await _await(connection().connection.send(events))


def start_job(event: dict[str, Any], *, function_id: str | None = None) -> dict[str, Any]:
    """Send ``event`` and return the job a page follows (``job_id``, ``token``, ``status_url``, ``stream_url``)."""
    conn, jobs = _current()
    return conn.call(jobs.start(event, function_id=function_id))


async def astart_job(event: dict[str, Any], *, function_id: str | None = None) -> dict[str, Any]:
    _, jobs = _current()
    return await _await(jobs.start(event, function_id=function_id))


async def _await(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the connection's loop, awaited from the view's."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, connection()._loop))


def job_updates(job_id: str, token: str | None) -> Iterator[dict[str, Any]]:
    conn, jobs = _current()
    return conn.job_updates(jobs, job_id, token)


def job_status(job_id: str, token: str | None) -> dict[str, Any]:
    conn, jobs = _current()
    return conn.call(jobs.status(job_id, token))


def job_urls(*, events: Iterable[str] | None = None, user_id: Any = None, csrf_exempt: bool = False) -> list[Any]:
    """URL patterns for ``include()``: ``POST ""`` starts a job (``events``: the names allowed;
    ``user_id(request)``: the signed-in user put in its data; Django's CSRF check applies
    unless ``csrf_exempt``), ``GET <job_id>`` reads it with its token, ``GET <job_id>/stream``
    streams it as Server-Sent Events until it ends."""
    from stepline.integrations.django import views

    return views.patterns(events, user_id, csrf_exempt)
