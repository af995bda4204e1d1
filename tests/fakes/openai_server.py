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


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeOpenAI(FakeServer):
    """`base_url` ends with `/v1`, as an OpenAI client's base URL does."""

    url_suffix = "/v1"

    def __init__(self, embedding_dimensions: int = 8) -> None:
        super().__init__()
        self.embedding_dimensions = embedding_dimensions

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/embeddings", self._embeddings),
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
        return await self.serve(request, completion, chunks)

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
