"""Chat Completions answer -> Anthropic Messages answer: content blocks, stop reason, usage."""

from __future__ import annotations

import uuid
from typing import Any, Final

import msgspec

from ...errors import UpstreamError
from ..chat import ChatChoice, ChatCompletion, ChatToolCall, Tokens, completion

_STOP: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(
    choice: ChatChoice, stop_sequences: list[str] | None
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). OpenAI does not say which stop string matched, so
    `stop_sequence` is reported only where the provider names it (vLLM's `stop_reason`)."""
    reason = _STOP.get(choice.finish_reason or "stop", "end_turn")
    matched = choice.stop_reason
    if reason == "end_turn" and isinstance(matched, str) and matched in (stop_sequences or ()):
        return "stop_sequence", matched
    return reason, None


def usage(tokens: Tokens) -> dict[str, int]:
    """Anthropic's `input_tokens` leaves out cache reads and writes; OpenAI's
    `prompt_tokens` includes them (the reverse of the Anthropic adapter's `to_usage`)."""
    return {
        "input_tokens": max(tokens.input - tokens.cached - tokens.cache_write, 0),
        "output_tokens": tokens.output,
        "cache_read_input_tokens": tokens.cached,
        "cache_creation_input_tokens": tokens.cache_write,
    }


def message_id(chat_id: str) -> str:
    return "msg_" + (chat_id.removeprefix("chatcmpl-") or uuid.uuid4().hex)


def tool_input(call: ChatToolCall, provider: str) -> dict[str, Any]:
    """A tool call's JSON-string arguments as the object Anthropic's `input` is."""
    fn = call.function
    text = (fn.arguments if fn else None) or "{}"
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"Upstream provider `{provider}` sent tool arguments that are not a JSON object.",
            reason="malformed",
        )
    return value


def to_message(
    data: bytes | dict[str, Any],
    model: str,
    stop_sequences: list[str] | None = None,
    provider: str = "upstream",
) -> dict[str, Any]:
    """A `chat.completion` (JSON bytes or dict) as an Anthropic `message` object.

    `model` is the name the client asked for, which Anthropic echoes back.
    """
    c: ChatCompletion = completion(data, provider)
    if not c.choices or c.choices[0].message is None:
        raise UpstreamError(
            f"Upstream provider `{provider}` sent a completion without a message.",
            reason="malformed",
        )
    choice = c.choices[0]
    msg = choice.message
    assert msg is not None
    content: list[dict[str, Any]] = []
    if msg.thinking:
        # Not signed by Anthropic: a client that sends it back here gets it dropped.
        content.append({"type": "thinking", "thinking": msg.thinking, "signature": ""})
    text = msg.content or msg.refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in msg.tool_calls or ():
        content.append(
            {
                "type": "tool_use",
                "id": call.id or "toolu_" + uuid.uuid4().hex,
                "name": call.function.name if call.function and call.function.name else "",
                "input": tool_input(call, provider),
            }
        )
    reason, sequence = stop_reason(choice, stop_sequences)
    return {
        "id": message_id(c.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(Tokens.of(c.usage) if c.usage is not None else Tokens()),
    }
