"""Stepline in FastAPI and Starlette apps (``pip install 'stepline[fastapi]'``).

    from fastapi import Depends, FastAPI
    from stepline.integrations.fastapi import Stepline, get_stepline, job_router, stepline_lifespan

    app = FastAPI(lifespan=stepline_lifespan(apps=[jobs.app]))          # a worker inside the app
    # or: stepline_lifespan(url="http://stepline:8288", event_key=..., api_token=...)  # a server elsewhere
    app.include_router(job_router("/jobs", events=["llm/generate.requested"]))  # start, status, stream

    @app.post("/generate")
    async def generate(body: Prompt, stepline: Stepline = Depends(get_stepline)) -> dict:
        return await stepline.start_job({"name": "llm/generate.requested", "data": {...}})

Starlette apps use ``stepline_lifespan`` the same way and ``job_routes(...)`` (a Mount).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from stepline import errors
from stepline.app import App
from stepline.integrations import jobs as jobs_mod
from stepline.integrations.core import Connection, Events, Options, connect

STATE = "stepline"  # app.state attribute


class Stepline:
    """What routes get (``Depends(get_stepline)``): send events, start and read jobs."""

    def __init__(self, connection: Connection, jobs: jobs_mod.Jobs) -> None:
        self.connection = connection
        self.jobs = jobs

    async def send(self, events: Events) -> list[str]:
        return await self.connection.send(events)

    async def start_job(self, event: dict[str, Any], *, function_id: str | None = None) -> dict[str, Any]:
        return await self.jobs.start(event, function_id=function_id)

    async def run(self, run_id: str) -> Mapping[str, Any]:
        return await self.connection.run(run_id)


def stepline_lifespan(
    *,
    apps: Sequence[App] = (),
    url: str | None = None,
    event_key: str = "",
    api_token: str = "",
    db: str | None = None,
    run_worker: bool = True,
    signing_key: str = "",
    jobs_path: str = "/jobs",
    options: Options | None = None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan (``FastAPI(lifespan=...)``, ``Starlette(lifespan=...)``) that opens Stepline
    when the app starts and closes it when it stops: embedded (``apps`` registered, a worker
    with ``run_worker``, the database ``db`` or ``STEPLINE_DB``) unless ``url`` names a server."""
    opts = options or Options(url=url, event_key=event_key, api_token=api_token, db=db, apps=tuple(apps),
                              run_worker=run_worker, signing_key=signing_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        connection = connect(opts)
        await connection.start()
        setattr(app.state, STATE, Stepline(connection, jobs_mod.Jobs(connection, jobs_path)))
        try:
            yield
        finally:
            await connection.stop()

    return lifespan


def get_stepline(request: Request) -> Stepline:
    """The dependency that gives a route the app's Stepline."""
    found = getattr(request.app.state, STATE, None)
    if found is None:
        raise errors.ConfigError("Stepline is not open in this app: create it with FastAPI(lifespan=stepline_lifespan(...))")
    return found  # type: ignore[no-any-return]


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _job_endpoints(
    events: Iterable[str] | None, user_id: Callable[[Request], str | None] | None
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    allowed = None if events is None else frozenset(events)

    async def start(request: Request) -> Response:
        """Body ``{"name": ..., "data": {...}}``: only the event names the app allows."""
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "the body must be JSON: {\"name\": ..., \"data\": {...}}")
        try:
            event = jobs_mod.job_event(body, allowed, None if user_id is None else user_id(request))
            return JSONResponse(await get_stepline(request).start_job(event))
        except jobs_mod.JobError as exc:
            return _problem(exc.status, str(exc))

    async def status(request: Request) -> Response:
        try:
            job = await get_stepline(request).jobs.status(request.path_params["job_id"], _token(request))
        except jobs_mod.JobError as exc:
            return _problem(exc.status, str(exc))
        return JSONResponse(job)

    async def stream(request: Request) -> Response:
        jobs = get_stepline(request).jobs
        job_id, token = request.path_params["job_id"], _token(request)
        try:
            await jobs.status(job_id, token)  # refuse before the stream starts
        except jobs_mod.JobError as exc:
            return _problem(exc.status, str(exc))

        async def body() -> AsyncIterator[str]:
            async for job in jobs.updates(job_id, token):
                yield jobs_mod.sse(job)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    return start, status, stream


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return request.query_params.get("token") or (header[7:].strip() if header.lower().startswith("bearer ") else None)


def job_routes(prefix: str = "/jobs", *, events: Iterable[str] | None = None,
               user_id: Callable[[Request], str | None] | None = None) -> Mount:
    """``POST {prefix}`` starts a job (``events``: the event names allowed; ``user_id(request)``
    puts the signed-in user in its data), ``GET {prefix}/{job_id}?token=`` reads it,
    ``GET {prefix}/{job_id}/stream?token=`` streams it as Server-Sent Events until it ends."""
    start, status, stream = _job_endpoints(events, user_id)
    return Mount(prefix, routes=[
        Route("/", start, methods=["POST"]),
        Route("/{job_id}", status, methods=["GET"]),
        Route("/{job_id}/stream", stream, methods=["GET"]),
    ])


def job_router(prefix: str = "/jobs", *, events: Iterable[str] | None = None,
               user_id: Callable[[Request], str | None] | None = None) -> Any:
    """``job_routes`` as a FastAPI ``APIRouter`` (``app.include_router(job_router(...))``)."""
    from fastapi import APIRouter

    start, status, stream = _job_endpoints(events, user_id)
    base = prefix.rstrip("/")
    router = APIRouter()
    router.add_route(base, start, methods=["POST"])
    router.add_route(f"{base}/{{job_id}}", status, methods=["GET"])
    router.add_route(f"{base}/{{job_id}}/stream", stream, methods=["GET"])
    return router
