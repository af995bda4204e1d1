"""OpenAI chat request -> Gemini `generateContent` request (Gemini API and Vertex AI alike).

Schemas pass as JSON Schema, unconverted: `responseJsonSchema` for structured output and
`parametersJsonSchema` for tools, which both the Gemini API and Vertex AI accept (the
older `responseSchema`/`parameters` take only an OpenAPI subset, and converting to it
drops keywords such as `additionalProperties` silently).
"""

from __future__ import annotations

import mimetypes
from typing import Any, Final

import msgspec

from ...errors import InvalidRequest
from ...wire import Message, field
from ..base import ChatCall
from ..translate import add_turn, tool_arguments

_encode = msgspec.json.encode

# A Gemini 2.5+/3 model signs its function calls (`thoughtSignature`) and wants the
# signature back with the call in the next turn. OpenAI's tool call has no place for it
# but the id, which clients echo verbatim: the signature rides there after this mark.
SIGNATURE_MARK: Final = "__thought__"

_TOOL_MODE: Final = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# OpenAI's `reasoning_effort` as a thinking budget in tokens (0 turns thinking off where
# the model allows it; -1 lets the model decide).
_THINKING_BUDGET: Final = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192,
                           "high": 24576}


def build_request(call: ChatCall) -> dict[str, Any]:
    """The `generateContent` body for one OpenAI-shaped call (as a dict, for tests)."""
    f = call.fields
    system, contents = convert_messages(call.messages)
    req: dict[str, Any] = {"contents": contents}
    if system:
        req["systemInstruction"] = {"parts": system}
    tools = convert_tools(field(f, "tools", list[dict[str, Any]] | None))
    if tools:
        req["tools"] = [{"functionDeclarations": tools}]
        mode = convert_tool_choice(field(f, "tool_choice", str | dict[str, Any] | None))
        if mode is not None:
            req["toolConfig"] = {"functionCallingConfig": mode}
    config = generation_config(call)
    if config:
        req["generationConfig"] = config
    return req


def build_body(call: ChatCall) -> bytes:
    return _encode(build_request(call))


def generation_config(call: ChatCall) -> dict[str, Any]:
    f = call.fields
    config: dict[str, Any] = {}
    max_tokens = call.max_tokens or field(f, "max_completion_tokens", int | None) or field(
        f, "max_tokens", int | None
    )
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = field(f, "stop", str | list[str] | None)
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    for name, key in (("temperature", "temperature"), ("top_p", "topP"),
                      ("presence_penalty", "presencePenalty"),
                      ("frequency_penalty", "frequencyPenalty")):
        value = field(f, name, float | None)
        if value is not None:
            config[key] = value
    n = field(f, "n", int | None)
    if n is not None and n != 1:
        if n < 1:
            raise InvalidRequest("`n` must be at least 1.", param="n")
        config["candidateCount"] = n
    seed = field(f, "seed", int | None)
    if seed is not None:
        config["seed"] = seed
    if "response_format" in f:
        config.update(response_format(field(f, "response_format", dict[str, Any] | None)))
    effort = field(f, "reasoning_effort", str | None)
    if effort is not None:
        if effort not in _THINKING_BUDGET:
            raise InvalidRequest(
                f"`reasoning_effort` must be one of {', '.join(_THINKING_BUDGET)}.",
                param="reasoning_effort",
            )
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[effort]}
    return config


def response_format(fmt: dict[str, Any] | None) -> dict[str, Any]:
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = (fmt or {}).get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "`response_format.json_schema.schema` must be a JSON Schema object.",
                param="response_format.json_schema.schema",
            )
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise InvalidRequest(
        "`response_format.type` must be `text`, `json_object` or `json_schema`.",
        param="response_format.type",
    )


