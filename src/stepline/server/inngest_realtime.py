"""Inngest realtime for SDK apps: what a function publishes reaches its run's stream.

``POST /v1/realtime/publish?channel=C&topic=T&run_id=R`` is what the SDKs call for
``step.realtime.publish`` and for ``inngest.realtime.publish`` inside a run (TS 4.x). The
message is stored on run ``R`` with topic ``T``, as ``ctx.publish`` stores one, so it
reaches ``GET /api/v1/runs/{id}/stream`` (Server-Sent Events, ``message`` events) and
``stepline runs``; the channel is not kept (a run's stream is the run's). The body is the
message: JSON as given, anything else (a string, ``text/stream`` chunks) as one string.

Stepline does not serve Inngest's own subscriptions (``/v1/realtime/token``, the
``/v1/realtime/connect`` WebSocket, a publish outside any run): those answer with an
error that says where to subscribe instead, so nothing is silently lost.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline import errors, jsonutil, shown_text
from stepline import event as event_mod
from stepline.server import common, inngest
from stepline.server.responses import problem

SUBSCRIBE_INSTEAD = (
    "Stepline does not serve Inngest's realtime subscriptions (tokens, WebSocket): subscribe to a run's "
    "messages with GET /api/v1/runs/{run_id}/stream (Server-Sent Events; a browser uses a run token from "
    "POST /api/v1/runs/{run_id}/token)"
)


async def _read_body(request: Request) -> bytes:
    limit = common.engine(request).settings.max_message_bytes  # 512 KiB by default, as Inngest's server reads
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise errors.LimitError(
                f"a realtime message is over the limit of {limit} bytes (STEPLINE_MAX_MESSAGE_BYTES); publish a "
                "smaller one (or a reference to the data)"
            )
    return bytes(body)


def _message(body: bytes, content_type: str) -> str:
    """The message as stored JSON: the body's JSON, else its text as one JSON string."""
    if not content_type.startswith("text/stream"):
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            value = jsonutil.loads_request(body, max_depth=event_mod.current_limits().max_json_depth + 2)
            return jsonutil.dumps(value)
    text = body.decode(errors="replace")
    problem_ = jsonutil.text_problem(text)
    if problem_ is not None:
        raise errors.EventError(f"the realtime message {problem_}")
    return jsonutil.dumps(text)


@common.route(inngest.sdk_bearer)
async def publish(request: Request) -> Response:
    query = request.query_params
    topic = query.get("topic")  # the first one, as Inngest reads it
    run_id = query.get("run_id")
    if not topic:
        return problem(400, "'topic' is required: POST /v1/realtime/publish?channel=...&topic=...&run_id=...")
    size = len(topic.encode())
    if size > event_mod.current_limits().max_name_bytes:
        return problem(400, f"'topic' is {size:,} bytes, over the limit of {event_mod.current_limits().max_name_bytes:,} "
                            "(STEPLINE_MAX_NAME_BYTES); name the topic, put the content in the message")
    shown = shown_text.problem(topic)
    if shown is not None:  # shown as sent, in the run's stream and the dashboard
        return problem(400, f"'topic' {topic[:60]!r} {shown}; use a name like 'tokens'")
    if not run_id:
        return problem(
            400,
            "Stepline streams realtime messages per run: publish from inside a function run "
            "(step.realtime.publish, or inngest.realtime.publish within a step), which sends run_id; "
            f"a message outside a run has no stream to go to. {SUBSCRIBE_INSTEAD}",
        )
    data = _message(await _read_body(request), request.headers.get("content-type", ""))
    engine = common.engine(request)
    await engine.store.publish_from_app(run_id, topic, data)
    engine.published(run_id)
    return Response(status_code=200)


@common.route(inngest.sdk_bearer)
async def token(request: Request) -> Response:
    return problem(501, SUBSCRIBE_INSTEAD)


@common.route(common.open_access)
async def connect(request: Request) -> Response:
    return problem(501, SUBSCRIBE_INSTEAD)


def routes() -> list[Route]:
    return [
        Route("/v1/realtime/publish", publish, methods=["POST"]),
        Route("/v1/realtime/token", token, methods=["POST"]),
        Route("/v1/realtime/connect", connect, methods=["GET"]),
        Route("/v1/realtime/sse", connect, methods=["GET"]),
    ]
