"""Views that send to Stepline: sync and async, a fire-and-forget event and a job."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from stepline.integrations import django as stepline_django


def current_user(request: HttpRequest) -> str:
    return "u-demo"  # in a real site: request.user.username


@csrf_exempt  # an API for the example's page; a real site keeps CSRF and sends the token
@require_POST
def summarise(request: HttpRequest) -> HttpResponse:
    """Sync view: start a job and answer with what the page follows."""
    text = json.loads(request.body or b"{}").get("text", "")
    return JsonResponse(stepline_django.start_job({"name": "doc/summarise", "data": {"text": text, "user_id": current_user(request)}}))


@csrf_exempt
@require_POST
async def summarise_async(request: HttpRequest) -> HttpResponse:
    """Async view: the same, awaited."""
    text = json.loads(request.body or b"{}").get("text", "")
    return JsonResponse(await stepline_django.astart_job({"name": "doc/summarise", "data": {"text": text, "user_id": "u-demo"}}))


@csrf_exempt
@require_POST
def viewed(request: HttpRequest, doc_id: str) -> HttpResponse:
    """Fire and forget (sync)."""
    return JsonResponse({"ids": stepline_django.send({"name": "doc/viewed", "data": {"doc_id": doc_id}})})


@csrf_exempt
@require_POST
async def viewed_async(request: HttpRequest, doc_id: str) -> HttpResponse:
    """Fire and forget (async)."""
    return JsonResponse({"ids": await stepline_django.asend({"name": "doc/viewed", "data": {"doc_id": doc_id}})})
