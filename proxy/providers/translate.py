"""Request pieces that every translated adapter (Anthropic, Bedrock Converse, Gemini)
derives the same way from an OpenAI chat request. Pure functions, no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import InvalidRequest
from ..wire import field
from .base import ChatCall


def max_tokens(call: ChatCall) -> int:
    """The output cap to send, always: the call's reservation, else the client's own
    (`max_completion_tokens`, then `max_tokens`), else the model's maximum.

    Anthropic requires one where OpenAI makes it optional, and Converse gets one so that
    what the model may write is what the gateway reserved for."""
    if call.max_tokens:
        return call.max_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        value = field(call.fields, name, int | None)
        if value:
            return int(value)
    return call.model.max_output_tokens


def tool_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """An assistant tool call's `function.arguments` as the object itself: OpenAI carries
    them as a JSON string, the other providers want the object. `where` names the tool
    call in the 400 when they are not a JSON object."""
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


def add_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]],
             key: str = "content") -> None:
    """Append one converted message to `turns`, merged into the last turn when that has
    the same role: Anthropic, Converse and Gemini refuse two turns of one role in a row
    (so the results of one round of parallel tool calls share a turn) and refuse empty
    turns, which carry nothing anyway and are dropped. `key` names the turn's list of
    blocks (Gemini's is `parts`)."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(blocks)
    else:
        turns.append({"role": role, key: blocks})
