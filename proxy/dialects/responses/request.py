"""OpenAI Responses request -> Chat Completions request body (the internal model).

`instructions` becomes the system message; input items become chat messages, with a
run of `function_call` items joined onto the assistant message before them as its
`tool_calls`, and `function_call_output` items becoming `tool` messages. Nothing is
stored (`store: false` is how the gateway behaves), so what needs a stored response,
`previous_response_id` and `item_reference`, is a 400 naming it, as is every hosted tool.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from ...errors import InvalidRequest
from ..chat import convert_at, decode_request, refuse


class InputText(msgspec.Struct, tag="input_text"):
    text: str


class OutputText(msgspec.Struct, tag="output_text"):
    text: str


class Refusal(msgspec.Struct, tag="refusal"):
    refusal: str


class InputImage(msgspec.Struct, tag="input_image"):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(msgspec.Struct, tag="input_file"):
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


Content = InputText | OutputText | Refusal | InputImage | InputFile


class MessageItem(msgspec.Struct):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Content]


class FunctionCallItem(msgspec.Struct):
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(msgspec.Struct):
    call_id: str
    output: str | list[Content]


class FunctionTool(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None  # advisory: no chat provider writes a summary
    generate_summary: str | None = None


class ResponsesRequest(msgspec.Struct, forbid_unknown_fields=True):
    input: str | list[dict[str, Any]]
    model: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    store: bool | None = None  # nothing is stored either way (docs/protocols.md)
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Chat Completions has these under the same names.
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    # Advisory: nothing to include, nothing truncated by the gateway, no obfuscation.
    include: list[str] | None = None
    truncation: str | None = None
    stream_options: Any = None
    # Compaction by OpenAI when the context grows: without it the model sees the whole
    # input, as the client sent it.
    context_management: Any = None
    # Need stored state or hosted features the chat providers do not have.
    previous_response_id: str | None = None
    conversation: Any = None
    prompt: Any = None
    background: bool | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None


_ROLES: Final = {"developer": "system"}  # many OpenAI-compatible servers lack `developer`
_CHOICES: Final = ("auto", "none", "required")


def parse_request(body: bytes) -> ResponsesRequest:
    """The client's body, typed; a 400 naming the field at fault, unknown ones included."""
    return decode_request(body, ResponsesRequest)


