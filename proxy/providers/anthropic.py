"""Anthropic's Messages API (`POST /v1/messages`) behind the OpenAI chat shape.

Three pure transforms do the work and are tested without a network:
`build_request` (OpenAI request -> Anthropic request), `to_completion` (Anthropic
message -> OpenAI `chat.completion`) and `StreamTranslator` (Anthropic SSE events ->
OpenAI `chat.completion.chunk` payloads). `AnthropicProvider` is the I/O edge around them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import msgspec
from msgspec import Raw

from ..catalog import Usage
from ..errors import InvalidRequest, UpstreamError
from ..wire import Message, encode_raw, field
from .base import ChatCall, ChatStream, Completion, Provider
from .openai import transport_error, upstream_error
from .sse import SSEParser

API_VERSION: Final = "2023-06-01"
MAX_CACHE_BREAKPOINTS: Final = 4  # Anthropic refuses a request with more
_EPHEMERAL: Final = {"type": "ephemeral"}
_EMPTY_SCHEMA: Final = {"type": "object", "properties": {}}

_encode = msgspec.json.encode

# ---------------------------------------------------------------------------------------
# OpenAI request -> Anthropic request
# ---------------------------------------------------------------------------------------

_TOOL_CHOICE: Final = {"auto": "auto", "required": "any", "none": "none"}


def build_request(call: ChatCall) -> dict[str, Any]:
    """The Anthropic request body for one OpenAI-shaped call (as a dict, for tests)."""
    f = call.fields
    n = field(f, "n", int | None)
    if n is not None and n != 1:
        raise InvalidRequest("Anthropic models return one choice; `n` must be 1.", param="n")
    system, messages = convert_messages(call.messages)
    req: dict[str, Any] = {
        "model": call.model.upstream,
        "messages": messages,
        "max_tokens": _max_tokens(call),
    }
    tools = convert_tools(field(f, "tools", list[dict[str, Any]] | None))
    if tools:
        req["tools"] = tools
        choice = convert_tool_choice(
            field(f, "tool_choice", str | dict[str, Any] | None),
            field(f, "parallel_tool_calls", bool | None),
        )
        if choice is not None:
            req["tool_choice"] = choice
    for name in ("temperature", "top_p"):
        value = field(f, name, float | None)
        if value is not None:
            req[name] = value
    stop = field(f, "stop", str | list[str] | None)
    if stop:
        req["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    user = field(f, "user", str | None)
    if user:
        req["metadata"] = {"user_id": user}
    # Not OpenAI parameters, but clients that know they talk to Claude send them.
    for name in ("top_k", "thinking"):
        if name in f:
            req[name] = f[name]
    if call.stream:
        req["stream"] = True
    if call.auto_cache:
        apply_auto_cache(system, req)
    if system:
        req["system"] = _system_value(system)
    return req


def build_body(call: ChatCall) -> bytes:
    return _encode(build_request(call))


def _max_tokens(call: ChatCall) -> int:
    # Anthropic requires max_tokens; OpenAI makes it optional, so default to the model's.
    if call.max_tokens:
        return call.max_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        value = field(call.fields, name, int | None)
        if value:
            return int(value)
    return call.model.max_output_tokens


def convert_messages(
    messages: list[Message],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split OpenAI messages into Anthropic's `system` blocks and alternating turns.

    Anthropic has no system role (system and developer messages are hoisted to the top)
    and refuses two turns of the same role in a row, so consecutive same-role turns are
    merged; tool results become user turns, so results of one round land in one turn.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role in ("system", "developer"):
            system.extend(_content_blocks(m.content, where, images=False))
            continue
        if m.role == "user":
            role, blocks = "user", _content_blocks(m.content, where, images=True)
        elif m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m, where)
        elif m.role == "tool":
            role, blocks = "user", [_tool_result(m, where)]
        else:
            raise InvalidRequest(
                f"`{where}.role` `{m.role}` is not supported by Anthropic models; "
                "use `tool` messages with `tool_call_id`.",
                param=f"{where}.role",
            )
        if not blocks:
            continue  # Anthropic refuses empty turns; an empty one carries nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _content_blocks(
    content: str | list[dict[str, Any]] | None, where: str, *, images: bool
) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        block = _content_part(part, f"{where}.content[{j}]", images)
        if block is None:
            continue
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]  # a client's own breakpoint
        blocks.append(block)
    return blocks


def _content_part(part: dict[str, Any], where: str, images: bool) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("text", "refusal"):
        text = part.get(kind)
        if not isinstance(text, str):
            raise InvalidRequest(f"`{where}.{kind}` must be a string.", param=f"{where}.{kind}")
        return {"type": "text", "text": text} if text else None
    if images and kind == "image_url":
        return _image_block(part.get("image_url"), where)
    if images and kind == "file":
        return _document_block(part.get("file"), where)
    raise InvalidRequest(
        f"`{where}.type` `{kind}` is not supported here by Anthropic models.",
        param=f"{where}.type",
    )


def _parse_data_url(url: str, where: str) -> tuple[str, str]:
    """`data:<media type>;base64,<data>` -> (media type, data)."""
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise InvalidRequest(
            f"`{where}` must be a base64 `data:` URL or an http(s) URL.", param=where
        )
    return head[len("data:") : -len(";base64")], data


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    where = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise InvalidRequest(f"`{where}` must be a string.", param=where)
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, where)
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest(
            f"`{where}` must be a base64 `data:` URL or an http(s) URL.", param=where
        )
    return {"type": "image", "source": source}


def _document_block(file: Any, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    where = f"{where}.file.file_data"
    if not isinstance(data_url, str):
        # An OpenAI `file_id` names a file in OpenAI's storage; Anthropic cannot read it.
        raise InvalidRequest(f"`{where}` (a base64 `data:` URL) is required.", param=where)
    media_type, data = _parse_data_url(data_url, where)
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _assistant_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks = _content_blocks(m.content, where, images=False)
    for j, tc in enumerate(m.tool_calls or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = tc.get("function")
        if not isinstance(fn, dict) or not isinstance(tc.get("id"), str) or not fn.get("name"):
            raise InvalidRequest(f"`{at}` needs an `id` and a `function.name`.", param=at)
        blocks.append(
            {
                "type": "tool_use",
                "id": tc["id"],
                "name": fn["name"],
                "input": _tool_input(fn.get("arguments"), at),
            }
        )
    return blocks


def _tool_input(arguments: Any, where: str) -> Any:
    # OpenAI carries arguments as a JSON string; Anthropic wants the object itself.
    if arguments in (None, ""):
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = msgspec.json.decode(arguments) if isinstance(arguments, str) else None
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        where += ".function.arguments"
        raise InvalidRequest(f"`{where}` must be a JSON object.", param=where)
    return value


def _tool_result(m: Message, where: str) -> dict[str, Any]:
    if not m.tool_call_id:
        raise InvalidRequest(f"`{where}.tool_call_id` is required.", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
    if isinstance(m.content, str):
        if m.content:
            block["content"] = m.content
    elif m.content:
        block["content"] = _content_blocks(m.content, where, images=True)
    return block


def convert_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise InvalidRequest(
                f"`tools[{i}]` must be a function tool with a name.", param=f"tools[{i}]"
            )
        converted: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            converted["description"] = fn["description"]
        converted["input_schema"] = fn.get("parameters") or _EMPTY_SCHEMA
        if isinstance(tool.get("cache_control"), dict):
            converted["cache_control"] = tool["cache_control"]
        out.append(converted)
    return out


def convert_tool_choice(
    choice: str | dict[str, Any] | None, parallel: bool | None
) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif isinstance(choice, str):
        if choice not in _TOOL_CHOICE:
            raise InvalidRequest(
                "`tool_choice` must be `auto`, `required`, `none` or a function.",
                param="tool_choice",
            )
        result = {"type": _TOOL_CHOICE[choice]}
    else:
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise InvalidRequest("`tool_choice.function.name` is required.", param="tool_choice")
        result = {"type": "tool", "name": name}
    if parallel is False and (result is None or result["type"] != "none"):
        # OpenAI's flag is the inverse of Anthropic's, which lives on tool_choice.
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    return result


def apply_auto_cache(system: list[dict[str, Any]], req: dict[str, Any]) -> None:
    """Mark the stable prefix for Anthropic's prompt cache.

    The cache is prefix-based (tools, then system, then messages), so two breakpoints
    cover what repeats across turns: the end of the system prompt (or of the tools when
    there is none) and the end of the conversation before the final user turn.
    Breakpoints the client set itself count against Anthropic's limit of four.
    """
    tools: list[dict[str, Any]] = req.get("tools", [])
    messages: list[dict[str, Any]] = req["messages"]
    blocks = [*tools, *system, *(b for m in messages for b in m["content"])]
    budget = MAX_CACHE_BREAKPOINTS - _count_breakpoints(blocks)
    targets: list[dict[str, Any]] = []
    if system:
        targets.append(system[-1])
    elif tools:
        targets.append(tools[-1])
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), 0
    )
    if last_user > 0:
        targets.append(messages[last_user - 1]["content"][-1])
    for block in targets:
        if budget <= 0:
            break
        if "cache_control" not in block:
            block["cache_control"] = dict(_EPHEMERAL)
            budget -= 1


def _count_breakpoints(blocks: list[dict[str, Any]]) -> int:
    n = 0
    for b in blocks:
        n += "cache_control" in b
        inner = b.get("content")  # a tool_result's own blocks may carry breakpoints too
        if isinstance(inner, list):
            n += _count_breakpoints(inner)
    return n


def _system_value(system: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # A plain string unless a block carries a cache breakpoint, which needs the block form.
    if any("cache_control" in b for b in system):
        return system
    return "\n\n".join(b["text"] for b in system)


# ---------------------------------------------------------------------------------------
# Anthropic response -> OpenAI chat.completion
# ---------------------------------------------------------------------------------------


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

_FINISH: Final = {
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
    return _FINISH.get(stop_reason, "stop")


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
    body: bytes, model: str, provider: str = "anthropic", created: int | None = None
) -> Completion:
    """An Anthropic message (JSON bytes) as an OpenAI `chat.completion`."""
    try:
        msg = _decode_message(body)
    except msgspec.MsgspecError:
        raise UpstreamError(
            f"Upstream provider `{provider}` sent a malformed response.", reason="malformed"
        ) from None
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg.content:
        if block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type == "thinking" and block.thinking:
            reasoning.append(block.thinking)
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


# ---------------------------------------------------------------------------------------
# Anthropic SSE events -> OpenAI chat.completion.chunk payloads
# ---------------------------------------------------------------------------------------


class _Delta(msgspec.Struct):
    # content_block_delta and message_delta share the name `delta`, with different fields.
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _ErrorInner(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    message: _AMessage | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _AUsage | None = None
    error: _ErrorInner | None = None


_decode_event = msgspec.json.Decoder(_Event).decode

# What an Anthropic error type would have been as an HTTP status, so that routing
# judges a mid-stream error as it would the same error before the stream began.
_ERROR_STATUS: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class StreamTranslator:
    """Feeds on Anthropic stream events, returns OpenAI chunk payloads.

    All chunks share one id. The usage chunk is built, not returned, once `message_stop`
    arrives (see `ChatStream`); `end()` says whether the stream got that far.
    """

    __slots__ = (
        "_head",
        "_id",
        "_tools",
        "_usage",
        "created",
        "done",
        "finish_reason",
        "model",
        "provider",
        "text_chars",
        "usage",
        "usage_chunk",
    )

    def __init__(self, model: str, provider: str = "anthropic", created: int | None = None) -> None:
        self.provider = provider
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.usage: Usage | None = None
        self.usage_chunk: dict[str, Raw] | None = None
        self.finish_reason: str | None = None
        self.text_chars = 0
        self.done = False
        self._usage = _AUsage()
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_call index
        self._set_id(_chat_id(""))

    def _set_id(self, chat_id: str) -> None:
        self._id = chat_id
        # Every chunk starts the same; encode that part once per stream.
        self._head = b"".join(
            (
                b'{"id":',
                _encode(chat_id),
                b',"object":"chat.completion.chunk","created":',
                str(self.created).encode(),
                b',"model":',
                _encode(self.model),
                b',"choices":[{"index":0,"delta":',
            )
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"".join(
            (
                self._head,
                _encode(delta),
                b',"logprobs":null,"finish_reason":',
                _encode(finish),
                b"}]}",
            )
        )

    def feed(self, event: bytes | None, data: bytes) -> list[bytes]:
        """One SSE event in (its `event:` name and `data:`), zero or more chunks out."""
        try:
            ev = _decode_event(data)
        except msgspec.MsgspecError:
            raise UpstreamError(
                f"Upstream provider `{self.provider}` sent a malformed event.", reason="malformed"
            ) from None
        kind = ev.type or (event or b"").decode()
        if kind == "content_block_delta" and ev.delta is not None:
            return self._block_delta(ev.index, ev.delta)
        if kind == "content_block_start" and ev.content_block is not None:
            return self._block_start(ev.index, ev.content_block)
        if kind == "message_start" and ev.message is not None:
            return self._message_start(ev.message)
        if kind == "message_delta":
            return self._message_delta(ev)
        if kind == "message_stop":
            self._finish()
        elif kind == "error":
            raise self._error(ev.error or _ErrorInner())
        # ping, content_block_stop and event types added later carry nothing to forward.
        return []

    def end(self) -> None:
        """The upstream stream closed; a stream without `message_stop` was cut short."""
        if not self.done:
            raise UpstreamError(
                f"The stream from upstream provider `{self.provider}` ended early.",
                reason="cut",
            )

    def _message_start(self, msg: _AMessage) -> list[bytes]:
        if msg.id:
            self._set_id(_chat_id(msg.id))
        if msg.usage is not None:
            self._merge_usage(msg.usage)
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _block_start(self, index: int, block: _Block) -> list[bytes]:
        if block.type == "tool_use":
            tool_index = self._tools[index] = len(self._tools)
            call = {
                "index": tool_index,
                "id": block.id,
                "type": "function",
                "function": {"name": block.name, "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.type == "text" and block.text:
            self.text_chars += len(block.text)
            return [self._chunk({"content": block.text})]
        return []

    def _block_delta(self, index: int, delta: _Delta) -> list[bytes]:
        if delta.type == "text_delta" and delta.text:
            self.text_chars += len(delta.text)
            return [self._chunk({"content": delta.text})]
        if delta.type == "input_json_delta" and delta.partial_json:
            self.text_chars += len(delta.partial_json)
            call = {
                "index": self._tools.get(index, 0),
                "function": {"arguments": delta.partial_json},
            }
            return [self._chunk({"tool_calls": [call]})]
        if delta.type == "thinking_delta" and delta.thinking:
            # Thinking is billed as output, so it counts toward the estimate of a cut stream.
            self.text_chars += len(delta.thinking)
            return [self._chunk({"reasoning_content": delta.thinking})]
        return []  # signature_delta, citations_delta: nothing OpenAI-shaped to say

    def _message_delta(self, ev: _Event) -> list[bytes]:
        if ev.usage is not None:
            self._merge_usage(ev.usage)
        if ev.delta is None or ev.delta.stop_reason is None:
            return []
        self.finish_reason = finish_reason(ev.delta.stop_reason)
        return [self._chunk({}, self.finish_reason)]

    def _merge_usage(self, u: _AUsage) -> None:
        # message_delta's counts are cumulative: a later value replaces an earlier one.
        for name in _AUsage.__struct_fields__:
            value = getattr(u, name)
            if value is not None:
                setattr(self._usage, name, value)

    def _finish(self) -> None:
        self.done = True
        self.usage = to_usage(self._usage)
        self.usage_chunk = {
            "id": encode_raw(self._id),
            "object": Raw(b'"chat.completion.chunk"'),
            "created": encode_raw(self.created),
            "model": encode_raw(self.model),
            "choices": Raw(b"[]"),
            "usage": encode_raw(usage_payload(self.usage)),
        }

    def _error(self, err: _ErrorInner) -> UpstreamError:
        status = _ERROR_STATUS.get(err.type, 500)
        return UpstreamError(
            f"Upstream provider `{self.provider}` failed mid-stream: {err.message or err.type}",
            status=502,  # the client already has its 200 and some chunks
            upstream_status=status,
            reason=str(status),
        )


# ---------------------------------------------------------------------------------------
# I/O edge
# ---------------------------------------------------------------------------------------


class AnthropicStream(ChatStream):
    def __init__(self, provider: str, model: str, resp: aiohttp.ClientResponse) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp
        self._translator = StreamTranslator(model, provider)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        tr = self._translator
        try:
            async for data in self._resp.content.iter_any():
                for event, payload in parser.feed(data):
                    chunks = tr.feed(event, payload)
                    self._sync()
                    for chunk in chunks:
                        yield chunk
                    if tr.done:
                        break
                if tr.done:
                    break
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(self._provider, e) from None
        finally:
            self._resp.release() if tr.done else self._resp.close()
        tr.end()

    def _sync(self) -> None:
        tr = self._translator
        self.usage, self.usage_chunk = tr.usage, tr.usage_chunk
        self.finish_reason, self.text_chars = tr.finish_reason, tr.text_chars

    async def aclose(self) -> None:
        self._resp.close()


class AnthropicProvider(Provider):
    """Anthropic's Messages API; `config.base_url` is the host, e.g. https://api.anthropic.com."""

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    async def _post(self, body: bytes) -> aiohttp.ClientResponse:
        assert self.session is not None, "start() the provider first"
        base = self.config.base_url.rstrip("/")
        # Accept a base URL given with `/v1`, as OpenAI-style base URLs usually are.
        url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        try:
            resp = await self.session.post(url, data=body, headers=self._headers())
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(self.name, e) from None
        if resp.status != 200:
            try:
                err_body = await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                err_body = b""
            finally:
                resp.release()
            # Anthropic's error body nests {"type", "message"} under `error` as OpenAI's does.
            raise upstream_error(self.name, resp.status, err_body, resp.headers.get("retry-after"))
        return resp

    async def chat(self, call: ChatCall) -> Completion:
        resp = await self._post(build_body(call))
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(self.name, e) from None
        finally:
            resp.release()
        return to_completion(body, call.model.upstream, self.name)

    async def stream(self, call: ChatCall) -> ChatStream:
        resp = await self._post(build_body(call))
        return AnthropicStream(self.name, call.model.upstream, resp)
