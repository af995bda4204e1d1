"""A fake Anthropic Messages API: `POST /v1/messages`.

Streams follow the documented event flow: `message_start` (usage with input and cache
tokens), per content block `content_block_start`, `content_block_delta`s (`text_delta`
or `input_json_delta`) and `content_block_stop`, a `ping` after the first block starts,
`message_delta` (stop_reason, cumulative `usage.output_tokens`), `message_stop`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from .behaviour import ErrorEvent, FakeServer, Reply, argument_pieces, encode, request_id

_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _stop_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_use" if reply.tools else "end_turn")


def _tool_id(number: int, i: int) -> str:
    return f"toolu_fake{number:06d}x{i}"


def usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.prompt_tokens,
        "cache_creation_input_tokens": reply.cache_write_tokens,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": output_tokens,
    }


def message(reply: Reply, req: Any, number: int) -> bytes:
    content: list[dict[str, Any]] = []
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    for i, (name, args) in enumerate(reply.tools):
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(number, i),
                "name": name,
                "input": msgspec.json.decode(args),
            }
        )
    body: dict[str, Any] = {
        "id": f"msg_fake{number:06d}",
        "type": "message",
        "role": "assistant",
        "model": req.get("model"),
        "content": content,
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
    }
    if not reply.omit_usage:
        body["usage"] = usage(reply, reply.output_tokens())
    return encode(body)


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + encode(data) + b"\n\n"


def events(reply: Reply, req: Any, number: int) -> list[bytes]:
    start: dict[str, Any] = {
        "id": f"msg_fake{number:06d}",
        "type": "message",
        "role": "assistant",
        "model": req.get("model"),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if not reply.omit_usage:
        # The real API reports a token or so of output here; the total comes at the end.
        start["usage"] = usage(reply, min(1, reply.output_tokens()))
    out = [_event({"type": "message_start", "message": start})]

    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if reply.content:
        deltas = [{"type": "text_delta", "text": p} for p in reply.pieces()]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for i, (name, args) in enumerate(reply.tools):
        block = {"type": "tool_use", "id": _tool_id(number, i), "name": name, "input": {}}
        # The real API opens every tool input with an empty piece.
        pieces = ["", *argument_pieces(args)]
        blocks.append((block, [{"type": "input_json_delta", "partial_json": p} for p in pieces]))

    for index, (block, deltas) in enumerate(blocks):
        out.append(_event({"type": "content_block_start", "index": index, "content_block": block}))
        if index == 0:
            out.append(_event({"type": "ping"}))
        out += [_event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        out.append(_event({"type": "content_block_stop", "index": index}))
    if not blocks:
        out.append(_event({"type": "ping"}))

    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
    }
    if not reply.omit_usage:
        delta["usage"] = {"output_tokens": reply.output_tokens()}
    out.append(_event(delta))
    out.append(_event({"type": "message_stop"}))
    return out


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class FakeAnthropic(FakeServer):
    """`base_url` is the root (no `/v1`), as the Anthropic SDK's base URL is."""

    request_id_header = "request-id"

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []  # what `refusal` answered a 400 for

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages),
                web.post("/v1/messages/count_tokens", self._count_tokens)]

    def error_body(self, status: int, message: str, error_type: str | None) -> bytes:
        default = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        body = _error(error_type or default, message)
        body["request_id"] = request_id(self.hits)
        return encode(body)

    def error_frame(self, event: ErrorEvent) -> bytes:
        return _event(_error(event.error_type or "overloaded_error", event.message))

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        problem = refusal(await request.json(loads=_loads), count_only=False)
        if problem is not None:
            return self.refuse(request, problem)
        return await self.serve(request, message, events)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=_loads)
        problem = refusal(body, count_only=True)
        if problem is not None:
            return self.refuse(request, problem)
        return await self.serve(request, lambda _r, req, _n: encode(
            {"input_tokens": count_tokens(req)}))

    def refuse(self, request: web.Request, problem: str) -> web.Response:
        """Record the request, answer Anthropic's 400 for what the real API refuses."""
        self.refused.append(problem)
        return web.Response(status=400, content_type="application/json",
                            body=self.error_body(400, problem, None))


def _loads(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None


def count_tokens(req: Any) -> int:
    """The fake's own count: words of every text in the prompt, plus 3 a message."""
    text = msgspec.json.encode([req.get("system"), req.get("messages"), req.get("tools")])
    return len(text.split()) + 3 * len(req.get("messages") or [])


def refusal(req: Any, *, count_only: bool) -> str | None:
    """What the real Messages API answers a 400 for, of the mistakes a translation can
    make: a missing `max_tokens`, a role other than user/assistant (system included), an
    empty conversation, a `tool_result` that answers no `tool_use` of the turn before, a
    `tool_use` whose next turn holds no `tool_result`, a tool call in a user turn."""
    if not isinstance(req, dict):
        return "The request body is not valid JSON."
    if not isinstance(req.get("model"), str):
        return "model: Field required"
    if not count_only and not isinstance(req.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    calls: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        blocks = content if isinstance(content, list) else []
        answered = set()
        for b in blocks:
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "tool_result":
                if role != "user" or b.get("tool_use_id") not in calls:
                    return (f"messages.{i}: unexpected `tool_use_id` found in `tool_result` "
                            "blocks: each `tool_result` block must have a corresponding "
                            "`tool_use` block in the previous message.")
                answered.add(b.get("tool_use_id"))
            elif kind == "tool_use" and role == "user":
                return f"messages.{i}: `tool_use` blocks may only be in assistant messages"
        if calls - answered:
            return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    "immediately after")
        calls = ({b.get("id") for b in blocks if isinstance(b, dict) and b.get("type") ==  # type: ignore[misc]
                  "tool_use"} if role == "assistant" else set())
    return None
