"""The fake provider's answers in the OpenAI chat-completions and Anthropic Messages formats.

Pure functions of the request body and an ``answer`` (the reply's text, reasoning,
tool calls, finish reason, token counts and cost, worked out by the provider):
whole bodies, the server-sent events of a stream, and error bodies, each shaped as
the real APIs shape them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def openai_usage(answer: dict[str, Any]) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": answer["prompt"],
        "completion_tokens": answer["completion"],
        "total_tokens": answer["prompt"] + answer["completion"],
        "prompt_tokens_details": {"cached_tokens": answer["cached"]},
        "completion_tokens_details": {"reasoning_tokens": answer["reasoning_tokens"]},
    }
    if answer["cost"] is not None:
        usage["cost"] = answer["cost"]
    return usage


def openai_body(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer["text"]}
    if answer["tools"]:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in answer["tools"]]
    if answer["reasoning"]:
        message["reasoning_content"] = answer["reasoning"]
    return {
        "id": f"chatcmpl-fake{answer['id']}", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": answer["finish"], "logprobs": None}],
        "usage": openai_usage(answer),
    }


def openai_events(body: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    base = {"id": f"chatcmpl-fake{answer['id']}", "object": "chat.completion.chunk", "created": int(time.time()), "model": body.get("model")}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}
        return f"data: {orjson.dumps(data).decode()}\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    if answer["reasoning"]:
        events += [chunk({"reasoning_content": piece}) for piece in pieces(answer["reasoning"])]
    events += [chunk({"content": piece}) for piece in pieces(answer["text"])]
    for index, (call_id, name, args) in enumerate(answer["tools"]):
        events.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}))
        events += [chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i:i + 8]}}]}) for i in range(0, len(args), 8)]
    events.append(chunk({}, answer["finish"]))
    include = bool((body.get("stream_options") or {}).get("include_usage")) or answer["cost"] is not None
    if include:
        events.append(f"data: {orjson.dumps({**base, 'choices': [], 'usage': openai_usage(answer)}).decode()}\n\n")
    events.append("data: [DONE]\n\n")
    return events


def anthropic_usage(answer: dict[str, Any]) -> dict[str, Any]:
    return {"input_tokens": answer["prompt"] - answer["cached"], "output_tokens": answer["completion"],
            "cache_read_input_tokens": answer["cached"], "cache_creation_input_tokens": 0}


def anthropic_body(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer["reasoning"]:
        content.append({"type": "thinking", "thinking": answer["reasoning"], "signature": "fake"})
    content.append({"type": "text", "text": answer["text"]})
    content += [{"type": "tool_use", "id": i, "name": n, "input": orjson.loads(a or "{}")} for i, n, a in answer["tools"]]
    return {"id": f"msg_fake{answer['id']}", "type": "message", "role": "assistant", "model": body.get("model"), "content": content,
            "stop_reason": STOP.get(answer["finish"], answer["finish"]), "stop_sequence": None, "usage": anthropic_usage(answer)}


def anthropic_events(body: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {orjson.dumps({'type': name, **data}).decode()}\n\n"

    usage = anthropic_usage(answer)
    start: dict[str, Any] = {"id": f"msg_fake{answer['id']}", "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    events = [event("message_start", {"message": start}), event("ping", {})]
    index = 0
    if answer["reasoning"]:
        events.append(event("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}))
        events += [event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": p}}) for p in pieces(answer["reasoning"])]
        events.append(event("content_block_stop", {"index": 0}))
        index = 1
    events.append(event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
    events += [event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}}) for p in pieces(answer["text"])]
    events.append(event("content_block_stop", {"index": index}))
    for offset, (call_id, name, args) in enumerate(answer["tools"], start=index + 1):
        events.append(event("content_block_start", {"index": offset, "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}}))
        events += [event("content_block_delta", {"index": offset, "delta": {"type": "input_json_delta", "partial_json": args[i:i + 8]}}) for i in range(0, len(args), 8)]
        events.append(event("content_block_stop", {"index": offset}))
    events.append(event("message_delta", {"delta": {"stop_reason": STOP.get(answer["finish"], answer["finish"]), "stop_sequence": None},
                                          "usage": {"output_tokens": answer["completion"]}}))
    events.append(event("message_stop", {}))
    return events


def error_body(wire: str, status: int, message: str, code: str | None, request_id: str) -> dict[str, Any]:
    """An error answer's body as each API writes it (``code`` as OpenAI's error code)."""
    if wire == "anthropic":
        kind = code if code in ANTHROPIC_ERROR_TYPES.values() else ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        error: dict[str, Any] = {"type": kind, "message": message}
        if code == "insufficient_quota":
            error["details"] = {"error_code": "enforced_spend_limit_reached"}
        return {"type": "error", "error": error, "request_id": request_id}
    kind = "insufficient_quota" if code == "insufficient_quota" else ("rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def pieces(text: str) -> list[str]:
    """Split text into word-sized stream deltas that join back exactly."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i < len(words) - 1] or [""]
