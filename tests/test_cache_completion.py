"""Normalized completions: from a body, from stream chunks, and replayed as a stream."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from fakes import Reply
from fakes.openai_server import chunks as fake_chunks
from fakes.openai_server import completion as fake_completion

from proxy.cache import (
    IncompleteStream,
    completion_from_body,
    completion_from_stream_chunks,
    replay_chunks,
    response_body,
)
from proxy.catalog import Usage

decode = msgspec.json.decode
REQ = {"model": "gpt-x", "stream_options": {"include_usage": True}}
TOOLS = [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("get_time", '{"tz": "CET"}')]


def payloads(events: list[bytes]) -> list[bytes]:
    """SSE events → chunk payloads, as `ChatStream` yields them (no usage chunk, no DONE)."""
    out = [e.removeprefix(b"data: ").rstrip(b"\n") for e in events]
    return [p for p in out if p != b"[DONE]" and b'"choices":[]' not in p]


def message(body: bytes) -> dict[str, Any]:
    choice = decode(body)["choices"][0]
    return {"message": choice["message"], "finish_reason": choice["finish_reason"]}


def assemble(chunks: list[bytes]) -> dict[str, Any]:
    return message(completion_from_stream_chunks(chunks).body)


@pytest.mark.parametrize("reply", [
    Reply(text="The answer is forty-two, as always."),
    Reply(tool_calls=TOOLS),
    Reply(text="Let me check.", tool_calls=TOOLS[:1]),
    Reply(text="cut short", finish_reason="length"),
])
def test_stream_chunks_assemble_to_the_non_streamed_answer(reply: Reply) -> None:
    streamed = completion_from_stream_chunks(payloads(fake_chunks(reply, REQ, 1)),
                                             Usage(prompt_tokens=12, completion_tokens=5))
    plain = decode(fake_completion(reply, REQ, 1))
    got = decode(streamed.body)
    want_msg = plain["choices"][0]["message"]
    got_msg = got["choices"][0]["message"]
    assert got_msg["content"] == want_msg["content"]
    assert got_msg.get("tool_calls") == want_msg.get("tool_calls")
    assert got["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert got["id"] == plain["id"] and got["object"] == "chat.completion"
    assert got["system_fingerprint"] == plain["system_fingerprint"]
    assert streamed.finish_reason == plain["choices"][0]["finish_reason"]


@pytest.mark.parametrize("reply", [Reply(text="Hello there, friend."), Reply(tool_calls=TOOLS)])
def test_replay_of_a_streamed_answer_reproduces_content_and_tool_calls(reply: Reply) -> None:
    original = payloads(fake_chunks(reply, REQ, 3))
    stored = completion_from_stream_chunks(original, Usage(prompt_tokens=12, completion_tokens=9))
    replayed = replay_chunks(stored)
    assert assemble(replayed) == assemble(original)
    for p in replayed:
        chunk = decode(p)
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == "chatcmpl-fake000003"
    assert decode(replayed[-1])["choices"][0]["finish_reason"] is not None
    # each tool call arrives whole, with its index, id and name
    calls = [d for p in replayed for d in decode(p)["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["index"] for c in calls] == list(range(len(reply.tools)))


def test_replay_adds_the_usage_chunk_with_zero_cost_only_when_asked() -> None:
    reply = Reply(text="Hi.", prompt_tokens=20, completion_tokens=2, cached_tokens=8)
    stored = completion_from_stream_chunks(
        payloads(fake_chunks(reply, REQ, 1)),
        Usage(prompt_tokens=20, completion_tokens=2, cached_tokens=8),
    )
    assert all(decode(p)["choices"] for p in replay_chunks(stored))
    last = decode(replay_chunks(stored, include_usage=True)[-1])
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 20 and last["usage"]["completion_tokens"] == 2
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
    assert last["usage"]["cost"] == 0.0


def test_usage_chunk_in_the_chunks_is_kept_without_cost() -> None:
    reply = Reply(text="Hi.", prompt_tokens=20, completion_tokens=2)
    events = [e.removeprefix(b"data: ").rstrip(b"\n") for e in fake_chunks(reply, REQ, 1)]
    with_cost = [e.replace(b'"total_tokens":22', b'"total_tokens":22,"cost":0.5') for e in events]
    stored = completion_from_stream_chunks(with_cost)
    usage = decode(stored.body)["usage"]
    assert "cost" not in usage and usage["total_tokens"] == 22
    assert (stored.prompt_tokens, stored.completion_tokens) == (20, 2)


def test_a_cut_stream_cannot_become_a_cache_entry() -> None:
    whole = payloads(fake_chunks(Reply(text="one two three four"), REQ, 1))
    with pytest.raises(IncompleteStream):
        completion_from_stream_chunks(whole[:-1])  # the finish chunk never came
    with pytest.raises(IncompleteStream):
        completion_from_stream_chunks([])


def test_multiple_choices_assemble_by_index() -> None:
    head = b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    chunks = [
        head + b'[{"index":1,"delta":{"role":"assistant","content":"B"},"finish_reason":null}]}',
        head + b'[{"index":0,"delta":{"role":"assistant","content":"A"},"finish_reason":null}]}',
        head + b'[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}',
        head + b'[{"index":1,"delta":{"content":"b"},"finish_reason":"length"}]}',
    ]
    body = decode(completion_from_stream_chunks(chunks).body)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Aa", "stop"), (1, "Bb", "length")]
    replayed = completion_from_stream_chunks(replay_chunks(completion_from_stream_chunks(chunks)))
    assert decode(replayed.body)["choices"] == body["choices"]


def test_logprobs_and_refusal_are_assembled() -> None:
    head = b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    chunks = [
        head + b'[{"index":0,"delta":{"role":"assistant","refusal":"No"},'
               b'"logprobs":{"content":null,"refusal":[{"token":"No","logprob":-0.1}]},'
               b'"finish_reason":null}]}',
        head + b'[{"index":0,"delta":{"refusal":"pe."},'
               b'"logprobs":{"content":null,"refusal":[{"token":"pe.","logprob":-0.2}]},'
               b'"finish_reason":"stop"}]}',
    ]
    choice = decode(completion_from_stream_chunks(chunks).body)["choices"][0]
    assert choice["message"]["refusal"] == "Nope." and choice["message"]["content"] is None
    assert [t["token"] for t in choice["logprobs"]["refusal"]] == ["No", "pe."]


def test_non_streamed_body_is_stored_without_cost_and_served_with_zero_cost() -> None:
    body = fake_completion(Reply(text="Hi.", prompt_tokens=30, completion_tokens=3), REQ, 1)
    fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode(body)
    fields["usage"] = msgspec.Raw(body[body.index(b'"usage":') + 8 : body.index(b',"service_tier"')]
                                  .replace(b'"total_tokens":33', b'"total_tokens":33,"cost":1.5'))
    stored = completion_from_body(fields, Usage(prompt_tokens=30, completion_tokens=3),
                                  model="openai/x", provider="openai")
    assert "cost" not in decode(stored.body)["usage"]
    assert (stored.model, stored.provider, stored.finish_reason) == ("openai/x", "openai", "stop")
    assert stored.usage() == Usage(prompt_tokens=30, completion_tokens=3)
    served = decode(response_body(stored))
    assert served["usage"]["cost"] == 0.0 and served["usage"]["total_tokens"] == 33
    assert served["choices"] == decode(body)["choices"]


def test_body_without_usage_gets_the_gateway_usage() -> None:
    payload = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":' \
              b'[{"index":0,"message":{"role":"assistant","content":"hey"},"finish_reason":"stop"}]}'
    stored = completion_from_body(payload, Usage(prompt_tokens=4, completion_tokens=1,
                                                 cached_tokens=2))
    assert decode(stored.body)["usage"] == {
        "prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 2}}
    assert assemble(replay_chunks(stored)) == message(stored.body)


def test_plain_answer_replayed_as_a_stream() -> None:
    body = fake_completion(Reply(tool_calls=TOOLS, text="Checking."), REQ, 5)
    got = assemble(replay_chunks(completion_from_body(body)))
    want = message(body)
    assert got["finish_reason"] == want["finish_reason"] == "tool_calls"
    for part in ("role", "content", "tool_calls"):
        assert got["message"][part] == want["message"][part]
