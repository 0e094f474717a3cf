"""Stepline in Flask (``pip install 'stepline[flask]'``).

    from stepline.integrations.flask import Stepline

    app = Flask(__name__)
    app.config["STEPLINE"] = {"APPS": [jobs], "DB": "..."}     # or "URL", "EVENT_KEY", "API_TOKEN"
    stepline = Stepline(app)                                    # or Stepline() ... stepline.init_app(app)
    app.register_blueprint(stepline.job_blueprint("/jobs", events=["doc/summarise"]))

    @app.post("/summarise")
    def summarise():
        return stepline.start_job({"name": "doc/summarise", "data": {...}})

``APPS`` takes stepline.App objects or ``"module:attribute"`` strings; ``RUN_WORKER`` (default
True) runs their functions in the web process, else run ``stepline worker`` beside it.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stepline import errors
from stepline.app import App
from stepline.integrations import jobs as jobs_mod
from stepline.integrations.blocking import BlockingConnection
from stepline.integrations.core import Events, Options, connect, load_app

EXTENSION = "stepline"


class Stepline:
    """The extension: one connection per app, opened on first use, closed at exit."""

    def __init__(self, app: Any = None, **options: Any) -> None:
        self._overrides = options
        self._config: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._open: tuple[BlockingConnection, jobs_mod.Jobs] | None = None
        self._jobs_path = "/jobs"
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        self._config = {**dict(app.config.get("STEPLINE") or {}), **{k.upper(): v for k, v in self._overrides.items()}}
        self.options()  # a typo fails when the app is made, naming the key
        app.extensions[EXTENSION] = self

    def options(self) -> Options:
        values = dict(self._config)
        apps = [self._app(a) for a in values.pop("APPS", [])]
        return Options.from_mapping(values, apps=apps)

    @staticmethod
    def _app(value: Any) -> App:
        if isinstance(value, App):
            return value
        return load_app(str(value))

    def _current(self) -> tuple[BlockingConnection, jobs_mod.Jobs]:
        with self._lock:
            if self._open is None:
                if not self._config and not self._overrides:
                    raise errors.ConfigError("Stepline is not set up: Stepline(app) or stepline.init_app(app) first")
                connection = BlockingConnection(connect(self.options()))
                self._open = (connection, jobs_mod.Jobs(connection.connection, self._jobs_path))
                atexit.register(self.close)
            return self._open

    def close(self) -> None:
        with self._lock:
            if self._open is not None:
                self._open[0].close()
                self._open = None

    def send(self, events: Events) -> list[str]:
        """Send events; returns their ids once stored."""
        return self._current()[0].send(events)

    def start_job(self, event: dict[str, Any], *, function_id: str | None = None) -> dict[str, Any]:
        """Send ``event``; the job a page follows (``job_id``, ``token``, ``status_url``, ``stream_url``)."""
        connection, jobs = self._current()
        return connection.call(jobs.start(event, function_id=function_id))

    def job_status(self, job_id: str, token: str | None) -> dict[str, Any]:
        connection, jobs = self._current()
        return connection.call(jobs.status(job_id, token))

    def job_updates(self, job_id: str, token: str | None) -> Iterator[dict[str, Any]]:
        connection, jobs = self._current()
        return connection.job_updates(jobs, job_id, token)

    def job_blueprint(self, url_prefix: str = "/jobs", *, events: Iterable[str] | None = None,
                      user_id: Callable[[], str | None] | None = None) -> Any:
        """``POST {url_prefix}`` starts a job (``events``: the names allowed; ``user_id()``: the
        signed-in user put in its data), ``GET {url_prefix}/<job_id>?token=`` reads it,
        ``GET {url_prefix}/<job_id>/stream?token=`` streams it as Server-Sent Events until it ends."""
        from flask import Blueprint, Response, jsonify, request

        self._jobs_path = url_prefix
        allowed = None if events is None else frozenset(events)
        blueprint = Blueprint("stepline_jobs", __name__, url_prefix=url_prefix)

        def problem(status: int, message: str) -> Any:
            return jsonify({"error": message, "status": status}), status

        def token() -> str | None:
            header = request.headers.get("authorization", "")
            return request.args.get("token") or (header[7:].strip() if header.lower().startswith("bearer ") else None)

        @blueprint.post("")
        def start() -> Any:
            body = request.get_json(silent=True)
            try:
                event = jobs_mod.job_event(body, allowed, None if user_id is None else user_id())
                return jsonify(self.start_job(event))
            except jobs_mod.JobError as exc:
                return problem(exc.status, str(exc))

        @blueprint.get("/<job_id>")
        def status(job_id: str) -> Any:
            try:
                return jsonify(self.job_status(job_id, token()))
            except jobs_mod.JobError as exc:
                return problem(exc.status, str(exc))

        @blueprint.get("/<job_id>/stream")
        def stream(job_id: str) -> Any:
            supplied = token()
            try:
                self.job_status(job_id, supplied)  # refuse before the stream starts
            except jobs_mod.JobError as exc:
                return problem(exc.status, str(exc))
            body = (jobs_mod.sse(job) for job in self.job_updates(job_id, supplied))
            return Response(body, mimetype="text/event-stream", headers={"cache-control": "no-store"})

        return blueprint
