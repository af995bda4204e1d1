"""Chat Completions answer -> OpenAI Responses `response` object.

The object echoes the request's settings (tools, tool_choice, text format, ...) as
OpenAI's does, so the same `envelope` serves the finished answer and the snapshots a
stream sends in `response.created`, `response.in_progress` and `response.completed`.
"""

from __future__ import annotations

import time
from typing import Any, Final

from ...errors import UpstreamError
from ...ids import ProcessIds
from ..chat import ChatChoice, Tokens, completion
from .request import ResponsesRequest

# finish_reason -> incomplete_details.reason; every other finish completes the response.
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


_IDS: Final = ProcessIds("{random}", 10)


def new_id(prefix: str) -> str:
    return f"{prefix}_{_IDS.next()}"


def status_of(choice: ChatChoice | None) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details) for the finish of a choice."""
    reason = _INCOMPLETE.get(choice.finish_reason or "") if choice is not None else None
    if reason is None:
        return "completed", None
    return "incomplete", {"reason": reason}


def usage(tokens: Tokens) -> dict[str, Any]:
    return {
        "input_tokens": tokens.input,
        "input_tokens_details": {
            "cached_tokens": tokens.cached,
            "cache_write_tokens": tokens.cache_write,
        },
        "output_tokens": tokens.output,
        "output_tokens_details": {"reasoning_tokens": tokens.reasoning},
        "total_tokens": tokens.input + tokens.output,
    }


def envelope(
    resp_id: str,
    created_at: int,
    req: ResponsesRequest,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: dict[str, Any] | None = None,
    incomplete: dict[str, str] | None = None,
) -> dict[str, Any]:
    text = req.text.format if req.text is not None else None
    fmt: dict[str, Any] = {"type": "text"}
    if text is not None and text.type == "json_object":
        fmt = {"type": "json_object"}
    elif text is not None and text.type == "json_schema":
        fmt = {"type": "json_schema", "name": text.name, "schema": text.schema,
               "strict": text.strict, "description": text.description}
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model or model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                      "summary": None},
        "store": False,
        "temperature": req.temperature,
        "text": {"format": fmt},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [_echo_tool(t) for t in req.tools or ()],
        "top_p": req.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    # OpenAI's echo always carries these two, null when not given.
    return {"parameters": None, "strict": None, **tool}


def message_item(item_id: str, text: str, status: str, refusal: bool = False) -> dict[str, Any]:
    part = (
        {"type": "refusal", "refusal": text}
        if refusal
        else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    )
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [part]}


def function_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def to_response(
    data: bytes | dict[str, Any],
    req: ResponsesRequest,
    provider: str = "upstream",
    created_at: int | None = None,
) -> dict[str, Any]:
    """A `chat.completion` (JSON bytes or dict) as a Responses `response` object."""
    c = completion(data, provider)
    if not c.choices or c.choices[0].message is None:
        raise UpstreamError(
            f"Upstream provider `{provider}` sent a completion without a message.",
            reason="malformed",
        )
    choice = c.choices[0]
    msg = choice.message
    assert msg is not None
    status, incomplete = status_of(choice)
    item_status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    if msg.thinking:
        output.append(reasoning_item(new_id("rs"), msg.thinking, item_status))
    if msg.content:
        output.append(message_item(new_id("msg"), msg.content, item_status))
    elif msg.refusal:
        output.append(message_item(new_id("msg"), msg.refusal, item_status, refusal=True))
    for call in msg.tool_calls or ():
        fn = call.function
        output.append(
            function_item(
                new_id("fc"),
                call.id or new_id("call"),
                fn.name if fn and fn.name else "",
                fn.arguments if fn and fn.arguments else "",
                "completed",
            )
        )
    tokens = Tokens.of(c.usage) if c.usage is not None else Tokens()
    return envelope(
        new_id("resp"),
        int(time.time()) if created_at is None else created_at,
        req,
        c.model,
        status,
        output,
        usage=usage(tokens),
        incomplete=incomplete,
    )
