"""Gemini `GenerateContentResponse` -> OpenAI `chat.completion`: parts, usage, finish reasons."""

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
from .request import SIGNATURE_MARK


class GUsage(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    cached_content_token_count: int = 0
    tool_use_prompt_token_count: int = 0


class GFunctionCall(msgspec.Struct):
    name: str = ""
    args: Raw = Raw(b"{}")  # kept raw: it becomes `arguments` as it is
    id: str | None = None  # Vertex and newer models may name the call


class GPart(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False  # a thought summary, not the answer
    function_call: GFunctionCall | None = None
    thought_signature: str | None = None


class GContent(msgspec.Struct):
    parts: list[GPart] = []


class GCandidate(msgspec.Struct, rename="camel"):
    content: GContent | None = None
    finish_reason: str | None = None
    index: int = 0


class GPromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class GResponse(msgspec.Struct, rename="camel"):
    candidates: list[GCandidate] = []
    usage_metadata: GUsage | None = None
    prompt_feedback: GPromptFeedback | None = None
    response_id: str | None = None
    error: Raw | None = None  # an error in a stream


decode_response = msgspec.json.Decoder(GResponse).decode

# Everything Google stops for a policy reason is OpenAI's `content_filter`.
_FINISH: Final = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "LANGUAGE": "content_filter",
}


def finish_reason(reason: str | None, tool_calls: bool) -> str | None:
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if tool_calls and reason == "STOP":
        return "tool_calls"
    return _FINISH.get(reason, "stop")


def to_usage(u: GUsage) -> Usage:
    """`promptTokenCount` includes cached content; thinking tokens are billed as output,
    and the prompts of Google's own tools (search results) as input."""
    return Usage(
        prompt_tokens=u.prompt_token_count + u.tool_use_prompt_token_count,
        completion_tokens=u.candidates_token_count + u.thoughts_token_count,
        cached_tokens=u.cached_content_token_count,
    )


def usage_payload(u: GUsage) -> dict[str, Any]:
    usage = to_usage(u)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.thoughts_token_count},
    }


def tool_call_id(call: GFunctionCall, signature: str | None) -> str:
    base = call.id or "call_" + uuid.uuid4().hex[:24]
    return base + SIGNATURE_MARK + signature if signature else base


def chat_id(response_id: str | None) -> str:
    return "chatcmpl-" + (response_id or uuid.uuid4().hex)


def _choice(candidate: GCandidate, blocked: bool) -> tuple[dict[str, Any], int, str | None]:
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for part in candidate.content.parts if candidate.content else ():
        if part.function_call is not None:
            tool_calls.append({
                "id": tool_call_id(part.function_call, part.thought_signature),
                "type": "function",
                "function": {"name": part.function_call.name,
                             "arguments": bytes(part.function_call.args).decode()},
            })
        elif part.text:
            (thoughts if part.thought else texts).append(part.text)
    text = "".join(texts)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = "content_filter" if blocked else finish_reason(candidate.finish_reason,
                                                             bool(tool_calls))
    chars = len(text) + sum(map(len, thoughts))
    chars += sum(len(t["function"]["arguments"]) for t in tool_calls)
    choice = {"index": candidate.index, "message": message, "logprobs": None,
              "finish_reason": finish}
    return choice, chars, finish


def to_completion(
    body: bytes, model: str, provider: str = "gemini", created: int | None = None
) -> Completion:
    """A `GenerateContentResponse` (JSON bytes) as an OpenAI `chat.completion`.

    A prompt blocked before any candidate (`promptFeedback.blockReason`) is an empty
    answer with finish reason `content_filter`, as OpenAI reports its own refusals.
    """
    try:
        resp = decode_response(body)
    except msgspec.MsgspecError:
        raise malformed_response(provider) from None
    candidates = resp.candidates
    blocked = resp.prompt_feedback is not None and resp.prompt_feedback.block_reason is not None
    if not candidates:
        if not blocked:
            raise malformed_response(provider)
        candidates = [GCandidate()]
    choices: list[dict[str, Any]] = []
    chars = 0
    finish: str | None = None
    for candidate in sorted(candidates, key=lambda c: c.index):
        choice, n, reason = _choice(candidate, blocked)
        choices.append(choice)
        chars += n
        finish = finish or reason
    payload: dict[str, Raw] = {
        "id": encode_raw(chat_id(resp.response_id)),
        "object": Raw(b'"chat.completion"'),
        "created": encode_raw(int(time.time()) if created is None else created),
        "model": encode_raw(model),
        "choices": encode_raw(choices),
    }
    usage = None
    if resp.usage_metadata is not None:
        usage = to_usage(resp.usage_metadata)
        payload["usage"] = encode_raw(usage_payload(resp.usage_metadata))
    return Completion(payload, usage, finish, chars)
