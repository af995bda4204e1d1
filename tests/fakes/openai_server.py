"""A fake OpenAI API: `POST /v1/chat/completions` and `POST /v1/embeddings`.

Bodies follow the real wire format: compact JSON, `chat.completion.chunk` events each on
one `data:` line, `usage: null` on every chunk and a last `choices: []` chunk carrying
usage only when the request set `stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import base64
import math
import random
import struct
import time
from typing import Any, Final

from aiohttp import web

from .behaviour import ErrorEvent, FakeServer, Reply, argument_pieces, encode

FINGERPRINT: Final = "fp_fake0001"

# The type and code OpenAI sends with each status; other 4xx are invalid_request_error.
_ERRORS: Final[dict[int, tuple[str, str | None]]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def embedding_for(text: str, dimensions: int = 8) -> list[float]:
    """The fake's deterministic unit vector for one input."""
    rng = random.Random(text)
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def usage(reply: Reply) -> dict[str, Any]:
    out = reply.output_tokens()
    details: dict[str, int] = {"cached_tokens": reply.cached_tokens, "audio_tokens": 0}
    if reply.cache_write_tokens:  # not OpenAI's, but some compatible servers send it
        details["cache_creation_tokens"] = reply.cache_write_tokens
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": out,
        "total_tokens": reply.prompt_tokens + out,
        "prompt_tokens_details": details,
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tools else "stop")


def _call_id(number: int, i: int) -> str:
    return f"call_fake{number:06d}x{i}"


def completion(reply: Reply, req: Any, number: int) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.content or None,
        "refusal": None,
        "annotations": [],
    }
    if reply.tools:
        message["tool_calls"] = [
            {
                "id": _call_id(number, i),
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            for i, (name, args) in enumerate(reply.tools)
        ]
    body: dict[str, Any] = {
        "id": f"chatcmpl-fake{number:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model"),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(reply)}
        ],
    }
    if not reply.omit_usage:
        body["usage"] = usage(reply)
    body["service_tier"] = "default"
    body["system_fingerprint"] = FINGERPRINT
    return encode(body)


