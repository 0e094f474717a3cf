"""``InngestRuntime``: the SDK apps one engine serves.

It keeps the SDK functions found in the store as Stepline ``Function`` objects
(handed to the worker through ``Engine.add_function_source``), registers apps
(``POST /fn/register``), asks apps to sync (the PUT), and in dev mode finds apps
on the usual local ports and re-syncs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import weakref
from typing import Any

import httpx

from stepline import errors, expressions, jsonutil, shown_text
from stepline.context import Context
from stepline.engine import Engine, cron
from stepline.function import AppRegistration, Function, InngestMeta
from stepline.inngest import config, driver, protocol, signing
from stepline.outage import OutageLog
from stepline.store import now_ms
from stepline.store.records import JournalRow, StepState

log = logging.getLogger("stepline.inngest")

DISCOVERY_PORTS = (80, 443, *range(3000, 3011), 4321, 5000, 5173, 8000, 8080, 8081, 8888, *range(8910, 8916), 8787)
DISCOVERY_PATHS = ("/api/inngest", "/x/inngest", "/.netlify/functions/inngest", "/.redwood/functions/inngest")


@dataclasses.dataclass(frozen=True)
class InngestOptions:
    """How this server talks to SDK apps.

    ``dev``: no signatures either way, server kind ``dev``. Otherwise every call to an
    app is signed with ``signing_key`` and registrations must carry it (kind ``cloud``).
    """

    dev: bool = True
    signing_key: str = ""
    signing_key_fallback: str = ""
    sdk_urls: tuple[str, ...] = ()
    discovery: bool = False
    poll: bool = False
    poll_interval: float = 5.0
    reload_interval: float = 2.0
    request_timeout: float = 7200.0

    @property
    def server_kind(self) -> str:
        return "dev" if self.dev else "cloud"

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.signing_key, self.signing_key_fallback) if k]


@dataclasses.dataclass
class AppStatus:
    """What the server knows of one app URL: its last sync and its outcome."""

    url: str
    name: str | None = None
    sdk: str | None = None
    framework: str | None = None
    functions: list[str] = dataclasses.field(default_factory=list)
    synced_at: int | None = None
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RegistrationError(errors.SteplineError):
    """A registration was refused: it is malformed, or its app cannot be stored."""


class RegistrationUnauthorized(RegistrationError):
    """A registration was refused because it did not carry this server's signing key."""


_RUNTIMES: weakref.WeakKeyDictionary[Engine, InngestRuntime] = weakref.WeakKeyDictionary()


def attach(engine: Engine, options: InngestOptions | None = None) -> InngestRuntime:
    """The engine's runtime, made on first use. Attach before ``engine.start()`` so its
    worker serves SDK functions; ``start()`` the runtime after the engine."""
    runtime = _RUNTIMES.get(engine)
    if runtime is None:
        runtime = InngestRuntime(engine, options or InngestOptions())
        _RUNTIMES[engine] = runtime
    return runtime


