"""One connection to Stepline for a web app, whichever way it runs:

- **embedded**: this process opens the database and (optionally) runs a worker for its
  apps, so sending is a local transaction and nothing else needs to run;
- **remote**: a Stepline server (``stepline start`` / ``dev``) elsewhere; events go to
  ``/e/{key}``, reads to ``/api/v1`` with the API token.

Both answer the same calls (send, the runs an event started, one run), so the job-status
pattern (``jobs``) and each framework's glue are written once.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from stepline import errors
from stepline import settings as settings_mod
from stepline.app import App
from stepline.client import AsyncClient
from stepline.event import Event
from stepline.store import RunView

Events = dict[str, Any] | Event | Sequence[dict[str, Any] | Event]


@dataclasses.dataclass(frozen=True)
class Options:
    """Where Stepline is for this web app.

    ``url``: a Stepline server to talk to (remote); without it, ``db`` (or ``STEPLINE_DB``)
    is opened here (embedded). ``apps``: the apps whose functions this process registers;
    with ``run_worker`` it also executes them. ``signing_key`` signs the run tokens handed
    to browsers (default: ``STEPLINE_SIGNING_KEY``, else the API token; a dev key when
    neither is set in embedded mode).
    """

    url: str | None = None
    event_key: str = ""
    api_token: str = ""
    db: str | None = None
    apps: Sequence[App] = ()
    run_worker: bool = True
    signing_key: str = ""
    settings: settings_mod.Settings | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any], apps: Sequence[App] = ()) -> Options:
        """From a settings dict with upper-case keys (``URL``, ``EVENT_KEY``, ``API_TOKEN``,
        ``DB``, ``RUN_WORKER``, ``SIGNING_KEY``); unknown keys are refused by name."""
        known = {"URL": "url", "EVENT_KEY": "event_key", "API_TOKEN": "api_token", "DB": "db",
                 "RUN_WORKER": "run_worker", "SIGNING_KEY": "signing_key", "APPS": None}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise errors.ConfigError(f"STEPLINE settings: unknown key(s) {unknown}; the keys are {sorted(known)}")
        fields = {attr: values[key] for key, attr in known.items() if attr is not None and key in values}
        return cls(apps=tuple(apps), **fields)


def load_app(spec: str) -> App:
    """``module:attribute`` -> the App it names."""
    module_name, _, attribute = spec.partition(":")
    app = getattr(importlib.import_module(module_name), attribute, None) if module_name and attribute else None
    if not isinstance(app, App):
        raise errors.ConfigError(f"STEPLINE APPS: {spec!r} is not a stepline.App; write module:attribute, e.g. myproject.jobs:app")
    return app


class Connection(Protocol):
    """What the integrations need of Stepline."""

    signing_key: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, events: Events) -> list[str]: ...

    async def runs_of(self, event_id: str) -> Sequence[Mapping[str, Any]]: ...

    async def run(self, run_id: str) -> Mapping[str, Any]: ...


def connect(options: Options) -> Connection:
    return RemoteConnection(options) if options.url else EmbeddedConnection(options)


class EmbeddedConnection:
    """The database opened in this process; a worker for ``options.apps`` if asked."""

    def __init__(self, options: Options) -> None:
        from stepline.engine import Engine
        from stepline.store import migrate, open_store
        from stepline.store.store import is_postgres_url

        settings = options.settings or settings_mod.from_env()
        if options.db:
            settings = settings.replace(db=options.db)
        # Like `stepline dev`: a fresh database is set up; otherwise pending migrations are an
        # error that names `stepline migrate`.
        store = open_store(settings.db, migrate_now=not is_postgres_url(settings.db) and bool(migrate.pending(settings.db)))
        self.engine = Engine(store, settings, list(options.apps))
        self._run_worker = options.run_worker
        self.signing_key = options.signing_key or settings.signing_key or settings.api_token or _process_key()

    async def start(self) -> None:
        await self.engine.start(run_worker=self._run_worker)

    async def stop(self) -> None:
        await self.engine.stop()

    async def send(self, events: Events) -> list[str]:
        items = [events] if isinstance(events, (dict, Event)) else list(events)
        return await self.engine.send_many(items)

    async def runs_of(self, event_id: str) -> list[RunView]:
        return list((await self.engine.store.get_event(event_id))["runs"])

    async def run(self, run_id: str) -> RunView:
        run = await self.engine.store.get_run(run_id)
        run["usage"] = await self.engine.store.run_usage(run_id)
        return run


class RemoteConnection:
    """A Stepline server: events to ``/e/{key}``, reads from ``/api/v1`` with the API token."""

    def __init__(self, options: Options) -> None:
        assert options.url is not None
        settings = options.settings or settings_mod.from_env()
        self.url = options.url.rstrip("/")
        self.api_token = options.api_token or settings.api_token
        # The job routes check the tokens they hand out themselves: any key shared by this
        # app's processes will do (one process alone: its own).
        self.signing_key = options.signing_key or settings.signing_key or self.api_token or _process_key()
        self._events = AsyncClient(self.url, options.event_key or settings.event_key or "dev")
        headers = {"authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._events.aclose()
        await self._http.aclose()

    async def send(self, events: Events) -> list[str]:
        return await self._events.send(events)

    async def _get(self, path: str) -> dict[str, Any]:
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise errors.SteplineError(f"cannot reach the Stepline server at {self.url}: {exc}") from exc
        body = response.json()
        if response.status_code == 404:
            raise errors.NotFoundError(body.get("error", "not found"))
        if response.status_code >= 400:
            raise errors.SteplineError(
                f"the Stepline server refused GET {path} ({response.status_code}): {body.get('error')}; "
                "reading needs its API token (STEPLINE_API_TOKEN)"
            )
        return body  # type: ignore[no-any-return]

    async def runs_of(self, event_id: str) -> list[dict[str, Any]]:
        return list((await self._get(f"/api/v1/events/{event_id}"))["runs"])

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self._get(f"/api/v1/runs/{run_id}")


_KEY: list[str] = []


def _process_key() -> str:
    """A signing key for this process alone (tokens it mints are good only here), when none is configured."""
    import secrets

    if not _KEY:
        _KEY.append(secrets.token_urlsafe(32))
    return _KEY[0]