def chunks(reply: Reply, req: Any, number: int) -> list[bytes]:
    opts = req.get("stream_options")
    with_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    with_usage = with_usage and not reply.omit_usage
    head = {
        "id": f"chatcmpl-fake{number:06d}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.get("model"),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk: dict[str, Any] = {**head, "choices": [choice]}
        if with_usage:
            chunk["usage"] = None
        return b"data: " + encode(chunk) + b"\n\n"

    events = [
        event({"role": "assistant", "content": "" if reply.content else None, "refusal": None})
    ]
    events += [event({"content": piece}) for piece in reply.pieces()]
    for i, (name, args) in enumerate(reply.tools):
        first = {
            "index": i,
            "id": _call_id(number, i),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append(event({"tool_calls": [first]}))
        events += [
            event({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            for piece in argument_pieces(args)
        ]
    events.append(event({}, _finish(reply)))
    if with_usage:
        last = {**head, "choices": [], "usage": usage(reply)}
        events.append(b"data: " + encode(last) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


# Fields of the Responses API that Chat Completions does not take (a chat-only server
# refuses them): a translation that leaked one would be caught here.
RESPONSES_ONLY: Final = frozenset({
    "input", "instructions", "max_output_tokens", "text", "previous_response_id",
    "reasoning", "truncation", "include", "conversation", "background", "max_tool_calls",
})


def text_completion(reply: Reply, req: Any, number: int) -> bytes:
    body: dict[str, Any] = {
        "id": f"cmpl-fake{number:06d}", "object": "text_completion",
        "created": int(time.time()), "model": req.get("model"),
        "choices": [{"text": reply.content, "index": 0, "logprobs": None,
                     "finish_reason": reply.finish_reason or "stop"}],
    }
    if not reply.omit_usage:
        body["usage"] = usage(reply)
    return encode(body)


def text_chunks(reply: Reply, req: Any, number: int) -> list[bytes]:
    opts = req.get("stream_options")
    with_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    head = {"id": f"cmpl-fake{number:06d}", "object": "text_completion",
            "created": int(time.time()), "model": req.get("model")}

    def event(text: str, finish: str | None = None) -> bytes:
        chunk = {**head, "choices": [{"text": text, "index": 0, "logprobs": None,
                                      "finish_reason": finish}]}
        return b"data: " + encode(chunk) + b"\n\n"

    events = [event(p) for p in reply.pieces()]
    events.append(event("", reply.finish_reason or "stop"))
    if with_usage and not reply.omit_usage:
        events.append(b"data: " + encode({**head, "choices": [], "usage": usage(reply)})
                      + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _responses_request(req: Any) -> Any:
    from proxy.dialects.responses import parse_request

    fields = {k: v for k, v in req.items() if k in _RESPONSES_ECHOED}
    fields.setdefault("input", "")
    return parse_request(encode(fields))


_RESPONSES_ECHOED: Final = frozenset({
    "input", "model", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
    "tool_choice", "parallel_tool_calls", "text", "metadata", "user",
})


def response_object(reply: Reply, req: Any, number: int) -> bytes:
    """OpenAI's Responses `response` for the reply (the gateway's own renderer, checked
    against the SDK's types in tests/test_dialect_responses.py)."""
    from proxy.dialects.responses import to_response

    answer = to_response(completion(reply, req, number), _responses_request(req))
    answer["store"] = req.get("store", True)
    return encode(answer)


def response_events(reply: Reply, req: Any, number: int) -> list[bytes]:
    from proxy.dialects.responses import ResponsesStream

    tr = ResponsesStream(_responses_request(req), str(req.get("model")))
    with_usage = {**req, "stream_options": {"include_usage": True}}
    out: list[bytes] = []
    for event in chunks(reply, with_usage, number):
        data = event[len(b"data: "):-2]
        if data == b"[DONE]":
            break
        blob = tr.feed(data)
        # One SSE event per write, as OpenAI sends them.
        out += [b + b"\n\n" for b in blob.split(b"\n\n") if b]
    out += [b + b"\n\n" for b in tr.finish().split(b"\n\n") if b]
    return out


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeOpenAI(FakeServer):
    """`base_url` ends with `/v1`, as an OpenAI client's base URL does."""

    url_suffix = "/v1"

    def __init__(self, embedding_dimensions: int = 8) -> None:
        super().__init__()
        self.embedding_dimensions = embedding_dimensions
        self.refused: list[str] = []  # Responses-only fields sent to chat

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/embeddings", self._embeddings),
            web.post("/v1/completions", self._completions),
            web.post("/v1/responses", self._responses),
        ]

    def error_body(self, status: int, message: str, error_type: str | None) -> bytes:
        default_type, code = _ERRORS.get(
            status, ("invalid_request_error" if status < 500 else "server_error", None)
        )
        return encode(_error(message, error_type or default_type, code))

    def error_frame(self, event: ErrorEvent) -> bytes:
        body = _error(event.message, event.error_type or "server_error", None)
        return b"data: " + encode(body) + b"\n\n"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            req = await request.json()
        except ValueError:
            req = None
        wrong = sorted(set(req) & RESPONSES_ONLY) if isinstance(req, dict) else []
        if wrong:  # as OpenAI answers a Responses body sent to Chat Completions
            self.refused.append(wrong[0])
            return web.Response(status=400, content_type="application/json", body=encode(
                _error(f"Unrecognized request argument supplied: {wrong[0]}",
                       "invalid_request_error", None)))
        return await self.serve(request, completion, chunks)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, text_completion, text_chunks)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, response_object, response_events)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._embedding_list)

    def _embedding_list(self, reply: Reply, req: Any, number: int) -> bytes:
        raw = req.get("input")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        dims = req.get("dimensions") or self.embedding_dimensions
        as_base64 = req.get("encoding_format") == "base64"
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item or []))
            tokens += len(text.split())
            vec = embedding_for(text, dims)
            value: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_base64 else vec
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        return encode(
            {
                "object": "list",
                "data": data,
                "model": req.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