class InngestRuntime:
    def __init__(self, engine: Engine, options: InngestOptions) -> None:
        self.engine = engine
        self.options = options
        self._functions: dict[str, Function] = {}
        self._metas: dict[str, InngestMeta] = {}
        self._raw_versions: dict[str, str] = {}
        self.apps: dict[str, AppStatus] = {url: AppStatus(url=_normalize_url(url)) for url in options.sdk_urls}
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._register_lock = asyncio.Lock()
        self.removed: set[str] = set()  # app URLs removed here: discovery leaves them alone until added again
        engine.add_function_source(self.functions)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=True)
        return self._http

    async def start(self) -> None:
        """Load SDK functions from the store; keep them fresh; sync and discover apps."""
        await self.reload()
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="stepline-inngest-reload"))
        if self.apps or self.options.discovery or self.options.poll:
            self._tasks.append(asyncio.create_task(self._sync_loop(), name="stepline-inngest-sync"))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._watchers]:
            task.cancel()
        for task in [*self._tasks, *self._watchers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- functions -------------------------------------------------------------------

    def functions(self) -> dict[str, Function]:
        return dict(self._functions)

    def meta(self, slug: str) -> InngestMeta:
        meta = self._metas.get(slug)
        if meta is None:
            raise errors.NotFoundError(f"SDK function {slug!r} is not registered (or was removed from its app); sync the app again")
        return meta

    async def reload(self) -> None:
        """Re-read SDK functions from the store (another process may have synced an app)."""
        configs = await self.engine.store.sdk_functions()
        functions: dict[str, Function] = {}
        metas: dict[str, InngestMeta] = {}
        for cfg in configs:
            meta = cfg["inngest"]
            slug = cfg["id"]
            version = jsonutil.dumps(meta.get("raw"))
            previous = self._functions.get(slug)
            if previous is not None and self._raw_versions.get(slug) == version:
                functions[slug] = previous
            else:
                try:
                    with expressions.unknown_functions_allowed() as unknown:
                        fn_config = config.build(meta["raw"], app=meta["app"], notes=[])
                except errors.ConfigError as exc:
                    log.error("stored SDK function %s cannot be loaded: %s", slug, exc)
                    continue
                for problem in unknown:  # synced before such names were refused: it runs, failing there as before
                    log.warning("stored SDK function %s: %s; fix it and sync its app again", slug, problem)
                functions[slug] = Function(config=fn_config, handler=self._handler(slug))
            metas[slug] = meta
            self._raw_versions[slug] = version
        changed = set(functions) != set(self._functions) or any(functions[k] is not self._functions.get(k) for k in functions)
        self._functions, self._metas = functions, metas
        if changed:
            self.engine.refresh_functions()

    def _handler(self, slug: str) -> Any:
        async def run_sdk_function(ctx: Context) -> Any:
            return await driver.SDKExecution(self, self.meta(slug), ctx).run()

        run_sdk_function.__qualname__ = f"sdk:{slug}"
        return run_sdk_function

    async def resolve_function_id(self, slug: str) -> str:
        """SDK apps invoke ``<app id>-<function id>``; native functions answer to that too."""
        if slug in self._functions:
            return slug
        return await self.engine.store.resolve_function_id(slug)

    def watch_prepared_wait(self, run_id: str, key: str) -> None:
        """After the run suspends on a wait registered early, wake it if the event came in the
        moment between the driver's last look and the suspension (nothing else would)."""

        async def watch() -> None:
            for delay in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0):
                await asyncio.sleep(delay)
                try:
                    if await self.engine.store.wake_if_wait_done(run_id, key):
                        return
                except Exception:  # best effort: the wait's timeout still resumes the run
                    log.exception("checking the wait %s of run %s failed", key, run_id)
                    return

        task = asyncio.create_task(watch(), name=f"stepline-inngest-wait-{run_id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def step_row(self, run_id: str, key: str) -> StepState | None:
        return await self.engine.store.step_row(run_id, key)

    async def journal(self, run_id: str) -> list[JournalRow]:
        return await self.engine.store.journal(run_id)

    async def call(self, meta: InngestMeta, step_id: str, body: dict[str, Any], *, run_id: str) -> protocol.Reply:
        return await protocol.call(
            self.http,
            meta["url"],
            step_id,
            body,
            run_id=run_id,
            server_kind=self.options.server_kind,
            signing_key="" if self.options.dev else self.options.signing_key,
            timeout=self.options.request_timeout,
        )

    # --- registration (SDK → server) -------------------------------------------------

    def check_auth(self, authorization: str | None) -> None:
        """In production, SDK calls must carry the signing key (hashed) as a bearer token."""
        if self.options.dev:
            return
        if not self.options.keys:
            raise RegistrationUnauthorized("this server has no signing key for SDK apps; set STEPLINE_INNGEST_SIGNING_KEY to the apps' INNGEST_SIGNING_KEY"
            )
        if not signing.bearer_matches(authorization, self.options.keys):
            raise RegistrationUnauthorized("wrong or missing signing key: the app's INNGEST_SIGNING_KEY must equal this server's STEPLINE_INNGEST_SIGNING_KEY"
            )

    async def register(self, body: Any, *, expected_kind: str | None) -> dict[str, Any]:
        """Handle ``POST /fn/register``; a refusal raises ``RegistrationError``."""
        if expected_kind and expected_kind != self.options.server_kind:
            raise RegistrationError(f"Expected server kind {expected_kind}, got {self.options.server_kind}: run the app in "
                f"{'dev' if self.options.dev else 'cloud'} mode (INNGEST_DEV) to match this server"
            )
        if not isinstance(body, dict):
            raise RegistrationError("the registration body must be a JSON object")
        app = body.get("appName") or body.get("appname") or body.get("app_name")
        if not isinstance(app, str) or not app:
            raise RegistrationError("the registration has no app name (appName)")
        shown = shown_text.problem(app)
        if shown is not None:  # logged and listed as sent
            raise RegistrationError(f"the app name (appName) {app[:60]!r} {shown}; use plain text, like 'my-app'")
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise RegistrationError(f"app {app!r}: 'url' must be the app's http(s) serve URL, got {url!r}")
        url = protocol.strip_sync_params(url)
        raw_functions = body.get("functions") or []
        if not isinstance(raw_functions, list):
            raise RegistrationError(f"app {app!r}: 'functions' must be a list")
        checksum = hashlib.sha256(
            signing.canonical_bytes({k: v for k, v in body.items() if k not in ("featureObservations", "deployId")})
        ).hexdigest()
        meta: AppRegistration = {
            "app_url": url,
            "sdk": body.get("sdk"),
            "framework": body.get("framework"),
            "checksum": checksum,
        }
        notes: list[str] = []
        stored = []
        for item in raw_functions:
            try:
                stored.append(config.to_stored(item, app=app, meta=meta, notes=notes))
            except errors.ConfigError as exc:
                self._status(url, app, body, error=f"function invalid: {exc}")
                raise RegistrationError(f"At least one function is invalid: {exc}") from exc
            except (KeyError, TypeError, ValueError) as exc:
                self._status(url, app, body, error=f"function invalid: {exc!r}")
                raise RegistrationError(f"At least one function is invalid: {exc!r}") from exc
        async with self._register_lock:
            current = {s: m for s, m in self._metas.items() if m.get("app") == app}
            unchanged = set(current) == {c["id"] for c in stored} and all(m.get("checksum") == checksum for m in current.values())
            if not unchanged:
                now = self.engine.store.now_ms()
                cron_next = {
                    (c["id"], pos): cron.next_tick_ms(t["cron"], t["timezone"], now)
                    for c in stored
                    for pos, t in enumerate(c["triggers"])
                    if "cron" in t
                }
                try:
                    await self.engine.store.register_sdk_app(app, stored, cron_next)
                except errors.ConfigError as exc:
                    self._status(url, app, body, error=str(exc))
                    raise RegistrationError(str(exc)) from exc
                await self.reload()
        if not unchanged:
            log.info("synced app %s from %s (%s): %d function(s)", app, url, body.get("sdk"), len(stored))
        for note in notes:
            log.warning("app %s: %s", app, note)
        self._status(url, app, body, notes=notes)
        return {"ok": True, "modified": not unchanged, "status": 200, "app_id": app, "sync_id": checksum[:16]}

    def _status(self, url: str, app: str, body: dict[str, Any], *, error: str | None = None, notes: list[str] | None = None) -> None:
        status = self.apps.get(url) or AppStatus(url=url)
        status.name, status.sdk, status.framework = app, body.get("sdk"), body.get("framework")
        status.functions = [str(f.get("id")) for f in body.get("functions") or [] if isinstance(f, dict)]
        status.synced_at, status.error, status.notes = now_ms(), error, notes or []
        self.apps[url] = status

    # --- sync (server → app) ---------------------------------------------------------

    async def sync(self, url: str) -> AppStatus:
        """Ask the app at ``url`` to register (the PUT); its registration comes back to /fn/register."""
        url = _normalize_url(url)
        self.removed.discard(url)
        status = self.apps.setdefault(url, AppStatus(url=url))
        content = signing.canonical_bytes({"url": url})
        headers = {"content-type": "application/json", "x-inngest-server-kind": self.options.server_kind}
        if not self.options.dev and self.options.signing_key:
            headers["x-inngest-signature"] = signing.sign(content, self.options.signing_key)
        try:
            response = await self.http.put(url, content=content, headers=headers, timeout=30.0)
        except httpx.HTTPError as exc:
            status.error = f"unreachable: {exc!r}"
            return status
        status.error = _sync_refusal(response)
        return status

    async def sync_all(self) -> list[AppStatus]:
        return [await self.sync(url) for url in self.known_urls()]

    def known_urls(self) -> list[str]:
        urls = set(self.apps)
        urls.update(m["app_url"] for m in self._metas.values() if m.get("app_url"))
        return sorted(urls)

    def list_apps(self) -> list[dict[str, Any]]:
        by_url: dict[str, dict[str, Any]] = {}
        for url in self.known_urls():
            status = self.apps.get(url) or AppStatus(url=url)
            entry = status.to_dict()
            entry["functions"] = sorted(s for s, m in self._metas.items() if m.get("app_url") == url) or status.functions
            if entry["name"] is None:
                entry["name"] = next((m["app"] for m in self._metas.values() if m.get("app_url") == url), None)
            by_url[url] = entry
        return list(by_url.values())

    async def remove(self, target: str) -> dict[str, Any]:
        """Remove an app, named by its serve URL or its name: its functions are archived (no
        trigger, no schedule: they start no run), and it is no longer synced or discovered
        here. Runs it already made are kept. Syncing it again brings it back."""
        url = _normalize_url(target) if "/" in target else None
        names = {m["app"] for m in self._metas.values() if m["app"] == target or (url and m.get("app_url") == url)}
        names.update(s.name for u, s in self.apps.items() if s.name and (u == url or s.name == target))
        urls = {u for u, s in self.apps.items() if u == url or (s.name and s.name in names)}
        urls.update(m["app_url"] for m in self._metas.values() if m["app"] in names and m.get("app_url"))
        if not names and not urls:
            raise errors.NotFoundError(f"no app {target!r} is known here; `stepline apps list` shows the apps by name and URL")
        archived: list[str] = []
        async with self._register_lock:
            for name in sorted(names):
                archived += await self.engine.store.register_sdk_app(name, [], {})
            await self.reload()
        for u in urls:
            self.apps.pop(u, None)
            self.removed.add(u)
        log.info("removed app(s) %s (%s): %d function(s) archived", sorted(names), sorted(urls), len(archived))
        return {"removed": sorted(names), "urls": sorted(urls), "functions": sorted(archived)}

    async def discover(self) -> list[str]:
        """GET the usual local serve URLs; sync those that answer as an SDK."""
        ports = list(DISCOVERY_PORTS)
        if os.environ.get("PORT", "").isdigit():
            ports.append(int(os.environ["PORT"]))
        own = self.engine.settings.port
        found = []

        async def probe(url: str) -> None:
            try:
                response = await self.http.get(url, timeout=1.0)
            except httpx.HTTPError:
                return
            if protocol.SDK_HEADER in response.headers:
                found.append(url)

        candidates = [f"http://127.0.0.1:{p}{path}" for p in ports if p != own for path in DISCOVERY_PATHS]
        await asyncio.gather(*(probe(url) for url in candidates if url not in self.removed))
        for url in found:
            await self.sync(url)
        return found

    # --- loops -----------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        # A database outage is the database's (one line, once), not an SDK failure each time.
        outage = OutageLog(log, "reloading SDK functions from the database")
        while True:
            await asyncio.sleep(self.options.reload_interval)
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001
                outage.failed(exc)
            else:
                outage.worked()

    async def _sync_loop(self) -> None:
        first = True
        outage = OutageLog(log, "syncing SDK apps")
        while True:
            try:
                if first or self.options.poll:
                    for url in self.known_urls():
                        status = await self.sync(url)
                        if status.error:
                            log.warning("syncing %s: %s", url, status.error)
                elif any(s.error for s in self.apps.values()):
                    for url in [u for u, s in self.apps.items() if s.error]:
                        await self.sync(url)
                if self.options.discovery and not self.known_urls():
                    await self.discover()
            except Exception as exc:  # noqa: BLE001
                outage.failed(exc)
            else:
                outage.worked()
            first = False
            await asyncio.sleep(self.options.poll_interval)


def _sync_refusal(response: httpx.Response) -> str | None:
    """Why the app's sync failed, or None. The status line is not enough: the Python SDK
    answers 200 with our refusal of its registration in the body (``{"error", "status": 401}``)."""
    try:
        detail = response.json()
    except ValueError:
        detail = None
    reported = detail.get("status") if isinstance(detail, dict) else None
    code = reported if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 400 else response.status_code
    if code < 400 and not (isinstance(detail, dict) and detail.get("error") and detail.get("ok") is not True):
        return None
    message = (detail.get("message") or detail.get("error")) if isinstance(detail, dict) else None
    return f"the app answered {code}: {str(message or response.text)[:500]}"


def _normalize_url(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return protocol.strip_sync_params(url)


