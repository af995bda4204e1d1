"""What the cache stores: one finished answer as an OpenAI `chat.completion`, and back.

`CachedCompletion` holds the non-streamed completion body (its `usage` without `cost`)
and the token counts, whichever way the answer was first served:

- `completion_from_body(payload, usage)` from a non-streamed answer;
- `completion_from_stream_chunks(chunks, usage)` from a stream's chunk payloads: content,
  refusal, tool calls, logprobs and finish_reason are assembled per choice. A stream that
  did not finish (a choice without finish_reason) raises `IncompleteStream`: only a
  finished answer can become a `CachedCompletion`, so a partial one cannot be stored.

A hit is served as `response_body(c)` (the JSON body) or as `replay_chunks(c)` (chunk
payloads to frame as `data: ...` events, then `data: [DONE]`): one role+content chunk, one
per tool call, a finish chunk, and the usage chunk when the client asked for it. A hit
costs nothing, so its `usage.cost` is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
from msgspec import Raw

from ..catalog import Usage


class IncompleteStream(ValueError):
    """The chunks do not make a finished answer (cut, errored, or empty)."""


class CachedCompletion(msgspec.Struct, frozen=True, kw_only=True):
    body: bytes  # chat.completion JSON, usage without cost
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    finish_reason: str | None = None
    model: str = ""  # the catalog model that answered: a hit's savings are priced on it
    provider: str = ""

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )

    def payload(self) -> dict[str, Raw]:
        """The body's top-level fields, raw (as `providers.base.Completion.payload`)."""
        return _decode_fields(self.body)


_encode = msgspec.json.encode
_decode_fields = msgspec.json.Decoder(dict[str, Raw]).decode
_decode_obj = msgspec.json.Decoder(dict[str, Any]).decode
_HEAD_FIELDS: Final = ("id", "created", "model", "service_tier", "system_fingerprint")


def _usage_dict(raw_usage: Any, usage: Usage | None) -> dict[str, Any] | None:
    """The provider's usage object without `cost`, or one made from `usage`."""
    if isinstance(raw_usage, dict):
        return {k: v for k, v in raw_usage.items() if k != "cost"}
    if usage is None:
        return None
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


def _counts(body_usage: dict[str, Any] | None, usage: Usage | None) -> Usage:
    if usage is not None:
        return usage
    u = body_usage or {}
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


def _make(
    body: bytes, counts: Usage, finish_reason: str | None, model: str, provider: str
) -> CachedCompletion:
    return CachedCompletion(
        body=body,
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        cached_tokens=counts.cached_tokens,
        cache_write_tokens=counts.cache_write_tokens,
        finish_reason=finish_reason,
        model=model,
        provider=provider,
    )


def completion_from_body(
    payload: Mapping[str, Raw] | bytes,
    usage: Usage | None = None,
    *,
    model: str = "",
    provider: str = "",
) -> CachedCompletion:
    """A non-streamed answer (body bytes or `Completion.payload`) as a cache entry.

    `usage` is the gateway's own count of the call (`Completion.usage`); it is written
    into the body when the provider's body has none.
    """
    fields = dict(_decode_fields(payload) if isinstance(payload, bytes) else payload)
    raw_usage = msgspec.json.decode(fields["usage"]) if "usage" in fields else None
    body_usage = _usage_dict(raw_usage, usage)
    if body_usage is not None:
        fields["usage"] = Raw(_encode(body_usage))
    choices = msgspec.json.decode(fields.get("choices", b"[]"))
    finish = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
    return _make(_encode(fields), _counts(body_usage, usage), finish, model, provider)


