"""The internal model's answer side, as the dialects read it: Chat Completions
completions and chunks, decoded once into small Structs, and their usage in plain counts.

Fields are optional with defaults because OpenAI-compatible providers differ in what
they send (`reasoning_content` or `reasoning`, usage on the finish chunk or after it).
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

import msgspec

from ..errors import InvalidRequest, malformed_response

T = TypeVar("T")


class ChatFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ChatToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: ChatFunction | None = None


class ChatMessage(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the name some providers give `reasoning_content`
    refusal: str | None = None
    tool_calls: list[ChatToolCall] | None = None

    @property
    def thinking(self) -> str | None:
        return self.reasoning_content or self.reasoning


class ChatChoice(msgspec.Struct):
    index: int = 0
    message: ChatMessage | None = None
    delta: ChatMessage | None = None
    finish_reason: str | None = None
    # vLLM and SGLang name the stop string that ended the output here; OpenAI does not.
    stop_reason: str | int | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None  # what the gateway's Anthropic adapter reports
    cache_write_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class ChatUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class ChatCompletion(msgspec.Struct):
    """A `chat.completion` or one `chat.completion.chunk`: the same fields matter."""

    id: str = ""
    model: str = ""
    created: int = 0
    choices: list[ChatChoice] = []
    usage: ChatUsage | None = None


class Tokens(msgspec.Struct, frozen=True):
    """Usage in plain counts: `input` includes cache reads and writes, as OpenAI counts."""

    input: int = 0
    output: int = 0
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0

    @classmethod
    def of(cls, u: ChatUsage) -> Tokens:
        p = u.prompt_tokens_details or _PromptDetails()
        c = u.completion_tokens_details or _CompletionDetails()
        return cls(
            input=u.prompt_tokens,
            output=u.completion_tokens,
            cached=p.cached_tokens or 0,
            cache_write=p.cache_write_tokens or p.cache_creation_tokens or 0,
            reasoning=c.reasoning_tokens or 0,
        )


_decode_completion = msgspec.json.Decoder(ChatCompletion).decode


def completion(data: bytes | dict[str, Any], provider: str = "upstream") -> ChatCompletion:
    """A completion or chunk from JSON bytes or an already decoded dict."""
    try:
        if isinstance(data, bytes):
            return _decode_completion(data)
        return msgspec.convert(data, ChatCompletion)
    except msgspec.MsgspecError:
        raise malformed_response(provider) from None


_LOC: Final = re.compile(r" - at `\$(.*)`")


def decode_request(body: bytes, type_: type[T]) -> T:
    """A client body as `type_`, or a 400 naming the field at fault (as `wire.field` does)."""
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _LOC.search(text)
        where = m.group(1).lstrip(".") if m else None
        problem = (text[: m.start()] if m else text).replace("`", "")
        suffix = f" at `{where}`" if where else ""
        raise InvalidRequest(f"Invalid request{suffix}: {problem}.", param=where) from None
    except msgspec.DecodeError as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}.") from None


def refuse(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"`{name}` is not supported: {why}", param=name)


def convert_at(value: Any, type_: type[T], where: str) -> T:
    """`value` (part of a decoded body) as `type_`, or a 400 naming `where` and below."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _LOC.search(text)
        at = where + (m.group(1) if m else "")
        problem = (text[: m.start()] if m else text).replace("`", "")
        raise InvalidRequest(f"Invalid request at `{at}`: {problem}.", param=at) from None
