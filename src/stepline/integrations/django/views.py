"""The job routes for Django: start (allowed events only), status and stream, each job
read only with the token minted for it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from stepline.integrations import django as stepline_django
from stepline.integrations import jobs as jobs_mod


def _problem(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message, "status": status}, status=status)


def _token(request: HttpRequest) -> str | None:
    header = request.headers.get("authorization", "")
    return request.GET.get("token") or (header[7:].strip() if header.lower().startswith("bearer ") else None)


def patterns(
    events: Iterable[str] | None, user_id: Callable[[HttpRequest], str | None] | None, exempt_from_csrf: bool = False
) -> list[Any]:
    allowed = None if events is None else frozenset(events)

    @require_POST
    def start(request: HttpRequest) -> HttpResponse:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _problem(400, "the body must be JSON: {\"name\": ..., \"data\": {...}}")
        try:
            event = jobs_mod.job_event(body, allowed, None if user_id is None else user_id(request))
            return JsonResponse(stepline_django.start_job(event))
        except jobs_mod.JobError as exc:
            return _problem(exc.status, str(exc))

    @require_GET
    def status(request: HttpRequest, job_id: str) -> HttpResponse:
        try:
            return JsonResponse(stepline_django.job_status(job_id, _token(request)))
        except jobs_mod.JobError as exc:
            return _problem(exc.status, str(exc))

    @require_GET
    def stream(request: HttpRequest, job_id: str) -> HttpResponse:
        token = _token(request)
        try:
            stepline_django.job_status(job_id, token)  # refuse before the stream starts
        except jobs_mod.JobError as exc:
            return _problem(exc.status, str(exc))

        def body() -> Iterator[str]:
            for job in stepline_django.job_updates(job_id, token):
                yield jobs_mod.sse(job)

        response = StreamingHttpResponse(body(), content_type="text/event-stream")
        response["Cache-Control"] = "no-store"
        return response

    return [
        path("", csrf_exempt(start) if exempt_from_csrf else start, name="stepline-job-start"),
        path("<str:job_id>", status, name="stepline-job"),
        path("<str:job_id>/stream", stream, name="stepline-job-stream"),
    ]