def to_chat(req: ResponsesRequest) -> dict[str, Any]:
    """A Responses request as the Chat Completions body the chat path takes."""
    _refuse_unsupported(req)
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise InvalidRequest(
            "`max_output_tokens` must be at least 1.", param="max_output_tokens"
        )
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        messages += convert_input(req.input)
    if not messages:
        raise InvalidRequest("`input` must not be empty.", param="input")
    chat: dict[str, Any] = {"messages": messages}
    if req.model is not None:
        chat["model"] = req.model
    if req.max_output_tokens is not None:
        chat["max_completion_tokens"] = req.max_output_tokens
    same_name = (
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("parallel_tool_calls", req.parallel_tool_calls),
        ("user", req.user),
        ("safety_identifier", req.safety_identifier),
        ("prompt_cache_key", req.prompt_cache_key),
        ("prompt_cache_retention", req.prompt_cache_retention),
        ("service_tier", req.service_tier),
    )
    for name, value in same_name:
        if value is not None:
            chat[name] = value
    if req.tools:
        chat["tools"] = [_tool(t, i) for i, t in enumerate(req.tools)]
    if req.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(req.tool_choice)
    if req.text is not None:
        _text(req.text, chat)
    if req.reasoning is not None and req.reasoning.effort is not None:
        chat["reasoning_effort"] = req.reasoning.effort
    meta = _requesty(req)
    if meta:
        chat["requesty"] = meta
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _refuse_unsupported(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise refuse(
            "previous_response_id",
            "this gateway does not store responses; send the conversation in `input`.",
        )
    if req.conversation is not None:
        raise refuse("conversation", "it needs state stored by OpenAI; send the full `input`.")
    if req.prompt is not None:
        raise refuse("prompt", "prompt templates are stored by OpenAI; send `input`.")
    if req.background:
        raise refuse("background", "responses are answered in the request.")
    if req.top_logprobs is not None:
        raise refuse("top_logprobs", "log probabilities are not translated.")
    if req.max_tool_calls is not None:
        raise refuse("max_tool_calls", "only hosted tools count toward it.")


def _requesty(req: ResponsesRequest) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if req.user:
        meta["user_id"] = req.user
    if req.metadata:
        meta["extra"] = req.metadata
    return meta


def convert_input(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as chat messages. Every call needs its output and every output its
    call, earlier: OpenAI refuses either, and so does every Chat Completions server."""
    out: list[dict[str, Any]] = []
    unanswered: dict[str, int] = {}  # call_id -> index of its function_call item
    answered: set[str] = set()
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")  # an "easy" message item has no type
        if kind == "message":
            out += _message(convert_at(item, MessageItem, where), where)
        elif kind == "function_call":
            call = convert_at(item, FunctionCallItem, where)
            unanswered[call.call_id] = i
            _function_call(call, out)
        elif kind == "function_call_output":
            result = convert_at(item, FunctionCallOutputItem, where)
            if unanswered.pop(result.call_id, None) is None and result.call_id not in answered:
                raise InvalidRequest(
                    f"`{where}.call_id` `{result.call_id}` answers no earlier `function_call`.",
                    param=f"{where}.call_id",
                )
            answered.add(result.call_id)
            out += _function_output(result, where)
        elif kind == "reasoning":
            # The model's own earlier reasoning (often encrypted for OpenAI only); a chat
            # provider has no field that takes it back and does not need it to continue.
            continue
        elif kind == "item_reference":
            raise refuse(f"{where}.type", "items are not stored; send the item itself.")
        else:
            raise refuse(f"{where}.type", f"`{kind}` items are not translated to chat models.")
    if unanswered:
        call_id, i = next(iter(unanswered.items()))  # the first one, in input order
        raise InvalidRequest(
            f"`input[{i}]` (`function_call` `{call_id}`) has no `function_call_output`.",
            param=f"input[{i}].call_id",
        )
    return out


def _message(m: MessageItem, where: str) -> list[dict[str, Any]]:
    role = _ROLES.get(m.role, m.role)
    if isinstance(m.content, str):
        return [{"role": role, "content": m.content}]
    if role in ("assistant", "system"):
        # Text only: chat assistant and system messages carry no images.
        texts = [_text_of(p, f"{where}.content[{j}]") for j, p in enumerate(m.content)]
        return [{"role": role, "content": "".join(texts)}]
    parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(m.content)]
    return [{"role": role, "content": parts}]


def _function_call(call: FunctionCallItem, out: list[dict[str, Any]]) -> None:
    tool_call = {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":
        # Responses lists an answer's text and calls as sibling items; chat puts the
        # calls on the assistant message they belong to.
        last.setdefault("tool_calls", []).append(tool_call)
        if not last["content"]:
            last["content"] = None
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})


def _function_output(item: FunctionCallOutputItem, where: str) -> list[dict[str, Any]]:
    if isinstance(item.output, str):
        return [{"role": "tool", "tool_call_id": item.call_id, "content": item.output}]
    texts: list[str] = []
    others: list[dict[str, Any]] = []
    for j, p in enumerate(item.output):
        if isinstance(p, (InputText, OutputText)):
            texts.append(p.text)
        else:
            others.append(_part(p, f"{where}.output[{j}]"))
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": item.call_id, "content": "\n".join(texts)}
    ]
    if others:
        out.append({"role": "user", "content": others})  # a tool message carries text only
    return out


def _text_of(p: Content, where: str) -> str:
    if isinstance(p, (InputText, OutputText)):
        return p.text
    if isinstance(p, Refusal):
        return p.refusal
    raise InvalidRequest(f"`{where}` must be text in this role.", param=f"{where}.type")


def _part(p: Content, where: str) -> dict[str, Any]:
    if isinstance(p, (InputText, OutputText)):
        return {"type": "text", "text": p.text}
    if isinstance(p, InputImage):
        if not p.image_url:
            raise refuse(f"{where}.file_id", "files are not stored; send `image_url`.")
        image: dict[str, Any] = {"url": p.image_url}
        if p.detail:
            image["detail"] = p.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(p, InputFile):
        if not p.file_data:
            raise refuse(f"{where}.file_id", "files are not stored; send `file_data`.")
        file = {"file_data": p.file_data, "filename": p.filename or "file"}
        return {"type": "file", "file": file}
    raise InvalidRequest(f"`{where}` of type `refusal` is not allowed here.", param=where)


def _tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if tool.get("type") != "function":
        raise refuse(f"{where}.type", f"`{tool.get('type')}` is a tool hosted by OpenAI.")
    t = convert_at({k: v for k, v in tool.items() if k != "type"}, FunctionTool, where)
    fn: dict[str, Any] = {"name": t.name}
    if t.description:
        fn["description"] = t.description
    fn["parameters"] = t.parameters or {"type": "object", "properties": {}}
    if t.strict is not None:
        fn["strict"] = t.strict
    return {"type": "function", "function": fn}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in _CHOICES:
            raise InvalidRequest(
                "`tool_choice` must be `auto`, `none`, `required` or a function.",
                param="tool_choice",
            )
        return choice
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        raise refuse("tool_choice", "only a `function` tool choice with a `name` translates.")
    return {"type": "function", "function": {"name": name}}


def _text(cfg: TextConfig, chat: dict[str, Any]) -> None:
    fmt = cfg.format
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if not fmt.name or fmt.schema is None:
            raise InvalidRequest(
                "`text.format` of type `json_schema` needs a `name` and a `schema`.",
                param="text.format",
            )
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
        if fmt.description:
            schema["description"] = fmt.description
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    if cfg.verbosity is not None:
        chat["verbosity"] = cfg.verbosity
