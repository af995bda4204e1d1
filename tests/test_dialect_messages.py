"""Anthropic Messages <-> Chat Completions: the pure translation layer (proxy/dialects/messages).

Requests are built by the official `anthropic` SDK where it can build them (its body is
captured by an in-process httpx2 transport: no network); every answer and stream event
the translator makes is validated with the SDK's own types, and streams are read back
through the SDK's stream helper, which assembles blocks as a real client does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2 as httpx  # the SDKs' HTTP client, installed with them
import msgspec
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from proxy.dialects.messages import (
    MessagesStream,
    error_body,
    error_event,
    error_type,
    parse_request,
    render,
    to_chat,
    to_message,
)
from proxy.errors import ApiError, InvalidRequest, RateLimited, UpstreamError
from proxy.providers.sse import SSEParser
from proxy.wire import Message as ChatMessage
from proxy.wire import decode_body, required

MODEL = "claude-sonnet-4-5-20250929"
EVENT = TypeAdapter(RawMessageStreamEvent)


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    return to_chat(parse_request(msgspec.json.encode(body)))


def base(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256,
            "messages": [{"role": "user", "content": "hi"}], **extra}


def refused(body: dict[str, Any] | bytes) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    with pytest.raises(InvalidRequest) as e:
        to_chat(parse_request(raw))
    assert e.value.status == 400
    return e.value


def sdk_client(handler: Callable[[httpx.Request], httpx.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="k", base_url="http://gateway.test", max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def sdk_body(**params: Any) -> bytes:
    """The exact body the Anthropic SDK sends for `messages.create(**params)`."""
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(400, json={"type": "error", "error": {
            "type": "invalid_request_error", "message": "captured"}})

    with pytest.raises(anthropic.BadRequestError):
        sdk_client(handler).messages.create(**params)
    return sent[0]


def events(sse: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; checks the name matches the data's type and the data
    validates as an SDK stream event (ping, which the SDK skips, excepted)."""
    out = []
    for name, data in SSEParser().feed(sse):
        assert name is not None
        payload = json.loads(data)
        assert payload["type"] == name.decode()
        if payload["type"] != "ping":
            EVENT.validate_python(payload)
        out.append((name.decode(), payload))
    return out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None, **choice: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"id": "chatcmpl-abc", "object": "chat.completion.chunk",
                         "created": 1, "model": "gpt-x", "choices": []}
    if delta is not None or finish is not None:
        c["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}]
    if usage is not None:
        c["usage"] = usage
    return c


def completion(message: dict[str, Any], finish: str = "stop",
               usage: dict[str, Any] | None = None, **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish, **choice}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}


# ---------------------------------------------------------------------------------------
# request
# ---------------------------------------------------------------------------------------


def test_request_from_sdk_translates_every_field() -> None:
    body = sdk_body(
        model=MODEL, max_tokens=512, system="Be brief.",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        stop_sequences=["END", "STOP"], metadata={"user_id": "u-42"},
        # No longer parameters of this SDK's create(), but older clients send them.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5},
        tools=[{"name": "weather", "description": "Weather now",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    chat = to_chat(parse_request(body))
    assert chat == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "weather in Paris?"}],
        "max_tokens": 512, "temperature": 0.2, "top_p": 0.9, "top_k": 5,
        "stop": ["END", "STOP"],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto", "parallel_tool_calls": False,
        "requesty": {"user_id": "u-42"},
    }


def test_request_system_blocks_join_into_one_system_message() -> None:
    chat = chat_of(base(system=[
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in French."}]))
    assert chat["messages"][0] == {"role": "system",
                                   "content": "You are Claude Code.\n\nAnswer in French."}


def test_request_images_base64_and_url_become_image_url_parts() -> None:
    chat = chat_of(base(messages=[{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
    ]}]))
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
    ]}]


def test_request_documents_base64_become_file_parts_and_text_documents_text() -> None:
    chat = chat_of(base(messages=[{"role": "user", "content": [
        {"type": "document", "title": "spec.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "plain notes"}},
    ]}]))
    assert chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                  "filename": "spec.pdf"}},
        {"type": "text", "text": "plain notes"},
    ]


