"""The OpenAI wire format, as far as the gateway reads it.

A request body is decoded as `dict[str, msgspec.Raw]`: the few fields routing needs are
decoded and validated here; every other field stays raw bytes and reaches an
OpenAI-compatible upstream byte-for-byte. The body as a whole is checked once for what no
field may carry: bytes that are not UTF-8, and nesting deeper than `MAX_DEPTH` (a recursion
in the decoder, the encoder or an adapter would otherwise fail as a 500).
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import msgspec
from msgspec import Raw

from .errors import InvalidRequest
from .metadata import PRINTABLE, Extra, Identifier, Tags

# JSON nesting a body may have: tool schemas and content parts nest a few levels deep;
# CPython's recursion limit (1,000 frames, shared by msgspec) is far above this.
MAX_DEPTH: Final = 128
# `max_tokens` / `max_completion_tokens`: no model's output comes near it, and a worst-case
# reservation of it stays well inside Redis's 64-bit integers.
MAX_TOKENS: Final = 2**31 - 1

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

    # Bounded (see metadata.py): they become the ledger's analytics dimensions.
    user_id: Identifier | None = None
    trace_id: Identifier | None = None
    tags: Tags = []
    extra: Extra = {}
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


# msgspec's "- at `$.a.b`" or "- at `key` in `$.a`".
_LOC: Final = re.compile(r"(?: - at (`key` in )?`\$(.*)`)")
_REGEX_TEXT: Final = f"matching regex {PRINTABLE!r}"
_decode_raw_dict = msgspec.json.Decoder(dict[str, Raw]).decode
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
# Every byte but brackets and quotes; innermost (empty) containers.
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_LEAF: Final = re.compile(rb"\[\]|\{\}")


def decode_body(body: bytes) -> dict[str, Raw]:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        fields = _decode_raw_dict(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.") from None
    except msgspec.DecodeError as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}.") from None
    except RecursionError:
        raise _too_deep() from None
    if not body.isascii():  # the common case costs one scan in C
        _check_utf8(body, fields)
    if (len(body) > 2 * MAX_DEPTH  # shorter, it cannot hold MAX_DEPTH + 1 pairs
            and body.count(b"[") + body.count(b"{") > MAX_DEPTH
            and _depth_over(body, MAX_DEPTH)):
        raise _too_deep()
    return fields


def _too_deep() -> InvalidRequest:
    return InvalidRequest(f"The request body is nested too deeply: at most {MAX_DEPTH} levels "
                          "of arrays and objects.")


def _check_utf8(body: bytes, fields: dict[str, Raw]) -> None:
    try:
        body.decode()
    except UnicodeDecodeError as e:
        where = next((name for name, raw in fields.items() if not _is_utf8(raw)), None)
        raise InvalidRequest(
            f"The request body is not valid UTF-8 (byte {e.start})"
            + (f", in `{where}`." if where else "."),
            param=where,
        ) from None


def _is_utf8(raw: Raw) -> bool:
    try:
        bytes(raw).decode()
    except UnicodeDecodeError:
        return False
    return True


def _depth_over(body: bytes, limit: int) -> bool:
    """Whether valid JSON nests more than `limit` arrays and objects, with byte operations
    in C only: drop escaped backslashes and quotes (every `"` left delimits a string), keep
    brackets and quotes, drop what is inside strings, then remove the innermost containers
    one level a pass."""
    kept = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    brackets = b"".join(kept.split(b'"')[::2])
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _LEAF.sub(b"", brackets)
    return bool(brackets)


class Typed:
    """A field's type with its decoder, made once at import, for the request path.

    `field(fields, "stream", bool | None)` builds the union on every call, and finding its
    decoder hashes it, which typing does by building a frozenset of its arguments: about a
    microsecond a field, several fields a request. `field(fields, "stream", OPTIONAL_BOOL)`
    reads the decoder off this object."""

    __slots__ = ("decoder", "type")

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(type_)


def field(fields: dict[str, Raw], name: str, type_: Any, default: Any = None) -> Any:
    """Decode one raw field, naming it (and the offending element) in a 400 on a bad type.
    `type_`: a type, or a `Typed` (its decoder made once)."""
    raw = fields.get(name)
    if raw is None:
        return default
    dec: msgspec.json.Decoder[Any] | None
    if type(type_) is Typed:
        dec = type_.decoder
    else:
        dec = _decoders.get(type_)
        if dec is None:
            dec = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return dec.decode(raw)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _LOC.search(text)
        where = name + (m.group(2) if m else "")
        problem = (text[: m.start()] if m else text).replace(_REGEX_TEXT, "without control "
                                                              "characters")
        what = f"a key of `{where}`" if m and m.group(1) else f"`{where}`"
        raise InvalidRequest(
            f"Invalid value for {what}: {problem.replace('`', '')}.", param=where
        ) from None
    except msgspec.DecodeError as e:  # a lone surrogate escape, say
        raise InvalidRequest(f"Invalid value for `{name}`: {e}.", param=name) from None
    except RecursionError:
        raise _too_deep() from None


def required(fields: dict[str, Raw], name: str, type_: Any) -> Any:
    if name not in fields:
        raise InvalidRequest(f"Missing required parameter: `{name}`.", param=name)
    value = field(fields, name, type_)
    if value is None:
        raise InvalidRequest(f"`{name}` must not be null.", param=name)
    return value


OPTIONAL_STR: Final = Typed(str | None)
OPTIONAL_BOOL: Final = Typed(bool | None)
OPTIONAL_INT: Final = Typed(int | None)
STR_LIST: Final = Typed(list[str])
OPTIONAL_STR_LIST: Final = Typed(list[str] | None)
OPTIONAL_META: Final = Typed(RequestyMeta | None)
OPTIONAL_STREAM_OPTIONS: Final = Typed(StreamOptions | None)
CHAT_MESSAGES: Final = Typed(list[Message])
STR: Final = Typed(str)
ANY: Final = Typed(Any)


def encode_raw(value: Any) -> Raw:
    return Raw(msgspec.json.encode(value))
