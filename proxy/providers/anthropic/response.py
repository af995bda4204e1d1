"""Anthropic message -> OpenAI `chat.completion`: content, usage and stop reasons."""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

import msgspec
from msgspec import Raw

from ...catalog import Usage
from ...errors import malformed_response
from ...wire import encode_raw
from ..base import Completion


class _AUsage(msgspec.Struct):
    # None means "not in this event": message_delta repeats only some of them.
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Block(msgspec.Struct):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: Raw = Raw(b"{}")  # tool_use only; kept raw, it becomes `arguments` as is


class _AMessage(msgspec.Struct):
    id: str = ""
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _AUsage | None = None


_decode_message = msgspec.json.Decoder(_AMessage).decode

# Anthropic's stop reasons as OpenAI's finish reasons (Bedrock's Converse adds its own).
FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, "stop")


def to_usage(u: _AUsage) -> Usage:
    """Anthropic's input_tokens leaves out cache reads and writes; OpenAI's prompt_tokens
    includes them, and so does the gateway's `Usage`."""
    read = u.cache_read_input_tokens or 0
    written = u.cache_creation_input_tokens or 0
    return Usage(
        prompt_tokens=(u.input_tokens or 0) + read + written,
        completion_tokens=u.output_tokens or 0,
        cached_tokens=read,
        cache_write_tokens=written,
    )


def usage_payload(usage: Usage) -> dict[str, Any]:
    """OpenAI's `usage` object; `cache_creation_tokens` is read back by the OpenAI adapter."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_creation_tokens": usage.cache_write_tokens,
        },
    }


def _chat_id(message_id: str) -> str:
    return "chatcmpl-" + (message_id or uuid.uuid4().hex)


def to_completion(
    body: bytes, model: str, provider: str = "anthropic", created: int | None = None,
    structured: str | None = None,
) -> Completion:
    """An Anthropic message (JSON bytes) as an OpenAI `chat.completion`.

    `structured` names the tool that carried a `response_format` answer: its input is
    the message's content, and the call is not shown as a tool call.
    """
    try:
        msg = _decode_message(body)
    except msgspec.MsgspecError:
        raise malformed_response(provider) from None
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg.content:
        if block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type == "thinking" and block.thinking:
            reasoning.append(block.thinking)
        elif block.type == "tool_use" and structured is not None and block.name == structured:
            texts.append(bytes(block.input).decode())
        elif block.type == "tool_use":
            arguments = bytes(block.input).decode()
            tool_calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": arguments},
                }
            )
    text = "".join(texts)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = finish_reason(msg.stop_reason)
    if finish == "tool_calls" and not tool_calls and structured is not None:
        finish = "stop"  # only the output tool was called: the answer is complete
    usage = to_usage(msg.usage) if msg.usage is not None else None
    payload: dict[str, Raw] = {
        "id": encode_raw(_chat_id(msg.id)),
        "object": Raw(b'"chat.completion"'),
        "created": encode_raw(int(time.time()) if created is None else created),
        "model": encode_raw(model),
        "choices": encode_raw(
            [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        ),
    }
    if usage is not None:
        payload["usage"] = encode_raw(usage_payload(usage))
    chars = len(text) + sum(len(t["function"]["arguments"]) for t in tool_calls)
    return Completion(payload, usage, finish, chars + sum(map(len, reasoning)))
