"""The OpenAI wire format, as far as the gateway reads it.

A request body is decoded as `dict[str, msgspec.Raw]`: the few fields routing needs are
decoded and validated here; every other field stays raw bytes and reaches an
OpenAI-compatible upstream byte-for-byte.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import msgspec
from msgspec import Raw

from .errors import InvalidRequest

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class RequestyMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Requesty's per-request metadata; stripped before the request goes upstream."""

    user_id: str | None = None
    trace_id: str | None = None
    tags: list[str] = []
    extra: dict[str, str] = {}
    cache: bool = False
    auto_cache: bool = False


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


# A string, a list of strings, or token arrays; msgspec takes one list type in a union,
# so list elements are checked by `embedding_texts`.
EmbeddingInput = str | list[Any]


def embedding_texts(value: str | list[Any]) -> list[str]:
    """The input as texts (token arrays are kept as their JSON text), checked for type."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise InvalidRequest("`input` must not be empty.", param="input")
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, int) for v in value):
        return [msgspec.json.encode(value).decode()]
    if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
        return [msgspec.json.encode(v).decode() for v in value]
    raise InvalidRequest(
        "Invalid value for `input`: expected a string, a list of strings, or token arrays.",
        param="input",
    )


_LOC: Final = re.compile(r"at `\$(.*)`")
_decode_raw_dict = msgspec.json.Decoder(dict[str, Raw]).decode
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode_body(body: bytes) -> dict[str, Raw]:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return _decode_raw_dict(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.") from None
    except msgspec.DecodeError as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}.") from None


def field(fields: dict[str, Raw], name: str, type_: Any, default: Any = None) -> Any:
    """Decode one raw field, naming it (and the offending element) in a 400 on a bad type."""
    raw = fields.get(name)
    if raw is None:
        return default
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return dec.decode(raw)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _LOC.search(text)
        where = name + (m.group(1) if m else "")
        problem = text[: m.start()].rstrip(" -") if m else text
        raise InvalidRequest(
            f"Invalid value for `{where}`: {problem.replace('`', '')}.", param=where
        ) from None


def required(fields: dict[str, Raw], name: str, type_: Any) -> Any:
    if name not in fields:
        raise InvalidRequest(f"Missing required parameter: `{name}`.", param=name)
    value = field(fields, name, type_)
    if value is None:
        raise InvalidRequest(f"`{name}` must not be null.", param=name)
    return value


def encode_raw(value: Any) -> Raw:
    return Raw(msgspec.json.encode(value))