def test_request_tool_round_trip_maps_tool_use_and_tool_result() -> None:
    chat = chat_of(base(messages=[
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2",
             "content": [{"type": "text", "text": "21C"}, {"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "and tomorrow?"},
        ]},
    ]))
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "21C\nsunny"},
        {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]},
    ]


def test_request_tool_result_images_follow_the_tool_message() -> None:
    chat = chat_of(base(messages=[
        {"role": "user", "content": "screenshot please"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "taken"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "QUJD"}}]}]},
    ]))
    assert chat["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]}
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "taken"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
    ]


def test_request_thinking_config_and_history_thinking_stay_out_of_the_chat_body() -> None:
    req = parse_request(msgspec.json.encode(base(
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "q"},
                  {"role": "assistant", "content": [
                      {"type": "redacted_thinking", "data": "xyz"},
                      {"type": "thinking", "thinking": "hmm", "signature": "s"}]},
                  {"role": "user", "content": "again"}])))
    chat = to_chat(req)
    assert "thinking" not in chat and "reasoning_effort" not in chat
    assert req.thinking == {"type": "enabled", "budget_tokens": 2048}  # for the caller
    assert chat["messages"][1] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
     {"tool_choice": {"type": "function", "function": {"name": "weather"}},
      "parallel_tool_calls": False}),
])
def test_request_tool_choice_maps_to_chat(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = chat_of(base(tools=[{"name": "weather", "input_schema": {"type": "object"}}],
                        tool_choice=choice))
    assert {k: chat[k] for k in expected} == expected


def test_request_stream_asks_upstream_for_the_usage_chunk() -> None:
    body = sdk_body(model=MODEL, max_tokens=9, stream=True,
                    messages=[{"role": "user", "content": "hi"}])
    chat = to_chat(parse_request(body))
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


def test_request_output_config_format_becomes_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = chat_of(base(output_config={"format": {"type": "json_schema", "schema": schema},
                                       "effort": "max"}))
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": schema, "strict": True}}
    assert chat["reasoning_effort"] == "xhigh"


def test_request_advisory_fields_are_dropped() -> None:
    chat = chat_of(base(service_tier="auto", cache_control={"type": "ephemeral"},
                        inference_geo="us", speed="fast", workspace_id="w",
                        context_management={"edits": [{"type": "clear_tool_uses_20250919"}]}))
    assert set(chat) == {"model", "messages", "max_tokens"}


def test_refuses_missing_max_tokens_naming_it() -> None:
    err = refused({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert "max_tokens" in err.message


def test_refuses_max_tokens_below_one() -> None:
    assert refused(base(max_tokens=0)).param == "max_tokens"


def test_refuses_unknown_field_naming_it() -> None:
    assert "frequency_penalty" in refused(base(frequency_penalty=1)).message


def test_refuses_bad_role_naming_where() -> None:
    err = refused(base(messages=[{"role": "system", "content": "x"}]))
    assert err.param == "messages[0].role"


def test_refuses_unknown_block_type_naming_where() -> None:
    err = refused(base(messages=[{"role": "user", "content": [
        {"type": "search_result", "source": "s", "title": "t", "content": []}]}]))
    assert err.param == "messages[0].content[0].type"


@pytest.mark.parametrize(("name", "value"), [
    ("container", {"id": "x"}),
    ("mcp_servers", [{"type": "url", "url": "https://mcp.test", "name": "m"}]),
])
def test_refuses_anthropic_hosted_features(name: str, value: Any) -> None:
    assert refused(base(**{name: value})).param == name


def test_refuses_server_tools() -> None:
    err = refused(base(tools=[{"type": "web_search_20250305", "name": "web_search"}]))
    assert err.param == "tools[0]" and "web_search_20250305" in err.message


def test_refuses_tool_use_in_a_user_turn() -> None:
    err = refused(base(messages=[{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]))
    assert err.param == "messages[0].content[0].type"


@pytest.mark.parametrize("block", [
    {"type": "tool_result", "tool_use_id": "t", "content": "x"},
    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
])
def test_refuses_user_only_blocks_in_an_assistant_turn(block: dict[str, Any]) -> None:
    err = refused(base(messages=[{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": [block]}]))
    assert err.param == "messages[1].content[0].type"


def test_refuses_file_id_sources_and_url_documents() -> None:
    err = refused(base(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]))
    assert err.param == "messages[0].content[0].source"
    err = refused(base(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}]}]))
    assert err.param == "messages[0].content[0].source"


def test_refuses_tool_choice_tool_without_name() -> None:
    assert refused(base(tool_choice={"type": "tool"})).param == "tool_choice.name"


def test_refuses_non_json_body() -> None:
    refused(b"{not json")


# ---------------------------------------------------------------------------------------
# response
# ---------------------------------------------------------------------------------------


def test_response_text_and_usage_validate_as_sdk_message() -> None:
    out = to_message(completion({"content": "Bonjour"}, usage={
        "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 60}}), MODEL)
    msg = Message.model_validate(out)
    assert msg.model == MODEL and msg.id == "msg_abc"
    block = msg.content[0]
    assert len(msg.content) == 1 and block.type == "text" and block.text == "Bonjour"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    # Anthropic's input_tokens leaves the cache reads out; the total is unchanged.
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (40, 60)
    assert msg.usage.output_tokens == 7


def test_response_cache_writes_reported_by_the_anthropic_adapter_round_trip() -> None:
    out = to_message(completion({"content": "x"}, usage={
        "prompt_tokens": 100, "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 10, "cache_creation_tokens": 30}}), MODEL)
    assert out["usage"] == {"input_tokens": 60, "output_tokens": 1,
                            "cache_read_input_tokens": 10, "cache_creation_input_tokens": 30}


@pytest.mark.parametrize(("finish", "reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("content_filter", "refusal"),
])
def test_response_finish_reason_maps_to_stop_reason(finish: str, reason: str) -> None:
    msg = Message.model_validate(to_message(completion({"content": "x"}, finish), MODEL))
    assert msg.stop_reason == reason


def test_response_stop_sequence_named_when_the_provider_names_it() -> None:
    out = to_message(completion({"content": "one two"}, "stop", stop_reason="STOP"), MODEL,
                     stop_sequences=["STOP"])
    msg = Message.model_validate(out)
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")


def test_response_eos_token_is_not_mistaken_for_a_stop_sequence() -> None:
    out = to_message(completion({"content": "x"}, "stop", stop_reason=None), MODEL,
                     stop_sequences=["STOP"])
    assert (out["stop_reason"], out["stop_sequence"]) == ("end_turn", None)


def test_response_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    out = to_message(completion({"content": None, "reasoning_content": "need weather",
                                 "tool_calls": [{"id": "call_1", "type": "function", "function": {
                                     "name": "weather", "arguments": '{"city":"Paris"}'}}]},
                                "tool_calls"), MODEL)
    msg = Message.model_validate(out)
    assert [b.type for b in msg.content] == ["thinking", "tool_use"]
    tool = msg.content[1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_1", "weather", {"city": "Paris"})
    assert msg.stop_reason == "tool_use"


def test_response_tool_use_round_trips_through_the_next_request() -> None:
    out = to_message(completion({"content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls"), MODEL)
    assistant = Message.model_validate(out).to_param()
    body = sdk_body(model=MODEL, max_tokens=50, messages=[
        {"role": "user", "content": "weather?"}, assistant,
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "18C"}]}])
    chat = to_chat(parse_request(body))
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]


def test_response_malformed_tool_arguments_are_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        to_message(completion({"tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": "[1,"}}]}, "tool_calls"), MODEL)


def test_response_without_a_choice_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        to_message({"id": "x", "choices": []}, MODEL)


def test_response_read_by_the_sdk_client() -> None:
    body = msgspec.json.encode(to_message(completion({"content": "hello"}), MODEL))
    client = sdk_client(lambda request: httpx.Response(200, content=body, headers={
        "content-type": "application/json"}))
    msg = client.messages.create(model=MODEL, max_tokens=5,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "hello"


# ---------------------------------------------------------------------------------------
# stream
# ---------------------------------------------------------------------------------------


def feed_all(tr: MessagesStream, chunks: list[dict[str, Any]]) -> list[bytes]:
    return [tr.feed(c) for c in chunks] + [tr.finish()]


TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    chunk(usage={"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
                 "prompt_tokens_details": {"cached_tokens": 2}}),
]


def test_stream_text_events_in_anthropics_order() -> None:
    out = b"".join(feed_all(MessagesStream(MODEL), TEXT_STREAM))
    evs = events(out)
    assert [name for name, _ in evs] == [
        "message_start", "content_block_start", "ping", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert evs[0][1]["message"]["model"] == MODEL
    assert [e["delta"]["text"] for n, e in evs if n == "content_block_delta"] == ["Hel", "lo"]
    assert evs[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert evs[-2][1]["usage"] == {"input_tokens": 10, "output_tokens": 2,
                                   "cache_read_input_tokens": 2,
                                   "cache_creation_input_tokens": 0}


def test_stream_each_chunk_yields_its_events_at_once() -> None:
    tr = MessagesStream(MODEL, input_tokens=9)
    per_chunk = [[n for n, _ in events(b)] for b in feed_all(tr, TEXT_STREAM)]
    assert per_chunk == [
        ["message_start"],
        ["content_block_start", "ping", "content_block_delta"],
        ["content_block_delta"],
        ["content_block_stop"],
        ["message_delta", "message_stop"],
        [],
    ]
    assert tr.done


def test_stream_message_start_carries_the_input_estimate() -> None:
    first = events(MessagesStream(MODEL, input_tokens=9).feed(TEXT_STREAM[0]))
    assert first[0][1]["message"]["usage"] == {"input_tokens": 9, "output_tokens": 0}


def test_stream_usage_on_the_finish_chunk_closes_the_message_there() -> None:
    tr = MessagesStream(MODEL)
    tr.feed(chunk({"content": "x"}))
    out = events(tr.feed(chunk({}, "length", usage={"prompt_tokens": 3,
                                                   "completion_tokens": 1})))
    assert [n for n, _ in out] == ["content_block_stop", "message_delta", "message_stop"]
    assert out[1][1]["delta"]["stop_reason"] == "max_tokens"
    assert tr.feed(chunk(usage={"prompt_tokens": 99, "completion_tokens": 99})) == b""
    assert tr.finish() == b""


def test_stream_without_usage_closes_at_the_end_of_the_stream() -> None:
    tr = MessagesStream(MODEL)
    tr.feed(chunk({"content": "x"}))
    tr.feed(chunk({}, "stop"))
    out = events(tr.finish())
    assert [n for n, _ in out] == ["message_delta", "message_stop"]
    assert out[0][1]["usage"] == {"output_tokens": 0}


def test_stream_cut_before_a_finish_reason_is_an_upstream_error() -> None:
    tr = MessagesStream(MODEL)
    tr.feed(chunk({"content": "x"}))
    with pytest.raises(UpstreamError) as e:
        tr.finish()
    assert e.value.reason == "cut"
    assert not tr.done


TOOL_STREAM = [
    chunk({"role": "assistant", "reasoning_content": "think"}),
    chunk({"content": "Let me check."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                           "function": {"name": "weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                           "function": {"name": "time", "arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
    chunk(usage={"prompt_tokens": 20, "completion_tokens": 11}),
]


def test_stream_tool_calls_become_tool_use_blocks_with_json_deltas() -> None:
    evs = events(b"".join(feed_all(MessagesStream(MODEL), TOOL_STREAM)))
    starts = [e["content_block"] for n, e in evs if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert (starts[2]["id"], starts[2]["name"]) == ("call_a", "weather")
    json_parts = [e["delta"]["partial_json"] for n, e in evs
                  if n == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert json_parts == ['{"city":', '"Paris"}', "{}"]
    stops = [e["index"] for n, e in evs if n == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_read_by_the_sdk_stream_helper() -> None:
    body = b"".join(feed_all(MessagesStream(MODEL), TOOL_STREAM))
    client = sdk_client(lambda request: httpx.Response(200, content=body, headers={
        "content-type": "text/event-stream"}))
    with client.messages.stream(model=MODEL, max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Let me check."]
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[2].type == "tool_use" and final.content[2].input == {"city": "Paris"}
    assert final.content[3].type == "tool_use" and final.content[3].input == {}
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 11)


def test_stream_stop_sequence_named_when_the_provider_names_it() -> None:
    tr = MessagesStream(MODEL, stop_sequences=["###"])
    tr.feed(chunk({"content": "a"}))
    tr.feed(chunk({}, "stop", stop_reason="###"))
    delta = events(tr.feed(chunk(usage={"prompt_tokens": 1, "completion_tokens": 1})))[0][1]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}


def test_stream_accepts_raw_chunk_bytes() -> None:
    tr = MessagesStream(MODEL)
    evs = events(tr.feed(msgspec.json.encode(chunk({"content": "a"}))))
    assert [n for n, _ in evs] == ["message_start", "content_block_start", "ping",
                                   "content_block_delta"]


def test_stream_malformed_chunk_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        MessagesStream(MODEL).feed(b'{"choices": 3}')


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (529, "overloaded_error"), (422, "invalid_request_error"),
    (502, "api_error"),
])
def test_error_types_by_status(status: int, kind: str) -> None:
    assert error_type(status) == kind
    body = json.loads(error_body(status, "why"))
    assert body == {"type": "error", "error": {"type": kind, "message": "why"}}
    if kind != "request_too_large":  # documented by Anthropic, missing from the SDK's union
        parsed = ErrorResponse.model_validate(body)
        assert (parsed.error.type, parsed.error.message) == (kind, "why")


@pytest.mark.parametrize(("err", "cls"), [
    (InvalidRequest("bad `x`", param="x"), anthropic.BadRequestError),
    (RateLimited("slow down"), anthropic.RateLimitError),
    (ApiError("boom", status=529), anthropic.InternalServerError),
])
def test_errors_raise_the_sdk_exception_class(err: ApiError, cls: type[Exception]) -> None:
    status, body = render(err)
    client = sdk_client(lambda request: httpx.Response(status, content=body, headers={
        "content-type": "application/json"}))
    with pytest.raises(cls) as e:
        client.messages.create(model=MODEL, max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])
    assert err.message in str(e.value)


def test_error_event_reaches_the_sdk_stream_as_an_exception() -> None:
    tr = MessagesStream(MODEL)
    body = tr.feed(chunk({"content": "part"})) + error_event(529, "Overloaded")
    client = sdk_client(lambda request: httpx.Response(200, content=body, headers={
        "content-type": "text/event-stream"}))
    with (
        pytest.raises(anthropic.APIStatusError) as e,
        client.messages.stream(model=MODEL, max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}]) as stream,
    ):
        list(stream.text_stream)
    assert "overloaded_error" in str(e.value)


def test_stream_whole_tool_calls_all_at_index_zero_stay_separate() -> None:
    tr = MessagesStream(MODEL)
    out = b"".join([
        tr.feed(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "a", "arguments": '{"x":1}'}}]})),
        tr.feed(chunk({"tool_calls": [{"index": 0, "id": "call_2", "type": "function",
                                       "function": {"name": "b", "arguments": '{"y":2}'}}]})),
        tr.feed(chunk({}, "tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1})),
    ])
    evs = events(out)
    starts = [(e["index"], e["content_block"]["id"]) for n, e in evs
              if n == "content_block_start"]
    assert starts == [(0, "call_1"), (1, "call_2")]
    deltas = [(e["index"], e["delta"]["partial_json"]) for n, e in evs
              if n == "content_block_delta"]
    assert deltas == [(0, '{"x":1}'), (1, '{"y":2}')]


def test_refuses_an_orphan_tool_result_naming_it() -> None:
    err = refused(base(messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
            {"type": "tool_result", "tool_use_id": "toolu_9", "content": "?"}]},
    ]))
    assert err.param == "messages[2].content[1].tool_use_id" and "toolu_9" in err.message


def test_refuses_a_tool_result_with_no_assistant_turn_before() -> None:
    err = refused(base(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]))
    assert err.param == "messages[0].content[0].tool_use_id"


def test_refuses_a_tool_use_left_unanswered() -> None:
    err = refused(base(messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"}]},
    ]))
    assert err.param == "messages[2].content" and "toolu_1" in err.message


def test_chat_body_decodes_as_the_chat_path_decodes_it() -> None:
    chat = chat_of(base(system="s", stream=True, messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "done"}]},
    ]))
    fields = decode_body(msgspec.json.encode(chat))
    messages = required(fields, "messages", list[ChatMessage])
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[3].tool_call_id == "t1"
    assert msgspec.json.decode(fields["stream_options"]) == {"include_usage": True}
