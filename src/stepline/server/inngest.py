"""HTTP routes for apps written with the official Inngest SDKs.

``POST /fn/register`` (app sync), ``POST /e/{key}`` accepting the SDKs' event
shapes, ``GET /v0/runs/{id}/batch|actions`` (large run state), realtime publishing
(``inngest_realtime``), Inngest's REST API for events, runs and cancellations
(``inngest_rest``), and ``/api/v1/inngest/apps`` to list, add, remove and re-sync apps. ``mount(app)`` puts
these routes first, so the SDK-tolerant ``/e/{key}`` answers SDK senders.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import errors, jsonutil
from stepline import event as event_mod
from stepline.inngest import (
    InngestOptions,
    InngestRuntime,
    RegistrationError,
    RegistrationUnauthorized,
    attach,
    events,
    memos,
    signing,
)
from stepline.server import auth_limits, common, id_route, responses
from stepline.server.responses import JSON, problem


def _registration_status(exc: RegistrationError) -> int:
    return 401 if isinstance(exc, RegistrationUnauthorized) else 400


def runtime(request: Request) -> InngestRuntime:
    engine = common.engine(request)
    return attach(engine, InngestOptions(dev=common.options(request).dev))


def _sdk_json(body: Any, status: int, rt: InngestRuntime) -> JSON:
    return JSON(body, status_code=status, headers={"x-inngest-server-kind": rt.options.server_kind})


def _check_registration(payload: Any) -> None:
    """A registration is stored whole (each function keeps its raw config): what the store
    cannot keep is refused as for events (NUL characters, integers past 64 bits)."""
    problem = jsonutil.storable_problem(payload, max_depth=event_mod.current_limits().max_json_depth + 2, path="body")
    if problem is not None:
        raise RegistrationError(f"the registration cannot be stored: {problem}")


def _check_event(name: str, data: Any) -> None:
    """Data that enters as an event's (signals, invokes) meets the events' limits."""
    event_mod.validate({"name": name, "data": data})


async def register(request: Request) -> Response:
    rt = runtime(request)
    denied = sdk_bearer(request)
    if denied is not None:  # the SDKs' shape; a back-off (429) keeps its Retry-After
        refused = _sdk_json({"error": denied_message(denied), "status": denied.status_code}, denied.status_code, rt)
        if "retry-after" in denied.headers:
            refused.headers["retry-after"] = denied.headers["retry-after"]
        return refused
    try:
        payload = await responses.read_json(request, max_bytes=common.options(request).max_body_bytes)
        _check_registration(payload)
        reply = await rt.register(payload, expected_kind=request.headers.get("x-inngest-expected-server-kind"))
    except RegistrationError as exc:
        status = _registration_status(exc)
        return _sdk_json({"error": exc.message, "status": status}, status, rt)
    except errors.SteplineError as exc:
        err = responses.from_error(exc)
        return _sdk_json({"error": str(exc), "status": err.status_code}, err.status_code, rt)
    return _sdk_json(reply, 200, rt)


async def post_event(request: Request) -> Response:
    """``/e/{key}``: SDK senders (``X-Inngest-SDK``) get their shapes accepted; others the native route."""
    if "x-inngest-sdk" not in request.headers:
        from stepline.server import api_events

        return await api_events.post_event_with_key(request)
    denied = common.event_key(request)
    if denied is not None:  # the SDKs' own shape; a back-off (429) keeps its status
        status = denied.status_code
        return JSON({"ids": [], "status": status, "error": "Event key not found" if status == 401 else "too many wrong event keys"}, status_code=status, headers={"retry-after": denied.headers["retry-after"]} if status == 429 else None)
    try:
        validated = await common.events_of_body(request, max_bytes=common.options(request).max_body_bytes, convert=events.from_sdk)
        ids = await common.engine(request).send_validated(validated)
    except errors.SteplineError as exc:
        status = responses.from_error(exc).status_code
        return JSON({"ids": [], "status": status, "error": str(exc)}, status_code=status)
    return JSON({"ids": ids, "status": 200})


def sdk_bearer(request: Request) -> Response | None:
    """The SDK apps' signing key (hashed) as bearer, as Inngest's server checks it, behind the
    same back-off for wrong values as the event key and the API token (auth_limits)."""
    rt = runtime(request)
    try:
        rt.check_auth(request.headers.get("authorization"))
    except RegistrationUnauthorized as exc:
        if not rt.options.keys:
            return problem(401, exc.message)  # no key is set: nothing to guess
        return _signing_key_attempt(request, rt, right=False, denial=exc.message)
    if rt.options.dev:
        return None
    return _signing_key_attempt(request, rt, right=True, denial="")


def _signing_key_attempt(request: Request, rt: InngestRuntime, *, right: bool, denial: str) -> Response | None:
    strong = all(auth_limits.is_strong(signing.key_material(key).decode()) for key in rt.options.keys)
    return common.checked_secret(request, common.SIGNING_KEY, right=right, strong=strong, denial=denial)


def rest_auth(request: Request) -> Response | None:
    """Inngest's REST API takes the signing key as bearer; Stepline's API token (or a dashboard
    session) works too. Each is checked behind its own back-off; a value that is neither
    counts against both, so that neither can be guessed here faster than elsewhere."""
    opts = common.options(request)
    if opts.dev:
        return None
    token = common.bearer(request)
    if not token and common.has_session(request):
        return common.api_token(request)
    if token and opts.api_token.strip() and hmac.compare_digest(token.encode(), opts.api_token.encode()):
        return common.api_token(request)
    denied = sdk_bearer(request)
    if denied is not None and token:  # a wrong API token too (counted unless its client waits already)
        common.checked_secret(request, common.API_TOKEN, right=False, strong=False, denial=denied_message(denied))
    return denied


def denied_message(denied: Response) -> str:
    return str(orjson.loads(bytes(denied.body))["error"])


@common.route(sdk_bearer)
async def run_batch(request: Request) -> Response:
    found = await common.engine(request).store.run_events(request.path_params["run_id"])
    if found is None:
        return problem(404, f"no run with id {request.path_params['run_id']!r}")
    return JSON([events.to_sdk(e) for e in found])


@common.route(sdk_bearer)
async def run_actions(request: Request) -> Response:
    rows = await runtime(request).journal(request.path_params["run_id"])
    return JSON({r["key"]: memos.memo_of(r) for r in rows if memos.finished(r)})


@common.route(common.api_token)
async def invoke(request: Request) -> Response:
    """``POST /invoke/{slug}`` with ``{"data": {...}}``: start one function now, whatever its
    triggers; its flow control and a pause apply, as on Inngest. 200 with the event's id as
    there; ``skipped`` and ``message`` say why no run started, if none did."""
    body = await responses.read_json(request, max_bytes=common.options(request).max_body_bytes)
    if not isinstance(body, dict):  # a list or a number started a run with no data
        return problem(400, 'send a JSON object, {"data": {...}} (the data of the event the run gets)')
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        return problem(400, "'data' must be a JSON object")
    _check_event(event_mod.FUNCTION_INVOKED, dict(data or {}))
    engine = common.engine(request)
    result = await engine.store.invoke_function(request.path_params["slug"], dict(data or {}))
    skipped = {} if result["skipped"] is None else {"skipped": result["skipped"], "message": result["message"]}
    return JSON({"id": result["event_id"], "run_id": result["run_id"], "status": 200, **skipped})


@common.route(rest_auth)
async def send_signal(request: Request) -> Response:
    """``POST /v1/signals`` with ``{"signal", "data"}``: resume the run in ``step.waitForSignal``."""
    body = await responses.read_json(request, max_bytes=common.options(request).max_body_bytes)
    signal = body.get("signal") if isinstance(body, dict) else None
    if not isinstance(signal, str) or not signal:
        return problem(400, 'send {"signal": "<name>", "data": <any JSON>}')
    try:
        _check_event(events.SIGNAL_EVENT, {"signal": signal, "data": body.get("data")})
    except errors.EventError as exc:
        return problem(400, f"the signal cannot be sent: {exc}")
    store = common.engine(request).store
    carrier = event_mod.Event(name=events.SIGNAL_EVENT, data={"signal": signal, "data": body.get("data")}, ts=store.now_ms())
    run_id = await store.send_signal(carrier, events.signal_expression(signal))
    if run_id is None:
        return problem(404, f"no run is waiting for signal {signal!r}")
    return JSON({"data": {"run_id": run_id}})


@common.route(common.api_token)
async def list_apps(request: Request) -> Response:
    return JSON({"data": runtime(request).list_apps()})


@common.route(common.api_token)
async def add_app(request: Request) -> Response:
    """``{"url": "http://127.0.0.1:3000/api/inngest"}``: remember the app and sync it now."""
    body = await responses.read_json(request, max_bytes=common.engine(request).settings.max_api_body_bytes)
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url.strip():
        return problem(400, 'send {"url": "<the app\'s serve URL, e.g. http://127.0.0.1:3000/api/inngest>"}')
    status = await runtime(request).sync(url)
    return JSON(status.to_dict(), status_code=200 if status.error is None else 502)


@common.route(common.api_token)
async def remove_app(request: Request) -> Response:
    """``DELETE /api/v1/inngest/apps?app=<name or serve URL>``: its functions stop matching events."""
    target = request.query_params.get("app") or request.query_params.get("url")
    if not target:
        return problem(400, "name the app: ?app=<its name or serve URL> (see GET /api/v1/inngest/apps)")
    return JSON(await runtime(request).remove(target))


@common.route(common.api_token)
async def sync_apps(request: Request) -> Response:
    """Re-sync every known app (or the one named by ``?url=``)."""
    rt = runtime(request)
    url = request.query_params.get("url")
    statuses = [await rt.sync(url)] if url else await rt.sync_all()
    return JSON({"data": [s.to_dict() for s in statuses]})


def routes() -> list[Route]:
    from stepline.server import inngest_realtime, inngest_rest  # they build on this module's checks

    return [
        *inngest_realtime.routes(),
        *inngest_rest.routes(),
        Route("/fn/register", register, methods=["POST"]),
        Route("/e/{event_key}", post_event, methods=["POST"]),
        Route("/v0/runs/{run_id}/batch", run_batch, methods=["GET"]),
        Route("/v0/runs/{run_id}/actions", run_actions, methods=["GET"]),
        id_route.IdRoute("/invoke/{slug}", invoke, methods=["POST"]),
        Route("/v1/signals", send_signal, methods=["POST"]),
        Route("/api/v1/inngest/apps", list_apps, methods=["GET"]),
        Route("/api/v1/inngest/apps", add_app, methods=["POST"]),
        Route("/api/v1/inngest/apps", remove_app, methods=["DELETE"]),
        Route("/api/v1/inngest/apps/sync", sync_apps, methods=["POST"]),
    ]


def mount(app: Starlette) -> None:
    """Put the SDK routes ahead of the core ones (``/e/{key}`` stays native for non-SDK senders)."""
    app.router.routes[0:0] = routes()
