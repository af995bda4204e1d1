"""OpenAI Responses <-> Chat Completions: the pure translation layer (proxy/dialects/responses).

Requests are built by the official `openai` SDK (its body captured by an in-process
httpx2 transport: no network); every `response` object and stream event the translator
makes is validated with the SDK's own types, and streams are read back through the
SDK's `responses.stream` helper, which checks item identities as a real client does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, get_args

import httpx2 as httpx  # the SDKs' HTTP client, installed with them
import msgspec
import openai
import pytest
from msgspec import Raw
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from proxy.catalog import Model
from proxy.dialects.responses import (
    ResponsesRequest,
    ResponsesStream,
    parse_request,
    to_chat,
    to_response,
)
from proxy.errors import InvalidRequest, UpstreamError
from proxy.providers.anthropic import build_request
from proxy.providers.base import ChatCall
from proxy.providers.sse import SSEParser
from proxy.wire import Message, decode_body, required

MODEL = "gpt-5-mini"
# Each event type's own SDK class (validating against the whole union reports every
# member's mismatch, which hides the one that matters).
EVENT_CLASS: dict[str, type[BaseModel]] = {
    get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in get_args(get_args(ResponseStreamEvent)[0])
}
WEATHER: Any = {"type": "function", "name": "weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}, "strict": True}


def sdk_client(handler: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def sdk_body(**params: Any) -> bytes:
    """The exact body the OpenAI SDK sends for `responses.create(**params)`."""
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(400, json={"error": {"message": "captured",
                                                   "type": "invalid_request_error"}})

    with pytest.raises(openai.BadRequestError):
        sdk_client(handler).responses.create(**params)
    return sent[0]


def req_of(body: dict[str, Any]) -> ResponsesRequest:
    return parse_request(msgspec.json.encode({"model": MODEL, **body}))


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    return to_chat(req_of(body))


def refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as e:
        chat_of(body)
    assert e.value.status == 400
    return e.value


def events(sse: bytes) -> list[dict[str, Any]]:
    """The events' data; checks each `event:` name matches and each validates as an SDK
    stream event."""
    out = []
    for name, data in SSEParser().feed(sse):
        payload = json.loads(data)
        assert name is not None and payload["type"] == name.decode()
        EVENT_CLASS[payload["type"]].model_validate(payload)
        out.append(payload)
    return out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"id": "chatcmpl-abc", "object": "chat.completion.chunk",
                         "created": 1, "model": "gpt-x", "choices": []}
    if delta is not None or finish is not None:
        c["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        c["usage"] = usage
    return c


def completion(message: dict[str, Any], finish: str = "stop",
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}


# ---------------------------------------------------------------------------------------
# request
# ---------------------------------------------------------------------------------------


def test_request_string_input_and_instructions_from_sdk() -> None:
    body = sdk_body(model=MODEL, input="hi", instructions="Be brief.", max_output_tokens=64,
                    temperature=0.3, top_p=0.8, user="u-1", metadata={"team": "a"},
                    store=False, parallel_tool_calls=False)
    assert to_chat(parse_request(body)) == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"}],
        "max_completion_tokens": 64, "temperature": 0.3, "top_p": 0.8,
        "parallel_tool_calls": False, "user": "u-1",
        "requesty": {"user_id": "u-1", "extra": {"team": "a"}},
    }


def test_request_items_with_images_files_and_roles() -> None:
    body = sdk_body(model=MODEL, input=[
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,QUJD", "detail": "low"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE",
             "filename": "a.pdf"}]},
        {"role": "assistant", "content": "A cat."},
    ])
    assert to_chat(parse_request(body))["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD",
                                                "detail": "low"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                      "filename": "a.pdf"}}]},
        {"role": "assistant", "content": "A cat."},
    ]


def test_request_function_calls_join_the_assistant_message_and_outputs_become_tool_messages() -> None:  # noqa: E501 - the name is the behaviour
    body = sdk_body(model=MODEL, tools=[WEATHER], input=[
        {"role": "user", "content": "Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "weather",
         "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "21C"}]},
    ])
    chat = to_chat(parse_request(body))
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather now", "parameters": WEATHER["parameters"],
        "strict": True}}]


def test_request_function_call_without_a_preceding_assistant_message() -> None:
    chat = chat_of({"input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"}]})
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]


def test_request_function_output_images_follow_the_tool_message() -> None:
    chat = chat_of({"input": [
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_text", "text": "taken"},
            {"type": "input_image", "image_url": "https://x.test/s.png"}]}]})
    assert chat["messages"][1:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "taken"},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "https://x.test/s.png"}}]},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "weather"},
     {"type": "function", "function": {"name": "weather"}}),
])
def test_request_tool_choice_maps_to_chat(choice: Any, expected: Any) -> None:
    assert chat_of({"input": "x", "tools": [WEATHER], "tool_choice": choice})["tool_choice"] \
        == expected


def test_request_text_format_json_schema_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    body = sdk_body(model=MODEL, input="x", text={"format": {
        "type": "json_schema", "name": "thing", "schema": schema, "strict": True},
        "verbosity": "low"}, reasoning={"effort": "low", "summary": "auto"})
    chat = to_chat(parse_request(body))
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}}
    assert (chat["verbosity"], chat["reasoning_effort"]) == ("low", "low")


def test_request_text_format_json_object_and_text() -> None:
    assert chat_of({"input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in chat_of({"input": "x", "text": {"format": {"type": "text"}}})


def test_request_stream_asks_upstream_for_the_usage_chunk() -> None:
    chat = chat_of({"input": "x", "stream": True})
    assert (chat["stream"], chat["stream_options"]) == (True, {"include_usage": True})


def test_request_advisory_fields_are_dropped() -> None:
    chat = chat_of({"input": "x", "store": True, "include": ["reasoning.encrypted_content"],
                    "truncation": "auto", "stream_options": {"include_obfuscation": False},
                    "context_management": [{"type": "compaction", "compact_threshold": 1000}]})
    assert set(chat) == {"model", "messages"}


def test_refuses_previous_response_id_naming_it() -> None:
    err = refused({"input": "x", "previous_response_id": "resp_123"})
    assert err.param == "previous_response_id"
    assert "previous_response_id" in err.message and "not supported" in err.message


@pytest.mark.parametrize(("field", "value"), [
    ("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"}), ("background", True),
    ("top_logprobs", 3), ("max_tool_calls", 2),
])
def test_refuses_fields_needing_state_or_hosted_features(field: str, value: Any) -> None:
    assert refused({"input": "x", field: value}).param == field


def test_refuses_unknown_field_naming_it() -> None:
    assert "frobnicate" in refused({"input": "x", "frobnicate": 1}).message


@pytest.mark.parametrize("tool", [
    {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs"]},
    {"type": "custom", "name": "c"},
])
def test_refuses_hosted_and_custom_tools(tool: dict[str, Any]) -> None:
    err = refused({"input": "x", "tools": [tool]})
    assert err.param == "tools[0].type" and tool["type"] in err.message


@pytest.mark.parametrize("item", [
    {"type": "item_reference", "id": "msg_1"},
    {"type": "web_search_call", "id": "ws_1", "status": "completed"},
])
def test_refuses_items_needing_storage_or_hosted_tools(item: dict[str, Any]) -> None:
    assert refused({"input": [item]}).param == "input[0].type"


def test_refuses_a_file_id_naming_where() -> None:
    err = refused({"input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file_1"}]}]})
    assert err.param == "input[0].content[0].file_id"


def test_refuses_a_bad_item_naming_where() -> None:
    err = refused({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]})
    assert err.param == "input[0]" and "arguments" in err.message
    err = refused({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]})
    assert err.param == "input[0].content[0].type"


def test_refuses_json_schema_without_a_schema() -> None:
    assert refused({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}
                   ).param == "text.format"


def test_refuses_max_output_tokens_below_one_and_empty_input() -> None:
    assert refused({"input": "x", "max_output_tokens": 0}).param == "max_output_tokens"
    assert refused({"input": []}).param == "input"


# ---------------------------------------------------------------------------------------
# response
# ---------------------------------------------------------------------------------------


def test_response_text_and_usage_validate_as_sdk_response() -> None:
    req = req_of({"input": "hi", "instructions": "brief", "tools": [WEATHER]})
    out = to_response(completion({"content": "Hello"}, usage={
        "prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109,
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 4}}), req)
    resp = Response.model_validate(out)
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.incomplete_details is None
    assert resp.output_text == "Hello" and resp.model == MODEL
    assert resp.instructions == "brief" and resp.tools[0].type == "function"
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == \
        (100, 9, 109)
    assert resp.usage.input_tokens_details.cached_tokens == 40
    assert resp.usage.output_tokens_details.reasoning_tokens == 4


def test_response_length_is_incomplete_with_max_output_tokens() -> None:
    out = to_response(completion({"content": "Hel"}, "length"),
                      req_of({"input": "x", "max_output_tokens": 3}))
    resp = Response.model_validate(out)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].type == "message" and resp.output[0].status == "incomplete"


def test_response_tool_calls_become_function_call_items() -> None:
    out = to_response(completion({"content": None, "reasoning_content": "think", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls"),
        req_of({"input": "x", "tools": [WEATHER]}))
    resp = Response.model_validate(out)
    assert [i.type for i in resp.output] == ["reasoning", "function_call"]
    call = resp.output[1]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "weather", '{"city":"Paris"}')
    assert resp.status == "completed"


def test_response_function_call_round_trips_through_the_next_request() -> None:
    out = to_response(completion({"content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls"),
        req_of({"input": "x"}))
    resp = Response.model_validate(out)
    items = [i.model_dump(exclude_none=True) for i in resp.output]
    body = sdk_body(model=MODEL, input=[{"role": "user", "content": "weather?"}, *items,
                                        {"type": "function_call_output", "call_id": "call_1",
                                         "output": "18C"}])
    assert to_chat(parse_request(body))["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]


def test_response_structured_output_parsed_by_the_sdk() -> None:
    class Thing(BaseModel):
        a: int

    def handler(request: httpx.Request) -> httpx.Response:
        req = parse_request(request.content)
        chat = to_chat(req)
        assert chat["response_format"]["type"] == "json_schema"
        out = to_response(completion({"content": '{"a": 7}'}), req)
        return httpx.Response(200, content=msgspec.json.encode(out),
                              headers={"content-type": "application/json"})

    parsed = sdk_client(handler).responses.parse(model=MODEL, input="x", text_format=Thing)
    assert parsed.output_parsed == Thing(a=7)


def test_response_without_a_choice_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        to_response({"id": "x", "choices": []}, req_of({"input": "x"}))


# ---------------------------------------------------------------------------------------
# stream
# ---------------------------------------------------------------------------------------


TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    chunk(usage={"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
                 "prompt_tokens_details": {"cached_tokens": 2}}),
]


def feed_all(tr: ResponsesStream, chunks: list[dict[str, Any]]) -> list[bytes]:
    return [tr.feed(c) for c in chunks] + [tr.finish()]


def test_stream_text_events_in_openais_order_with_sequence_numbers() -> None:
    evs = events(b"".join(feed_all(ResponsesStream(req_of({"input": "x"}), MODEL),
                                   TEXT_STREAM)))
    assert [e["type"] for e in evs] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert evs[6]["text"] == "Hello"
    done = Response.model_validate(evs[-1]["response"])
    assert done.status == "completed" and done.output_text == "Hello"
    assert done.usage is not None and done.usage.input_tokens_details.cached_tokens == 2


def test_stream_each_chunk_yields_its_events_at_once() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    per_chunk = [[e["type"] for e in events(b)] for b in feed_all(tr, TEXT_STREAM)]
    assert per_chunk == [
        ["response.created", "response.in_progress"],
        ["response.output_item.added", "response.content_part.added",
         "response.output_text.delta"],
        ["response.output_text.delta"],
        ["response.output_text.done", "response.content_part.done",
         "response.output_item.done"],
        ["response.completed"],
        [],
    ]


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


def test_stream_tool_calls_become_function_call_items_with_argument_deltas() -> None:
    evs = events(b"".join(feed_all(ResponsesStream(req_of({"input": "x"}), MODEL),
                                   TOOL_STREAM)))
    added = [e["item"]["type"] for e in evs if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message", "function_call", "function_call"]
    deltas = [e["delta"] for e in evs if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"city":', '"Paris"}', "{}"]
    args = [e["arguments"] for e in evs if e["type"] == "response.function_call_arguments.done"]
    assert args == ['{"city":"Paris"}', "{}"]
    final = Response.model_validate(evs[-1]["response"])
    assert [i.type for i in final.output] == ["reasoning", "message", "function_call",
                                              "function_call"]


def test_stream_read_by_the_sdk_stream_helper() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        tr = ResponsesStream(parse_request(request.content), MODEL)
        return httpx.Response(200, content=b"".join(feed_all(tr, TOOL_STREAM)),
                              headers={"content-type": "text/event-stream"})

    client = sdk_client(handler)
    with client.responses.stream(model=MODEL, input="x", tools=[WEATHER]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Let me check."
    calls = [i for i in final.output if i.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "weather", '{"city":"Paris"}'), ("call_b", "time", "{}")]
    assert final.usage is not None and final.usage.total_tokens == 31


def test_stream_length_ends_with_response_incomplete() -> None:
    tr = ResponsesStream(req_of({"input": "x", "max_output_tokens": 1}), MODEL)
    tr.feed(chunk({"content": "H"}))
    evs = events(tr.feed(chunk({}, "length", usage={"prompt_tokens": 3,
                                                   "completion_tokens": 1})))
    assert [e["type"] for e in evs] == ["response.output_text.done",
                                        "response.content_part.done",
                                        "response.output_item.done", "response.incomplete"]
    assert evs[2]["item"]["status"] == "incomplete"
    resp = Response.model_validate(evs[-1]["response"])
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert tr.done and tr.finish() == b""


def test_stream_without_usage_completes_at_the_end_of_the_stream() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    tr.feed(chunk({"content": "x"}))
    tr.feed(chunk({}, "stop"))
    evs = events(tr.finish())
    assert [e["type"] for e in evs] == ["response.completed"]
    assert evs[0]["response"]["usage"]["total_tokens"] == 0


def test_stream_cut_before_a_finish_reason_is_an_upstream_error() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    tr.feed(chunk({"content": "x"}))
    with pytest.raises(UpstreamError) as e:
        tr.finish()
    assert e.value.reason == "cut"


def test_stream_failure_after_start_is_error_then_response_failed() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    first = tr.feed(chunk({"content": "x"}))
    evs = events(first + tr.error(UpstreamError("upstream went away")))
    assert [e["type"] for e in evs][-2:] == ["error", "response.failed"]
    failed = Response.model_validate(evs[-1]["response"])
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error"
    assert tr.feed(chunk({"content": "late"})) == b""


def test_stream_ids_are_stable_across_lifecycle_events() -> None:
    evs = events(b"".join(feed_all(ResponsesStream(req_of({"input": "x"}), MODEL),
                                   TEXT_STREAM)))
    ids = {e["response"]["id"] for e in evs if "response" in e}
    assert len(ids) == 1
    item_ids = {e.get("item_id") or e["item"]["id"] for e in evs
                if "item_id" in e or "item" in e}
    assert len(item_ids) == 1


def test_stream_whole_tool_calls_all_at_index_zero_stay_separate() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    tr.feed(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "a", "arguments": '{"x":1}'}}]}))
    tr.feed(chunk({"tool_calls": [{"index": 0, "id": "call_2", "type": "function",
                                   "function": {"name": "b", "arguments": '{"y":2}'}}]}))
    evs = events(tr.feed(chunk({}, "tool_calls", usage={"prompt_tokens": 1,
                                                       "completion_tokens": 1})))
    final = Response.model_validate(evs[-1]["response"])
    calls = [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"]
    assert calls == [("call_1", "a", '{"x":1}'), ("call_2", "b", '{"y":2}')]


def test_refuses_an_orphan_function_call_output_naming_it() -> None:
    err = refused({"input": [
        {"role": "user", "content": "q"},
        {"type": "function_call_output", "call_id": "call_9", "output": "?"}]})
    assert err.param == "input[1].call_id" and "call_9" in err.message


def test_refuses_a_function_call_left_without_output() -> None:
    err = refused({"input": [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "ok"}]})
    assert err.param == "input[1].call_id" and "c1" in err.message


# ---------------------------------------------------------------------------------------
# the chat body is what the chat path takes, down to the Anthropic adapter
# ---------------------------------------------------------------------------------------


def test_chat_body_goes_through_the_chat_paths_decoding_and_the_anthropic_adapter() -> None:
    claude = Model(id="anthropic/claude", provider="anthropic", upstream="claude-x",
                   kind="chat", owned_by="anthropic", context_window=200_000,
                   max_output_tokens=8192, input_nano=1, output_nano=1, cached_input_nano=1,
                   cache_write_nano=1, input_price=0.0, output_price=0.0)
    chat = chat_of({"instructions": "brief", "tools": [WEATHER], "max_output_tokens": 99,
                    "text": {"format": {"type": "json_object"}}, "input": [
                        {"role": "user", "content": "Paris?"},
                        {"type": "function_call", "call_id": "c1", "name": "weather",
                         "arguments": '{"city":"Paris"}'},
                        {"type": "function_call_output", "call_id": "c1", "output": "18C"}]})
    chat.pop("response_format")  # not yet honoured by the Anthropic adapter (issue 17, item 4)
    fields: dict[str, Raw] = decode_body(msgspec.json.encode(chat))
    messages = required(fields, "messages", list[Message])
    anthropic_req = build_request(ChatCall(claude, fields, messages, False, None))
    assert anthropic_req["system"] == "brief" and anthropic_req["max_tokens"] == 99
    assert anthropic_req["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1",
                                      "content": "18C"}]},
    ]


def test_stream_refusal_is_a_message_with_a_refusal_part() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    out = b"".join([tr.feed(chunk({"role": "assistant", "refusal": "I can"})),
                    tr.feed(chunk({"refusal": "not."})),
                    tr.feed(chunk({}, "stop", usage={"prompt_tokens": 1,
                                                     "completion_tokens": 2}))])
    evs = events(out)
    kinds = [e["type"] for e in evs]
    assert kinds[2:] == [
        "response.output_item.added", "response.content_part.added",
        "response.refusal.delta", "response.refusal.delta", "response.refusal.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert evs[6]["refusal"] == "I cannot."
    final = Response.model_validate(evs[-1]["response"])
    assert final.output[0].type == "message"
    part = final.output[0].content[0]
    assert part.type == "refusal" and part.refusal == "I cannot."


def test_stream_items_closed_before_a_cut_stay_completed() -> None:
    tr = ResponsesStream(req_of({"input": "x", "max_output_tokens": 5}), MODEL)
    tr.feed(chunk({"reasoning_content": "hmm"}))
    tr.feed(chunk({"content": "Hel"}))
    evs = events(tr.feed(chunk({}, "length", usage={"prompt_tokens": 1,
                                                   "completion_tokens": 5})))
    Response.model_validate(evs[-1]["response"])
    assert [(i["type"], i["status"]) for i in evs[-1]["response"]["output"]] == [
        ("reasoning", "completed"), ("message", "incomplete")]


def test_stream_many_deltas_join_into_the_done_text() -> None:
    tr = ResponsesStream(req_of({"input": "x"}), MODEL)
    for _ in range(2000):
        tr.feed(chunk({"content": "ab"}))
    evs = events(tr.feed(chunk({}, "stop", usage={"prompt_tokens": 1,
                                                 "completion_tokens": 1})))
    assert evs[0]["type"] == "response.output_text.done" and evs[0]["text"] == "ab" * 2000
