"""OpenAI chat request -> Anthropic Messages request, including the prompt-cache breakpoints."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ...errors import InvalidRequest
from ...wire import Message, field
from ..base import ChatCall
from ..translate import add_turn, max_tokens, tool_arguments

MAX_CACHE_BREAKPOINTS: Final = 4  # Anthropic refuses a request with more
_EPHEMERAL: Final = {"type": "ephemeral"}
_EMPTY_SCHEMA: Final = {"type": "object", "properties": {}}

_encode = msgspec.json.encode

_TOOL_CHOICE: Final = {"auto": "auto", "required": "any", "none": "none"}
# The tool that carries a structured answer (`response_format`) on Anthropic models.
OUTPUT_TOOL: Final = "json_output"
_JSON_OBJECT: Final = {"type": "object"}


def build_request(call: ChatCall) -> dict[str, Any]:
    """The Anthropic request body for one OpenAI-shaped call (as a dict, for tests)."""
    f = call.fields
    n = field(f, "n", int | None)
    if n is not None and n != 1:
        raise InvalidRequest("Anthropic models return one choice; `n` must be 1.", param="n")
    _refuse_unsupported(f)
    system, messages = convert_messages(call.messages)
    req: dict[str, Any] = {
        "model": call.model.upstream,
        "messages": messages,
        "max_tokens": max_tokens(call),
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
    output_tool = structured_tool(call)
    if output_tool is not None:
        _force_output_tool(output_tool, field(f, "response_format", dict[str, Any]), req)
    for name in ("temperature", "top_p"):
        value = field(f, name, float | None)
        if value is not None:
            req[name] = value
    stop = field(f, "stop", str | list[str] | None)
    if stop:
        req["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    user = field(f, "user", str | None)
    if user:  # Anthropic's own field for it
        req["metadata"] = {"user_id": user}
    # `seed` is advisory and Anthropic has none: dropped (docs/protocols.md).
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


def _refuse_unsupported(f: dict[str, Any]) -> None:
    """What an Anthropic model cannot honour is a 400 naming it, not silently dropped."""
    if field(f, "logprobs", bool | None):
        raise InvalidRequest("`logprobs` is not supported by Anthropic models.",
                             param="logprobs")
    if field(f, "top_logprobs", int | None) is not None:
        raise InvalidRequest("`top_logprobs` is not supported by Anthropic models.",
                             param="top_logprobs")


def structured_tool(call: ChatCall) -> str | None:
    """The name of the tool whose input is the answer, when the request asks for JSON
    (`response_format` json_schema or json_object); None otherwise."""
    if "response_format" not in call.fields:
        return None
    fmt = field(call.fields, "response_format", dict[str, Any] | None)
    kind = fmt.get("type") if fmt else None
    if kind in (None, "text"):
        return None
    if kind not in ("json_schema", "json_object"):
        raise InvalidRequest(
            "`response_format.type` must be `text`, `json_object` or `json_schema`.",
            param="response_format.type",
        )
    return OUTPUT_TOOL


def _force_output_tool(name: str, fmt: dict[str, Any], req: dict[str, Any]) -> None:
    """Structured output as a tool the model must call: its input is the answer, returned
    as the message's content (response.py, stream.py). With the client's own tools also
    offered, the model must call one of them or the output tool (`any`)."""
    schema: Any = _JSON_OBJECT
    description = "Respond with the answer as this tool's input."
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest("`response_format.json_schema.schema` must be an object.",
                                 param="response_format.json_schema")
        schema = spec.get("schema") or _JSON_OBJECT
        if isinstance(spec.get("description"), str):
            description = spec["description"]
    tool = {"name": name, "description": description, "input_schema": schema}
    tools: list[dict[str, Any]] = req.setdefault("tools", [])
    if any(t.get("name") == name for t in tools):
        raise InvalidRequest(f"A tool may not be named `{name}` with `response_format`.",
                             param="tools")
    others = bool(tools)
    tools.append(tool)
    choice = req.get("tool_choice")
    if not others or choice is None or choice.get("type") == "auto":
        req["tool_choice"] = {"type": "tool", "name": name} if not others else {"type": "any"}
        if choice is not None and choice.get("disable_parallel_tool_use"):
            req["tool_choice"]["disable_parallel_tool_use"] = True


def build_body(call: ChatCall) -> bytes:
    return _encode(build_request(call))


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
        add_turn(turns, role, blocks)
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
                "input": tool_arguments(fn.get("arguments"), at),
            }
        )
    return blocks


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
