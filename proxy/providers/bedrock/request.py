"""OpenAI chat request -> Bedrock Converse request (`POST /model/{id}/converse[-stream]`).

Converse has no system role (system and developer messages become `system` blocks), wants
turns that alternate and start with the user (consecutive same-role turns are merged; tool
results are user turns), takes images and documents only as base64 bytes (or S3, which a
client cannot name here), tools as `toolSpec`s and structured output as
`outputConfig.textFormat` (a JSON schema given as a string), answered as text.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from ...errors import InvalidRequest
from ...wire import Message, field
from ..base import ChatCall
from ..translate import add_turn, max_tokens, tool_arguments

_encode = msgspec.json.encode
_EMPTY_SCHEMA: Final = {"type": "object", "properties": {}}
_CACHE_POINT: Final = {"cachePoint": {"type": "default"}}
_IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                         "image/gif": "gif", "image/webp": "webp"}
_DOCUMENT_FORMATS: Final = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html", "text/plain": "txt", "text/markdown": "md",
}
# A document's name: Bedrock takes letters, digits, single spaces, hyphens, parentheses
# and square brackets only.
_NAME_REFUSED: Final = re.compile(r"[^A-Za-z0-9\-()\[\] ]+")


def build_request(call: ChatCall) -> dict[str, Any]:
    """The Converse body for one OpenAI-shaped call (a dict, for tests)."""
    f = call.fields
    n = field(f, "n", int | None)
    if n is not None and n != 1:
        raise InvalidRequest("Bedrock models return one choice; `n` must be 1.", param="n")
    system, messages = convert_messages(call.messages)
    req: dict[str, Any] = {"messages": messages}
    inference: dict[str, Any] = {"maxTokens": max_tokens(call)}
    for name, key in (("temperature", "temperature"), ("top_p", "topP")):
        value = field(f, name, float | None)
        if value is not None:
            inference[key] = value
    stop = field(f, "stop", str | list[str] | None)
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else stop
    req["inferenceConfig"] = inference
    tools = convert_tools(field(f, "tools", list[dict[str, Any]] | None))
    choice = convert_tool_choice(field(f, "tool_choice", str | dict[str, Any] | None))
    if tools and (choice != "none" or _has_tool_blocks(messages)):
        # Converse has no "none": without tool blocks in the conversation the tools are
        # left out; with them Converse requires the tools, so the model may still call one.
        req["toolConfig"] = {"tools": tools}
        if isinstance(choice, dict):
            req["toolConfig"]["toolChoice"] = choice
    output = convert_response_format(field(f, "response_format", dict[str, Any] | None))
    if output is not None:
        req["outputConfig"] = output
    extra = {name: msgspec.json.decode(f[name]) for name in ("top_k", "thinking") if name in f}
    if extra:  # not OpenAI's, but clients that know they talk to Claude send them
        req["additionalModelRequestFields"] = extra
    if system:
        if call.auto_cache:
            system.append(dict(_CACHE_POINT))  # the system prompt is the stable prefix
        req["system"] = system
    return req


def build_body(call: ChatCall) -> bytes:
    return _encode(build_request(call))


def convert_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns starting with the user)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role in ("system", "developer"):
            system.extend(_content_blocks(m.content, where, files=False))
            continue
        if m.role == "user":
            role, blocks = "user", _content_blocks(m.content, where, files=True)
        elif m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m, where)
        elif m.role == "tool":
            role, blocks = "user", [_tool_result(m, where)]
        else:
            raise InvalidRequest(
                f"`{where}.role` `{m.role}` is not supported by Bedrock models; "
                "use `tool` messages with `tool_call_id`.",
                param=f"{where}.role",
            )
        add_turn(turns, role, blocks)
    if not turns or turns[0]["role"] != "user":
        raise InvalidRequest(
            "Bedrock models need the conversation to start with a `user` message.",
            param="messages",
        )
    return system, turns


def _content_blocks(
    content: str | list[dict[str, Any]] | None, where: str, *, files: bool
) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"`{at}.{kind}` must be a string.", param=f"{at}.{kind}")
            if text:
                blocks.append({"text": text})
        elif files and kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), at))
        elif files and kind == "file":
            blocks.append(_document_block(part.get("file"), at, len(blocks)))
        else:
            raise InvalidRequest(
                f"`{at}.type` `{kind}` is not supported here by Bedrock models.",
                param=f"{at}.type",
            )
    return blocks


def _parse_data_url(url: str, where: str, what: str) -> tuple[str, str]:
    """`data:<media type>;base64,<data>` -> (media type, data)."""
    head, sep, data = url.partition(",")
    if not url.startswith("data:") or not sep or not head.endswith(";base64"):
        raise InvalidRequest(
            f"`{where}` must be a base64 `data:` URL: Bedrock takes {what} as bytes, not links.",
            param=where,
        )
    return head[len("data:") : -len(";base64")].lower(), data


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    where = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise InvalidRequest(f"`{where}` must be a string.", param=where)
    media_type, data = _parse_data_url(url, where, "images")
    fmt = _IMAGE_FORMATS.get(media_type)
    if fmt is None:
        raise InvalidRequest(
            f"`{where}`: Bedrock takes png, jpeg, gif and webp images, not {media_type!r}.",
            param=where,
        )
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _document_block(file: Any, where: str, position: int) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    at = f"{where}.file.file_data"
    if not isinstance(data_url, str):
        raise InvalidRequest(f"`{at}` (a base64 `data:` URL) is required.", param=at)
    media_type, data = _parse_data_url(data_url, at, "documents")
    fmt = _DOCUMENT_FORMATS.get(media_type)
    if fmt is None:
        raise InvalidRequest(f"`{at}`: Bedrock does not read {media_type!r} documents.", param=at)
    filename = file.get("filename") if isinstance(file, dict) else None
    name = _NAME_REFUSED.sub(" ", filename).strip() if isinstance(filename, str) else ""
    name = " ".join(name.split())[:200] or f"document {position + 1}"
    return {"document": {"format": fmt, "name": name, "source": {"bytes": data}}}


def _assistant_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks = _content_blocks(m.content, where, files=False)
    for j, tc in enumerate(m.tool_calls or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = tc.get("function")
        if not isinstance(fn, dict) or not isinstance(tc.get("id"), str) or not fn.get("name"):
            raise InvalidRequest(f"`{at}` needs an `id` and a `function.name`.", param=at)
        blocks.append(
            {"toolUse": {"toolUseId": tc["id"], "name": fn["name"],
                         "input": tool_arguments(fn.get("arguments"), at)}}
        )
    return blocks


def _tool_result(m: Message, where: str) -> dict[str, Any]:
    if not m.tool_call_id:
        raise InvalidRequest(f"`{where}.tool_call_id` is required.", param=f"{where}.tool_call_id")
    if isinstance(m.content, str) or m.content is None:
        # Converse refuses a blank text block: an empty result is said as such.
        content = [{"text": m.content or "(empty)"}]
    else:
        content = _content_blocks(m.content, where, files=True) or [{"text": "(empty)"}]
    return {"toolResult": {"toolUseId": m.tool_call_id, "content": content}}


def _has_tool_blocks(turns: list[dict[str, Any]]) -> bool:
    return any("toolUse" in b or "toolResult" in b for t in turns for b in t["content"])


def convert_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise InvalidRequest(
                f"`tools[{i}]` must be a function tool with a name.", param=f"tools[{i}]"
            )
        spec: dict[str, Any] = {
            "name": fn["name"],
            "inputSchema": {"json": fn.get("parameters") or _EMPTY_SCHEMA},
        }
        if fn.get("description"):
            spec["description"] = fn["description"]
        if fn.get("strict") is True:
            spec["strict"] = True
        out.append({"toolSpec": spec})
    return out


def convert_tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | str | None:
    """Converse's `toolChoice`, "none" (which Converse lacks: the caller drops the tools)
    or None (Converse's default, auto)."""
    if choice is None or choice == "auto":
        return None if choice is None else {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if choice == "none":
        return "none"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"tool": {"name": name}}
        raise InvalidRequest("`tool_choice.function.name` is required.", param="tool_choice")
    raise InvalidRequest(
        "`tool_choice` must be `auto`, `required`, `none` or a function.", param="tool_choice"
    )


def convert_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's `response_format` as Converse's `outputConfig` (structured output)."""
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        schema: Any = {"type": "object"}
        definition: dict[str, Any] = {"name": "json_object"}
    elif fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        spec = spec if isinstance(spec, dict) else {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "`response_format.json_schema.schema` must be a JSON schema object.",
                param="response_format.json_schema.schema",
            )
        definition = {"name": spec.get("name") or "response"}
        if spec.get("description"):
            definition["description"] = spec["description"]
    else:
        raise InvalidRequest(
            "`response_format.type` must be `text`, `json_object` or `json_schema`.",
            param="response_format.type",
        )
    definition["schema"] = _encode(schema).decode()  # Converse takes the schema as a string
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}
