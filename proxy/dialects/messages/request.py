"""Anthropic Messages request -> Chat Completions request body (the internal model).

The reverse of `providers/anthropic/request.py`: system blocks become one system
message, `tool_result` blocks become `tool` messages placed before the rest of their
user turn, `tool_use` blocks become the assistant's `tool_calls`. What Chat Completions
cannot carry is a 400 naming the field, except what is only advisory (listed in
docs/protocols.md), which is dropped.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from ...errors import InvalidRequest
from ..chat import decode_request, refuse

_encode = msgspec.json.encode


class Base64Source(msgspec.Struct, tag="base64"):
    media_type: str
    data: str


class UrlSource(msgspec.Struct, tag="url"):
    url: str


class TextSource(msgspec.Struct, tag="text"):
    data: str
    media_type: str = "text/plain"


class FileSource(msgspec.Struct, tag="file"):
    file_id: str


class ContentSource(msgspec.Struct, tag="content"):
    content: Any


class TextBlock(msgspec.Struct, tag="text"):
    text: str


class ImageBlock(msgspec.Struct, tag="image"):
    source: Base64Source | UrlSource | FileSource


class DocumentBlock(msgspec.Struct, tag="document"):
    source: Base64Source | UrlSource | TextSource | FileSource | ContentSource
    title: str | None = None


class ToolUseBlock(msgspec.Struct, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag="thinking"):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking"):
    data: str


Block = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class MessageParam(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(msgspec.Struct):
    name: str
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None  # "custom" or absent; server tools have dated types


class ToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(msgspec.Struct):
    user_id: str | None = None


class OutputFormat(msgspec.Struct):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct):
    effort: str | None = None
    format: OutputFormat | None = None


class MessagesRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    messages: list[MessageParam]
    max_tokens: int
    model: str = ""  # the gateway's default model when absent, as on the chat route
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    # Not put in the chat body: OpenAI-compatible servers refuse an unknown `thinking`,
    # and `reasoning_effort` is refused by models that do not reason; reasoning models
    # reason by default. Kept here for a caller that knows its target takes it.
    thinking: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    # Advisory: they tune where or how fast Anthropic serves, not what it answers.
    service_tier: Any = None
    inference_geo: Any = None
    speed: Any = None
    cache_control: Any = None
    diagnostics: Any = None
    user_profile_id: Any = None  # Anthropic account scoping, meaningless elsewhere
    workspace_id: Any = None
    # Anthropic editing the context server-side when it grows: without it the model
    # sees the whole conversation, as the client sent it (Claude Code sends this).
    context_management: Any = None
    # Anthropic-hosted features no Chat Completions provider has.
    container: Any = None
    mcp_servers: Any = None


_TOOL_CHOICE: Final = {"auto": "auto", "any": "required", "none": "none"}
# Anthropic's effort levels above OpenAI's highest one become that highest one.
_EFFORT: Final = {"max": "xhigh"}


def parse_request(body: bytes) -> MessagesRequest:
    """The client's body, typed; a 400 naming the field at fault, unknown ones included."""
    return decode_request(body, MessagesRequest)


def to_chat(req: MessagesRequest) -> dict[str, Any]:
    """A Messages request as the Chat Completions body the chat path takes."""
    if req.container is not None:
        raise refuse("container", "it is an Anthropic-hosted feature.")
    if req.mcp_servers is not None:
        raise refuse("mcp_servers", "it is an Anthropic-hosted feature.")
    if req.max_tokens < 1:
        raise InvalidRequest("`max_tokens` must be at least 1.", param="max_tokens")
    if not req.messages:
        raise InvalidRequest("`messages` must contain at least one message.", param="messages")
    chat: dict[str, Any] = {
        "model": req.model,
        "messages": _system(req.system) + convert_messages(req.messages),
        "max_tokens": req.max_tokens,
    }
    sampling = (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k))
    for name, value in sampling:
        if value is not None:
            # top_k is not OpenAI's, but vLLM-style servers take it; one that does not
            # answers a 400 naming it, as it would to a chat client sending it.
            chat[name] = value
    if req.stop_sequences:
        chat["stop"] = req.stop_sequences
    if req.tools:
        chat["tools"] = [_tool(t, i) for i, t in enumerate(req.tools)]
    if req.tool_choice is not None:
        _tool_choice(req.tool_choice, chat)
    if req.output_config is not None:
        _output_config(req.output_config, chat)
    if req.metadata is not None and req.metadata.user_id:
        # For the ledger only: Claude Code's ids run past what OpenAI takes in `user`.
        chat["requesty"] = {"user_id": req.metadata.user_id}
    if req.stream:
        chat["stream"] = True
        # The usage chunk is what fills message_delta's usage; ask for it always.
        chat["stream_options"] = {"include_usage": True}
    return chat


def _system(system: str | list[TextBlock] | None) -> list[dict[str, Any]]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    # One string, joined as the chat -> Anthropic direction splits: many OpenAI-compatible
    # servers refuse a system message whose content is a list.
    text = "\n\n".join(b.text for b in system if b.text)
    return [{"role": "system", "content": text}] if text else []


def convert_messages(messages: list[MessageParam]) -> list[dict[str, Any]]:
    check_tool_pairs(messages)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "user":
            out += _user_turn(m.content, where)
        else:
            out.append(_assistant_turn(m.content, where))
    return out