class _Choice:
    """One choice being assembled from its deltas."""

    __slots__ = ("content", "finish_reason", "function_call", "logprobs", "refusal", "tools")

    def __init__(self) -> None:
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.tools: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            if self.content is None:
                self.content = []
            self.content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(delta["refusal"])
        for tc in delta.get("tool_calls") or ():
            self._add_tool(tc)
        fc = delta.get("function_call")
        if isinstance(fc, dict):
            self.function_call = self.function_call or {"name": "", "arguments": ""}
            self.function_call["name"] += fc.get("name") or ""
            self.function_call["arguments"] += fc.get("arguments") or ""
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            self.logprobs = self.logprobs or {}
            for part in ("content", "refusal"):
                if isinstance(lp.get(part), list):
                    self.logprobs.setdefault(part, []).extend(lp[part])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def _add_tool(self, tc: dict[str, Any]) -> None:
        index = int(tc.get("index", len(self.tools)))
        call = self.tools.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if tc.get("id"):
            call["id"] = tc["id"]
        if tc.get("type"):
            call["type"] = tc["type"]
        fn = tc.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) if self.content is not None else None,
        }
        if self.refusal is not None:
            msg["refusal"] = "".join(self.refusal)
        if self.tools:
            msg["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        if self.function_call is not None:
            msg["function_call"] = self.function_call
        return msg


def completion_from_stream_chunks(
    chunks: Sequence[bytes],
    usage: Usage | None = None,
    *,
    model: str = "",
    provider: str = "",
) -> CachedCompletion:
    """A finished stream (its `chat.completion.chunk` payloads, in order) as a cache entry.

    A usage chunk among `chunks` is used for the body's `usage`; otherwise `usage` (the
    stream's `ChatStream.usage`) is. Raises `IncompleteStream` unless every choice has a
    finish_reason.
    """
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    raw_usage: Any = None
    for payload in chunks:
        if payload == b"[DONE]":
            continue
        chunk = _decode_obj(payload)
        for name in _HEAD_FIELDS:
            if chunk.get(name) is not None:
                head.setdefault(name, chunk[name])
        for choice in chunk.get("choices") or ():
            choices.setdefault(int(choice.get("index", 0)), _Choice()).add(choice)
        if isinstance(chunk.get("usage"), dict):
            raw_usage = chunk["usage"]
    if not choices or any(c.finish_reason is None for c in choices.values()):
        raise IncompleteStream("the stream has no finished answer")
    body: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [
            {
                "index": i,
                "message": choices[i].message(),
                "logprobs": choices[i].logprobs,
                "finish_reason": choices[i].finish_reason,
            }
            for i in sorted(choices)
        ],
    }
    body_usage = _usage_dict(raw_usage, usage)
    if body_usage is not None:
        body["usage"] = body_usage
    for name in ("service_tier", "system_fingerprint"):
        if name in head:
            body[name] = head[name]
    first = choices[min(choices)].finish_reason
    return _make(_encode(body), _counts(body_usage, usage), first, model, provider)


def _with_cost(usage: Any) -> dict[str, Any]:
    out = dict(usage) if isinstance(usage, dict) else {}
    out["cost"] = 0.0  # a cache hit is free (CONTRACT: usage and cost)
    return out


def response_body(c: CachedCompletion) -> bytes:
    """The JSON body of a non-streamed hit, `usage.cost` = 0."""
    fields = c.payload()
    usage = msgspec.json.decode(fields["usage"]) if "usage" in fields else None
    fields["usage"] = Raw(_encode(_with_cost(usage)))
    return _encode(fields)


def replay_chunks(c: CachedCompletion, *, include_usage: bool = False) -> list[bytes]:
    """The hit as `chat.completion.chunk` payloads, without SSE framing or `[DONE]`."""
    body = _decode_obj(c.body)
    head: dict[str, Any] = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    for name in ("service_tier", "system_fingerprint"):
        if name in body:
            head[name] = body[name]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _encode({**head, "choices": [choice]})

    out: list[bytes] = []
    for choice in body.get("choices") or ():
        i = choice.get("index", 0)
        msg = choice.get("message") or {}
        first: dict[str, Any] = {
            "role": msg.get("role", "assistant"),
            "content": msg.get("content"),
        }
        if msg.get("refusal") is not None:
            first["refusal"] = msg["refusal"]
        out.append(chunk(i, first, logprobs=choice.get("logprobs")))
        for n, call in enumerate(msg.get("tool_calls") or ()):
            out.append(chunk(i, {"tool_calls": [{"index": n, **call}]}))
        if msg.get("function_call") is not None:
            out.append(chunk(i, {"function_call": msg["function_call"]}))
        out.append(chunk(i, {}, choice.get("finish_reason")))
    if include_usage:
        out.append(_encode({**head, "choices": [], "usage": _with_cost(body.get("usage"))}))
    return out
