"""Converse response -> OpenAI `chat.completion`: content, usage and stop reasons."""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

import msgspec
from msgspec import Raw

from ...catalog import Usage
from ...errors import malformed_response
from ...wire import encode_raw
from ..anthropic import usage_payload
from ..anthropic.response import FINISH_REASONS
from ..base import Completion


class CUsage(msgspec.Struct, rename="camel"):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0


class _ToolUse(msgspec.Struct, rename="camel"):
    tool_use_id: str = ""
    name: str = ""
    input: Raw = Raw(b"{}")  # becomes `arguments` as it came


class _ReasoningText(msgspec.Struct):
    text: str = ""


class _Reasoning(msgspec.Struct, rename="camel"):
    reasoning_text: _ReasoningText | None = None


class _Block(msgspec.Struct, rename="camel"):
    text: str | None = None
    tool_use: _ToolUse | None = None
    reasoning_content: _Reasoning | None = None


class _Message(msgspec.Struct):
    content: list[_Block] = []


class _Output(msgspec.Struct):
    message: _Message | None = None


class _Response(msgspec.Struct, rename="camel"):
    output: _Output | None = None
    stop_reason: str | None = None
    usage: CUsage | None = None


_decode_response = msgspec.json.Decoder(_Response).decode

_FINISH: Final = {  # Converse's stop reasons are Anthropic's, and two of its own
    **FINISH_REASONS,
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str | None:
    if stop_reason is None:
        return None
    return _FINISH.get(stop_reason, "stop")


def to_usage(u: CUsage) -> Usage:
    """Converse's inputTokens leaves out cache reads and writes (its totalTokens adds them);
    the gateway's `Usage`, as OpenAI's prompt_tokens, includes them."""
    read, written = u.cache_read_input_tokens, u.cache_write_input_tokens
    return Usage(
        prompt_tokens=u.input_tokens + read + written,
        completion_tokens=u.output_tokens,
        cached_tokens=read,
        cache_write_tokens=written,
    )


def chat_id(request_id: str | None) -> str:
    """Converse answers carry no id: AWS's request id names the completion (traceable in
    AWS's logs), or a random one."""
    return "chatcmpl-" + (request_id or uuid.uuid4().hex)


def to_completion(
    body: bytes,
    model: str,
    provider: str,
    request_id: str | None = None,
    created: int | None = None,
) -> Completion:
    """A Converse response (JSON bytes) as an OpenAI `chat.completion`."""
    try:
        resp = _decode_response(body)
    except msgspec.MsgspecError:
        raise malformed_response(provider) from None
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    blocks = resp.output.message.content if resp.output and resp.output.message else []
    for block in blocks:
        if block.text:
            texts.append(block.text)
        elif block.tool_use is not None:
            tool_calls.append({
                "id": block.tool_use.tool_use_id,
                "type": "function",
                "function": {"name": block.tool_use.name,
                             "arguments": bytes(block.tool_use.input).decode()},
            })
        elif block.reasoning_content and block.reasoning_content.reasoning_text:
            reasoning.append(block.reasoning_content.reasoning_text.text)
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
    finish = finish_reason(resp.stop_reason)
    usage = to_usage(resp.usage) if resp.usage is not None else None
    payload: dict[str, Raw] = {
        "id": encode_raw(chat_id(request_id)),
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