def check_tool_pairs(messages: list[MessageParam]) -> None:
    """Each `tool_use` answered by a `tool_result` in the next turn, and no result without
    its call: Anthropic refuses either, and so does every Chat Completions server."""
    calls: set[str] = set()  # tool_use ids of the previous assistant turn
    for i, m in enumerate(messages):
        blocks = () if isinstance(m.content, str) else m.content
        answered: set[str] = set()
        for j, b in enumerate(blocks):
            # (one in an assistant turn is refused for its place, by _assistant_turn)
            if isinstance(b, ToolResultBlock) and m.role == "user":
                if b.tool_use_id not in calls:
                    at = f"messages[{i}].content[{j}].tool_use_id"
                    raise InvalidRequest(
                        f"`{at}` `{b.tool_use_id}` answers no `tool_use` of the turn before.",
                        param=at,
                    )
                answered.add(b.tool_use_id)
        if calls - answered:
            missing = ", ".join(sorted(calls - answered))
            raise InvalidRequest(
                f"`messages[{i}]` must hold a `tool_result` for each `tool_use` of the turn "
                f"before; missing: {missing}.",
                param=f"messages[{i}].content",
            )
        calls = set()
        if m.role == "assistant":
            calls = {b.id for b in blocks if isinstance(b, ToolUseBlock)}


def _user_turn(blocks: list[Block], where: str) -> list[dict[str, Any]]:
    """Tool results first, as `tool` messages (Chat wants them right after the assistant's
    calls); the turn's other content after them as one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(b, ToolResultBlock):
            text, images = _tool_result(b, at)
            tools.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": text})
            parts += images  # a tool message carries text only: its images follow it
        elif isinstance(b, (ThinkingBlock, RedactedThinkingBlock, ToolUseBlock)):
            raise InvalidRequest(
                f"`{at}` of type `{_kind(b)}` may only appear in an assistant turn.",
                param=f"{at}.type",
            )
        else:
            parts.append(_part(b, at))
    if parts:
        tools.append({"role": "user", "content": parts})
    return tools


def _assistant_turn(blocks: list[Block], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(b, TextBlock):
            texts.append(b.text)
        elif isinstance(b, ToolUseBlock):
            calls.append(
                {
                    "id": b.id,
                    "type": "function",
                    "function": {"name": b.name, "arguments": _encode(b.input).decode()},
                }
            )
        elif isinstance(b, (ThinkingBlock, RedactedThinkingBlock)):
            # An earlier turn's reasoning: signed for Anthropic only, and Chat Completions
            # has no field that takes it back. The model does not need it to continue.
            continue
        else:
            raise InvalidRequest(
                f"`{at}` of type `{_kind(b)}` may not appear in an assistant turn.",
                param=f"{at}.type",
            )
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    elif not texts:
        msg["content"] = ""
    return msg


def _tool_result(b: ToolResultBlock, where: str) -> tuple[str, list[dict[str, Any]]]:
    if b.content is None or isinstance(b.content, str):
        return b.content or "", []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, inner in enumerate(b.content):
        if isinstance(inner, TextBlock):
            texts.append(inner.text)
        else:
            images.append(_part(inner, f"{where}.content[{k}]"))
    return "\n".join(texts), images


def _part(b: Block, where: str) -> dict[str, Any]:
    if isinstance(b, TextBlock):
        return {"type": "text", "text": b.text}
    if isinstance(b, ImageBlock):
        return _image(b, where)
    if isinstance(b, DocumentBlock):
        return _document(b, where)
    raise InvalidRequest(f"`{where}` of type `{_kind(b)}` is not allowed here.", param=where)


def _image(b: ImageBlock, where: str) -> dict[str, Any]:
    src = b.source
    if isinstance(src, Base64Source):
        url = f"data:{src.media_type};base64,{src.data}"
    elif isinstance(src, UrlSource):
        url = src.url
    else:
        raise refuse(f"{where}.source", "a file_id names a file in Anthropic's storage.")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(b: DocumentBlock, where: str) -> dict[str, Any]:
    src = b.source
    if isinstance(src, Base64Source):
        data = f"data:{src.media_type};base64,{src.data}"
        return {"type": "file", "file": {"file_data": data, "filename": b.title or "document"}}
    if isinstance(src, TextSource):
        return {"type": "text", "text": src.data}
    raise refuse(
        f"{where}.source", "send a document as `base64` or `text` for this model."
    )


def _tool(t: Tool, i: int) -> dict[str, Any]:
    if t.type not in (None, "custom"):
        raise refuse(f"tools[{i}]", f"`{t.type}` is an Anthropic server tool.")
    fn: dict[str, Any] = {"name": t.name}
    if t.description:
        fn["description"] = t.description
    fn["parameters"] = t.input_schema or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


def _tool_choice(choice: ToolChoice, chat: dict[str, Any]) -> None:
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("`tool_choice.name` is required.", param="tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        chat["tool_choice"] = _TOOL_CHOICE[choice.type]
    if choice.disable_parallel_tool_use:
        chat["parallel_tool_calls"] = False


def _output_config(cfg: OutputConfig, chat: dict[str, Any]) -> None:
    if cfg.format is not None:
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": cfg.format.schema, "strict": True},
        }
    if cfg.effort is not None:
        chat["reasoning_effort"] = _EFFORT.get(cfg.effort, cfg.effort)


def _kind(b: Block) -> str:
    return str(type(b).__struct_config__.tag)