def convert_messages(
    messages: list[Message],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System parts, and `contents` turns of role `user` or `model`.

    System and developer messages become `systemInstruction`; tool results become
    `functionResponse` parts of a user turn, named after the call they answer (Gemini
    matches a response to its call by name). Consecutive turns of one role are merged,
    so the responses to one round of parallel calls share a turn, as Gemini expects.
    """
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role in ("system", "developer"):
            system.extend(_parts(m.content, where, media=False))
            continue
        if m.role == "user":
            role, parts = "user", _parts(m.content, where, media=True)
        elif m.role == "assistant":
            role, parts = "model", _model_parts(m, where, call_names)
        elif m.role == "tool":
            role, parts = "user", [_function_response(m, where, call_names)]
        else:
            raise InvalidRequest(
                f"`{where}.role` `{m.role}` is not supported by Gemini models; "
                "use `tool` messages with `tool_call_id`.",
                param=f"{where}.role",
            )
        add_turn(contents, role, parts, "parts")
    return system, contents


def _parts(
    content: str | list[dict[str, Any]] | None, where: str, *, media: bool
) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"`{at}.{kind}` must be a string.", param=f"{at}.{kind}")
            if text:
                parts.append({"text": text})
        elif media and kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media(url, f"{at}.image_url.url"))
        elif media and kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str) or not data.startswith("data:"):
                # An OpenAI `file_id` names a file in OpenAI's storage; Gemini cannot read it.
                raise InvalidRequest(
                    f"`{at}.file.file_data` (a base64 `data:` URL) is required.",
                    param=f"{at}.file.file_data",
                )
            parts.append(_media(data, f"{at}.file.file_data"))
        else:
            raise InvalidRequest(
                f"`{at}.type` `{kind}` is not supported here by Gemini models.",
                param=f"{at}.type",
            )
    return parts


def _media(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise InvalidRequest(f"`{where}` must be a string.", param=where)
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidRequest(f"`{where}` must be a base64 `data:` URL.", param=where)
        return {"inlineData": {"mimeType": head[5:-7], "data": data}}
    if url.startswith(("https://", "http://", "gs://")):
        mime = mimetypes.guess_type(url.partition("?")[0])[0]
        if mime is None:
            raise InvalidRequest(
                f"`{where}`: Gemini needs the media type of a URL; use a URL ending in a "
                "known extension (.png, .jpg, .pdf, ...) or a base64 `data:` URL.",
                param=where,
            )
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise InvalidRequest(f"`{where}` must be a base64 `data:` URL or a URL.", param=where)


def _model_parts(m: Message, where: str, call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _parts(m.content, where, media=False)
    for j, tc in enumerate(m.tool_calls or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = tc.get("function")
        call_id = tc.get("id")
        if not isinstance(fn, dict) or not isinstance(call_id, str) or not fn.get("name"):
            raise InvalidRequest(f"`{at}` needs an `id` and a `function.name`.", param=at)
        call_names[call_id] = fn["name"]
        part: dict[str, Any] = {
            "functionCall": {"name": fn["name"], "args": tool_arguments(fn.get("arguments"), at)}
        }
        _, mark, signature = call_id.partition(SIGNATURE_MARK)
        if mark and signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(m: Message, where: str, call_names: dict[str, str]) -> dict[str, Any]:
    call_id = m.tool_call_id
    if not call_id:
        raise InvalidRequest(f"`{where}.tool_call_id` is required.", param=f"{where}.tool_call_id")
    name = call_names.get(call_id)
    if name is None:
        raise InvalidRequest(
            f"`{where}.tool_call_id` `{call_id}` answers no earlier assistant tool call; "
            "Gemini needs the function's name.",
            param=f"{where}.tool_call_id",
        )
    if isinstance(m.content, str):
        text = m.content
    else:
        text = "".join(
            p.get("text", "") for p in m.content or () if p.get("type") == "text"
        )
    # `response` is an object: a JSON object result as it is, anything else wrapped.
    try:
        value = msgspec.json.decode(text) if text.startswith("{") else None
    except msgspec.DecodeError:
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def convert_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise InvalidRequest(
                f"`tools[{i}]` must be a function tool with a name.", param=f"tools[{i}]"
            )
        declaration: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            declaration["description"] = fn["description"]
        if fn.get("parameters"):
            declaration["parametersJsonSchema"] = fn["parameters"]
        out.append(declaration)
    return out


def convert_tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_MODE:
            raise InvalidRequest(
                "`tool_choice` must be `auto`, `required`, `none` or a function.",
                param="tool_choice",
            )
        return {"mode": _TOOL_MODE[choice]}
    name = (choice.get("function") or {}).get("name")
    if not isinstance(name, str):
        raise InvalidRequest("`tool_choice.function.name` is required.", param="tool_choice")
    return {"mode": "ANY", "allowedFunctionNames": [name]}
