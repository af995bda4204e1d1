"""The Anthropic adapter: request, response and stream transforms, and its HTTP edge.

The transforms are pure and tested on literal wire data; the edge runs against a local
aiohttp server that speaks Anthropic's Messages API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from msgspec import Raw

from proxy.catalog import Model, Usage
from proxy.config import ProviderConfig
from proxy.errors import InvalidRequest, UpstreamError
from proxy.providers.anthropic import (
    AnthropicProvider,
    StreamTranslator,
    build_body,
    build_request,
    finish_reason,
    to_completion,
)
from proxy.providers.base import ChatCall
from proxy.providers.sse import payloads
from proxy.wire import Message

MODEL = Model(
    id="anthropic/claude-sonnet-4-20250514",
    provider="anthropic",
    upstream="claude-sonnet-4-20250514",
    kind="chat",
    owned_by="anthropic",
    context_window=200_000,
    max_output_tokens=8192,
    input_nano=3_000_000_000,
    output_nano=15_000_000_000,
    cached_input_nano=300_000_000,
    cache_write_nano=3_750_000_000,
    input_price=3.0,
    output_price=15.0,
)
EPHEMERAL = {"type": "ephemeral"}


def make_call(
    body: dict[str, Any],
    *,
    stream: bool = False,
    max_tokens: int | None = None,
    auto_cache: bool = False,
) -> ChatCall:
    fields = {k: Raw(msgspec.json.encode(v)) for k, v in body.items()}
    messages = msgspec.json.decode(fields["messages"], type=list[Message])
    return ChatCall(MODEL, fields, messages, stream, max_tokens, auto_cache)


def request(messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    return build_request(make_call({"model": MODEL.id, "messages": messages, **body}))


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


# ---------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------


def test_system_and_developer_messages_become_top_level_system_string() -> None:
    req = request(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
        ]
    )
    assert req["system"] == "Be brief.\n\nAnswer in French."
    assert req["messages"] == [{"role": "user", "content": [text("Hi")]}]


def test_request_names_upstream_model_and_drops_openai_only_fields() -> None:
    req = request(
        [{"role": "user", "content": "Hi"}],
        presence_penalty=0.5,
        stream_options={"include_usage": True},
        logit_bias={"1": 2},
    )
    assert req["model"] == "claude-sonnet-4-20250514"
    assert set(req) == {"model", "messages", "max_tokens"}


def test_multi_turn_conversation_keeps_alternating_roles() -> None:
    req = request(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"},
        ]
    )
    assert req["messages"] == [
        {"role": "user", "content": [text("Hi")]},
        {"role": "assistant", "content": [text("Hello!")]},
        {"role": "user", "content": [text("How are you?")]},
    ]


def test_consecutive_same_role_messages_merge_into_one_turn() -> None:
    req = request(
        [
            {"role": "user", "content": "First"},
            {"role": "user", "content": [{"type": "text", "text": "Second"}]},
            {"role": "assistant", "content": "A"},
            {"role": "assistant", "content": "B"},
        ]
    )
    assert req["messages"] == [
        {"role": "user", "content": [text("First"), text("Second")]},
        {"role": "assistant", "content": [text("A"), text("B")]},
    ]


def test_empty_messages_are_left_out_rather_than_sent_empty() -> None:
    req = request(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Still there?"},
        ]
    )
    assert req["messages"] == [{"role": "user", "content": [text("Hi"), text("Still there?")]}]


def test_data_url_image_becomes_base64_image_block() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    req = request([{"role": "user", "content": [{"type": "text", "text": "What?"}, part]}])
    assert req["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }


def test_https_image_url_becomes_url_image_source() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    req = request([{"role": "user", "content": [part]}])
    assert req["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    ]


def test_pdf_file_part_becomes_base64_document_block() -> None:
    part = {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
    }
    req = request([{"role": "user", "content": [part]}])
    assert req["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_image_that_is_neither_base64_nor_http_is_refused_naming_the_part() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}
    with pytest.raises(InvalidRequest) as e:
        request([{"role": "user", "content": [part]}])
    assert e.value.param == "messages[0].content[0].image_url.url"


def test_function_tools_become_anthropic_tools_with_input_schema() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    req = request(
        [{"role": "user", "content": "Weather?"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Look it up",
                    "parameters": schema,
                },
            },
            {"type": "function", "function": {"name": "now"}},
        ],
    )
    assert req["tools"] == [
        {"name": "get_weather", "description": "Look it up", "input_schema": schema},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("openai", "anthropic"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "now"}}, {"type": "tool", "name": "now"}),
    ],
)
def test_tool_choice_maps_to_anthropic_tool_choice(openai: Any, anthropic: Any) -> None:
    tools = [{"type": "function", "function": {"name": "now"}}]
    req = request([{"role": "user", "content": "x"}], tools=tools, tool_choice=openai)
    assert req["tool_choice"] == anthropic


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    tools = [{"type": "function", "function": {"name": "now"}}]
    req = request([{"role": "user", "content": "x"}], tools=tools, parallel_tool_calls=False)
    assert req["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_tool_choice_without_tools_is_not_sent() -> None:
    req = request([{"role": "user", "content": "x"}], tool_choice="none")
    assert "tool_choice" not in req and "tools" not in req


def test_assistant_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    req = request(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "now", "arguments": ""},
                    },
                ],
            },
        ]
    )
    assert req["messages"][1] == {
        "role": "assistant",
        "content": [
            text("Let me check."),
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
        ],
    }


def test_tool_call_arguments_that_are_not_a_json_object_are_refused() -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    with pytest.raises(InvalidRequest) as e:
        request([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}])
    assert e.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_result_messages_merge_into_one_user_turn() -> None:
    calls = [
        {"id": f"toolu_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        for i in (1, 2)
    ]
    req = request(
        [
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "20C"}],
            },
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert [m["role"] for m in req["messages"]] == ["user", "assistant", "user"]
    assert req["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("20C")]},
        text("Thanks"),  # after the results, as Anthropic requires
    ]


def test_tool_message_without_tool_call_id_is_refused() -> None:
    with pytest.raises(InvalidRequest) as e:
        request([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}])
    assert e.value.param == "messages[1].tool_call_id"


def test_max_tokens_comes_from_the_call_first() -> None:
    call = make_call(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 50}, max_tokens=100
    )
    assert build_request(call)["max_tokens"] == 100


def test_max_completion_tokens_is_used_when_the_call_has_none() -> None:
    req = request([{"role": "user", "content": "x"}], max_completion_tokens=77)
    assert req["max_tokens"] == 77


def test_max_tokens_defaults_to_the_models_output_limit_as_anthropic_requires_one() -> None:
    assert request([{"role": "user", "content": "x"}])["max_tokens"] == 8192


def test_sampling_stop_user_and_stream_map_to_anthropic_names() -> None:
    call = make_call(
        {
            "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.2,
            "top_p": 1,
            "stop": "END",
            "user": "user-42",
        },
        stream=True,
    )
    req = build_request(call)
    assert req["temperature"] == 0.2
    assert req["top_p"] == 1.0
    assert req["stop_sequences"] == ["END"]
    assert req["metadata"] == {"user_id": "user-42"}
    assert req["stream"] is True


def test_stop_list_passes_as_stop_sequences() -> None:
    req = request([{"role": "user", "content": "x"}], stop=["a", "b"])
    assert req["stop_sequences"] == ["a", "b"]


def test_more_than_one_choice_is_refused() -> None:
    with pytest.raises(InvalidRequest) as e:
        request([{"role": "user", "content": "x"}], n=2)
    assert e.value.param == "n"


def test_unsupported_role_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        request([{"role": "function", "name": "f", "content": "x"}])


def test_build_body_is_the_request_as_json() -> None:
    call = make_call({"messages": [{"role": "user", "content": "x"}], "top_k": 5})
    assert json.loads(build_body(call)) == {**json.loads(msgspec.json.encode(build_request(call)))}
    assert json.loads(build_body(call))["top_k"] == 5


# ---------------------------------------------------------------------------------------
# Prompt cache breakpoints
# ---------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant with a long prompt."},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
]


def test_auto_cache_marks_system_and_the_turn_before_the_final_user_turn() -> None:
    call = make_call({"messages": CONVERSATION}, auto_cache=True)
    req = build_request(call)
    assert req["system"] == [
        {"type": "text", "text": CONVERSATION[0]["content"], "cache_control": EPHEMERAL}
    ]
    assert req["messages"][1]["content"][-1] == {**text("A1"), "cache_control": EPHEMERAL}
    assert "cache_control" not in req["messages"][0]["content"][-1]
    assert "cache_control" not in req["messages"][2]["content"][-1]


def test_without_auto_cache_no_breakpoint_is_added() -> None:
    req = build_request(make_call({"messages": CONVERSATION}))
    assert isinstance(req["system"], str)
    assert "cache_control" not in json.dumps(req)


def test_auto_cache_marks_the_last_tool_when_there_is_no_system_prompt() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    call = make_call({"messages": CONVERSATION[1:], "tools": tools}, auto_cache=True)
    req = build_request(call)
    assert "cache_control" not in req["tools"][0]
    assert req["tools"][1]["cache_control"] == EPHEMERAL


def test_auto_cache_marks_the_last_block_of_a_tool_use_turn() -> None:
    tool_call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "Calling", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "done"},
    ]
    req = build_request(make_call({"messages": messages}, auto_cache=True))
    assert req["messages"][1]["content"][-1]["type"] == "tool_use"
    assert req["messages"][1]["content"][-1]["cache_control"] == EPHEMERAL


def test_auto_cache_adds_nothing_to_a_single_user_turn_without_system() -> None:
    req = build_request(
        make_call({"messages": [{"role": "user", "content": "x"}]}, auto_cache=True)
    )
    assert "cache_control" not in json.dumps(req)


def test_auto_cache_keeps_within_four_breakpoints_counting_the_clients_own() -> None:
    cc = {"cache_control": EPHEMERAL}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "S", **cc}]},
        {"role": "user", "content": [{"type": "text", "text": "a", **cc}]},
        {"role": "assistant", "content": [{"type": "text", "text": "b", **cc}]},
        {"role": "user", "content": [{"type": "text", "text": "c"}]},
    ]
    tools = [{"type": "function", "function": {"name": "t"}, **cc}]
    req = build_request(make_call({"messages": messages, "tools": tools}, auto_cache=True))
    assert json.dumps(req).count("cache_control") == 4


def test_auto_cache_spends_its_budget_on_system_first() -> None:
    cc = {"cache_control": EPHEMERAL}
    messages = [
        {"role": "system", "content": "S"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "a", **cc}, {"type": "text", "text": "b", **cc}],
        },
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": [{"type": "text", "text": "c", **cc}]},
    ]
    req = build_request(make_call({"messages": messages}, auto_cache=True))
    assert req["system"][-1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in req["messages"][1]["content"][-1]
    assert json.dumps(req).count("cache_control") == 4


# ---------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------


def anthropic_message(**over: Any) -> bytes:
    msg: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [text("Hello"), text(" world")],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 1000,
            "output_tokens": 25,
        },
    }
    msg.update(over)
    return json.dumps(msg).encode()


def decoded(payload: dict[str, Raw]) -> dict[str, Any]:
    return {k: json.loads(bytes(v)) for k, v in payload.items()}


def test_response_text_blocks_join_into_one_openai_message() -> None:
    done = to_completion(anthropic_message(), "claude-sonnet-4-20250514", created=1700000000)
    body = decoded(done.payload)
    assert body["id"] == "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"
    assert body["object"] == "chat.completion"
    assert body["created"] == 1700000000
    assert body["model"] == "claude-sonnet-4-20250514"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert done.finish_reason == "stop"
    assert done.text_chars == len("Hello world")


def test_response_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    done = to_completion(anthropic_message(), "m")
    assert done.usage == Usage(
        prompt_tokens=1210, completion_tokens=25, cached_tokens=1000, cache_write_tokens=200
    )
    assert decoded(done.payload)["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 25,
        "total_tokens": 1235,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_creation_tokens": 200},
    }


def test_response_usage_without_cache_fields_counts_input_tokens_only() -> None:
    done = to_completion(anthropic_message(usage={"input_tokens": 7, "output_tokens": 3}), "m")
    assert done.usage == Usage(prompt_tokens=7, completion_tokens=3)


def test_response_tool_use_blocks_become_tool_calls_with_json_arguments() -> None:
    body = anthropic_message(
        content=[
            {
                "type": "tool_use",
                "id": "toolu_01A",
                "name": "get_weather",
                "input": {"city": "Paris"},
            }
        ],
        stop_reason="tool_use",
    )
    done = to_completion(body, "m")
    message = decoded(done.payload)["choices"][0]["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"] == "toolu_01A"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert done.finish_reason == "tool_calls"
    assert done.text_chars == len(call["function"]["arguments"])


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, None),
    ],
)
def test_stop_reason_maps_to_openai_finish_reason(
    stop_reason: str | None, expected: str | None
) -> None:
    assert finish_reason(stop_reason) == expected
    assert to_completion(anthropic_message(stop_reason=stop_reason), "m").finish_reason == expected


def test_malformed_response_raises_upstream_error() -> None:
    with pytest.raises(UpstreamError) as e:
        to_completion(b"<html>bad gateway</html>", "m", provider="anthropic")
    assert e.value.reason == "malformed"


# ---------------------------------------------------------------------------------------
# Stream
# ---------------------------------------------------------------------------------------

# A realistic Anthropic stream: text, then a tool call, with cache tokens in the usage.
STREAM_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 472, "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000, "output_tokens": 2}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Okay, let me"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": " check."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
        "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta",
                                       "partial_json": "{\"location\":"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": " \"Paris\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                       "stop_sequence": None}, "usage": {"output_tokens": 89}}),
    ("message_stop", {"type": "message_stop"}),
]  # fmt: skip


def run_stream(events: list[tuple[str, dict[str, Any]]]) -> tuple[StreamTranslator, list[Any]]:
    tr = StreamTranslator("claude-sonnet-4-20250514", created=1700000000)
    chunks: list[Any] = []
    for name, data in events:
        chunks.extend(json.loads(c) for c in tr.feed(name.encode(), json.dumps(data).encode()))
    return tr, chunks


def deltas(chunks: list[Any]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks]


def test_stream_first_chunk_announces_the_assistant_role() -> None:
    _, chunks = run_stream(STREAM_EVENTS)
    assert deltas(chunks)[0] == {"role": "assistant", "content": "", "refusal": None}


def test_stream_chunks_are_openai_chunks_sharing_one_id() -> None:
    _, chunks = run_stream(STREAM_EVENTS)
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "claude-sonnet-4-20250514" for c in chunks)
    assert all(c["created"] == 1700000000 for c in chunks)


def test_stream_text_deltas_become_content_deltas() -> None:
    _, chunks = run_stream(STREAM_EVENTS)
    assert "".join(d.get("content", "") for d in deltas(chunks)) == "Okay, let me check."


def test_stream_tool_use_becomes_tool_call_deltas_that_reassemble() -> None:
    _, chunks = run_stream(STREAM_EVENTS)
    calls = [tc for d in deltas(chunks) for tc in d.get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(tc["index"] == 0 for tc in calls)
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(arguments) == {"location": "Paris"}


def test_stream_ends_with_finish_reason_chunk_and_no_usage_chunk_is_yielded() -> None:
    tr, chunks = run_stream(STREAM_EVENTS)
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert all(c["choices"] for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("tool_calls") == 1
    assert tr.finish_reason == "tool_calls"


def test_stream_usage_adds_cache_tokens_and_final_output_tokens() -> None:
    tr, _ = run_stream(STREAM_EVENTS)
    assert tr.done
    assert tr.usage == Usage(
        prompt_tokens=2572, completion_tokens=89, cached_tokens=2000, cache_write_tokens=100
    )
    assert tr.usage_chunk is not None
    usage_chunk = decoded(tr.usage_chunk)
    assert usage_chunk == {
        "id": "chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "claude-sonnet-4-20250514",
        "choices": [],
        "usage": {
            "prompt_tokens": 2572,
            "completion_tokens": 89,
            "total_tokens": 2661,
            "prompt_tokens_details": {"cached_tokens": 2000, "cache_creation_tokens": 100},
        },
    }
    tr.end()  # a complete stream ends quietly


def test_stream_message_delta_usage_replaces_earlier_counts() -> None:
    events = [*STREAM_EVENTS[:-2]]
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                   "usage": {"input_tokens": 500, "cache_read_input_tokens": 2000,
                             "output_tokens": 90}}))  # fmt: skip
    events.append(("message_stop", {"type": "message_stop"}))
    tr, _ = run_stream(events)
    assert tr.usage == Usage(
        prompt_tokens=2600, completion_tokens=90, cached_tokens=2000, cache_write_tokens=100
    )


def test_stream_counts_text_and_argument_characters() -> None:
    tr, _ = run_stream(STREAM_EVENTS)
    assert tr.text_chars == len("Okay, let me check.") + len('{"location": "Paris"}')


def test_stream_usage_is_unknown_until_message_stop() -> None:
    tr, _ = run_stream(STREAM_EVENTS[:-1])
    assert tr.usage is None and tr.usage_chunk is None and not tr.done


def test_stream_cut_before_message_stop_raises_cut() -> None:
    tr, _ = run_stream(STREAM_EVENTS[:5])
    with pytest.raises(UpstreamError) as e:
        tr.end()
    assert e.value.reason == "cut"
    assert e.value.status == 502


def test_stream_error_event_mid_stream_raises_upstream_error() -> None:
    tr, _ = run_stream(STREAM_EVENTS[:4])
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamError) as e:
        tr.feed(b"error", json.dumps(error).encode())
    assert e.value.status == 502
    assert e.value.upstream_status == 529
    assert e.value.retryable
    assert "Overloaded" in e.value.message


def test_stream_ignores_unknown_events_and_deltas() -> None:
    _, chunks = run_stream(
        [
            STREAM_EVENTS[0],
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "signature_delta", "signature": "x"}}),
            ("future_event", {"type": "future_event", "whatever": 1}),
        ]
    )  # fmt: skip
    assert len(chunks) == 1


def test_stream_thinking_deltas_become_reasoning_content() -> None:
    _, chunks = run_stream(
        [
            STREAM_EVENTS[0],
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "thinking_delta", "thinking": "Hmm"}}),
        ]
    )  # fmt: skip
    assert deltas(chunks)[1] == {"reasoning_content": "Hmm"}


def test_stream_malformed_event_raises_upstream_error() -> None:
    tr = StreamTranslator("m")
    with pytest.raises(UpstreamError) as e:
        tr.feed(b"message_start", b"{not json")
    assert e.value.reason == "malformed"


# ---------------------------------------------------------------------------------------
# HTTP edge, against a local Anthropic-shaped server
# ---------------------------------------------------------------------------------------


def sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[tuple[Mapping[str, str], dict[str, Any]]] = []
        self.status = 200
        self.reply: bytes = anthropic_message()
        self.events: list[tuple[str, dict[str, Any]]] = STREAM_EVENTS

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.headers.copy(), body))  # case-insensitive
        if self.status != 200:
            return web.Response(
                status=self.status, body=self.reply, content_type="application/json"
            )
        if not body.get("stream"):
            return web.Response(body=self.reply, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        data = sse(self.events)
        for i in range(0, len(data), 97):  # split events across reads
            await resp.write(data[i : i + 97])
        return resp


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAnthropic, AnthropicProvider]]:
    upstream = FakeAnthropic()
    app = web.Application()
    app.router.add_post("/v1/messages", upstream.messages)
    server = TestServer(app)
    await server.start_server()
    config = ProviderConfig(protocol="anthropic", base_url=str(server.make_url("/")))
    provider = AnthropicProvider("anthropic", config, "sk-ant-test")
    await provider.start()
    try:
        yield upstream, provider
    finally:
        await provider.close()
        await server.close()


def user_call(stream: bool = False) -> ChatCall:
    return make_call(
        {"model": MODEL.id, "messages": [{"role": "user", "content": "Hi"}]}, stream=stream
    )


async def test_chat_posts_to_messages_with_anthropic_headers(
    fake: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    upstream, provider = fake
    done = await provider.chat(user_call())
    headers, body = upstream.requests[0]
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert body["model"] == "claude-sonnet-4-20250514"
    assert decoded(done.payload)["choices"][0]["message"]["content"] == "Hello world"
    assert done.usage is not None and done.usage.prompt_tokens == 1210


async def test_overloaded_upstream_maps_to_502_keeping_status_529(
    fake: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    upstream, provider = fake
    upstream.status = 529
    upstream.reply = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    with pytest.raises(UpstreamError) as e:
        await provider.chat(user_call())
    assert e.value.status == 502
    assert e.value.upstream_status == 529
    assert "Overloaded" in e.value.message
    assert e.value.retryable


async def test_invalid_request_from_upstream_passes_through_as_400(
    fake: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    upstream, provider = fake
    upstream.status = 400
    upstream.reply = (
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"messages: roles must alternate"}}'
    )
    with pytest.raises(UpstreamError) as e:
        await provider.chat(user_call())
    assert e.value.status == 400
    assert e.value.type == "invalid_request_error"
    assert "roles must alternate" in e.value.message
    assert not e.value.retryable


async def test_stream_yields_openai_chunks_and_keeps_usage_aside(
    fake: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    upstream, provider = fake
    stream = await provider.stream(user_call(stream=True))
    chunks = [json.loads(c) async for events in stream for c in payloads(events)]
    assert upstream.requests[0][1]["stream"] is True
    assert deltas(chunks)[0]["role"] == "assistant"
    assert all(c["choices"] for c in chunks)
    assert stream.finish_reason == "tool_calls"
    assert stream.usage is not None and stream.usage.completion_tokens == 89
    assert stream.usage_chunk is not None
    assert stream.text_chars == len("Okay, let me check.") + len('{"location": "Paris"}')


async def test_stream_closed_before_message_stop_raises_cut(
    fake: tuple[FakeAnthropic, AnthropicProvider],
) -> None:
    upstream, provider = fake
    upstream.events = STREAM_EVENTS[:5]
    stream = await provider.stream(user_call(stream=True))
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as e:
        async for events in stream:
            got += payloads(events)
    assert e.value.reason == "cut"
    assert len(got) == 3  # role, and the two text deltas that did arrive
