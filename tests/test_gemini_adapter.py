"""The Gemini translation without a network: request, response, stream events, errors."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import msgspec
import pytest

from proxy.catalog import Catalog
from proxy.config import load_settings
from proxy.errors import InvalidRequest, UpstreamError
from proxy.providers.base import ChatCall
from proxy.providers.gemini import StreamTranslator, build_request, google_error, to_completion
from proxy.providers.gemini.request import SIGNATURE_MARK
from proxy.providers.vertex import anthropic_body, publisher
from proxy.wire import Message, encode_raw

_CATALOG = Catalog(load_settings(env={}))
_MODEL = _CATALOG.get("gemini/gemini-2.5-flash")


def call(messages: list[dict[str, Any]], stream: bool = False, **fields: Any) -> ChatCall:
    raw = {k: encode_raw(v) for k, v in fields.items()}
    msgs = msgspec.convert(messages, list[Message])
    return ChatCall(_MODEL, raw, msgs, stream, fields.get("max_tokens"))


USER = [{"role": "user", "content": "hi"}]


def test_images_become_inline_data_and_urls_file_data() -> None:
    req = build_request(call([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]))
    assert req["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
    ]


def test_a_url_without_a_known_media_type_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        build_request(call([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/image"}}]}]))
    assert caught.value.param == "messages[0].content[0].image_url.url"


def test_a_tool_result_for_an_unknown_call_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        build_request(call([*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]))
    assert caught.value.param == "messages[1].tool_call_id"


def test_bad_response_format_and_reasoning_effort_are_400s() -> None:
    with pytest.raises(InvalidRequest, match=re.escape("json_schema.schema")):
        build_request(call(USER, response_format={"type": "json_schema", "json_schema": {}}))
    with pytest.raises(InvalidRequest, match=re.escape("response_format.type")):
        build_request(call(USER, response_format={"type": "yaml"}))
    with pytest.raises(InvalidRequest, match="reasoning_effort"):
        build_request(call(USER, reasoning_effort="maximal"))


def test_generation_config_maps_openai_parameters() -> None:
    req = build_request(call(USER, max_completion_tokens=100, top_p=0.9, n=2, seed=7,
                             stop="END", reasoning_effort="low", tool_choice="none"))
    assert req["generationConfig"] == {
        "maxOutputTokens": 100, "stopSequences": ["END"], "topP": 0.9, "candidateCount": 2,
        "seed": 7, "thinkingConfig": {"thinkingBudget": 1024}}
    assert "toolConfig" not in req  # no tools, no tool config


def test_thought_signature_rides_in_the_tool_call_id_and_comes_back() -> None:
    body = json.dumps({"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2lnbmF0dXJl"}]},
        "finishReason": "STOP"}]}).encode()
    completion = to_completion(body, "gemini-2.5-flash")
    choices = json.loads(bytes(completion.payload["choices"]))
    tool_call = choices[0]["message"]["tool_calls"][0]
    assert tool_call["id"].endswith(SIGNATURE_MARK + "c2lnbmF0dXJl")
    assert completion.finish_reason == "tool_calls"
    req = build_request(call([*USER,
                              {"role": "assistant", "tool_calls": [tool_call]},
                              {"role": "tool", "tool_call_id": tool_call["id"], "content": "ok"}]))
    assert req["contents"][1]["parts"][0] == {
        "functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2lnbmF0dXJl"}
    assert req["contents"][2]["parts"][0]["functionResponse"] == {
        "name": "f", "response": {"content": "ok"}}


def test_a_blocked_prompt_is_an_empty_content_filter_answer() -> None:
    body = (b'{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},'
            b'"usageMetadata":{"promptTokenCount":9}}')
    completion = to_completion(body, "m")
    assert completion.finish_reason == "content_filter"
    assert completion.usage is not None and completion.usage.prompt_tokens == 9


def test_candidates_become_choices_in_index_order() -> None:
    body = json.dumps({"candidates": [
        {"index": 1, "content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"},
        {"index": 0, "content": {"parts": [{"text": "a"}]}, "finishReason": "MAX_TOKENS"},
    ]}).encode()
    choices = json.loads(bytes(to_completion(body, "m").payload["choices"]))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "a", "length"), (1, "b", "stop")]


def test_usage_counts_thinking_as_output_and_tool_prompts_as_input() -> None:
    body = json.dumps({"candidates": [{"content": {"parts": [{"text": "x"}]},
                                       "finishReason": "STOP"}],
                       "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 5,
                                         "thoughtsTokenCount": 50, "toolUsePromptTokenCount": 20,
                                         "cachedContentTokenCount": 64}}).encode()
    usage = to_completion(body, "m").usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (120, 55, 64)


def test_a_body_that_is_not_a_response_is_a_malformed_502() -> None:
    with pytest.raises(UpstreamError) as caught:
        to_completion(b'{"candidates": "nope"}', "m")
    assert caught.value.reason == "malformed"
    with pytest.raises(UpstreamError):
        to_completion(b"{}", "m")  # no candidate and no block: nothing to answer with


def test_retry_delay_and_key_refusals_are_read_from_googles_error_body() -> None:
    throttled = google_error("g", 429, json.dumps({"error": {
        "code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]}}
    ).encode())
    assert throttled.status == 429 and throttled.retry_after == 2.5
    bad_key = google_error("g", 400, json.dumps({"error": {
        "code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}
    ).encode())
    assert (bad_key.status, bad_key.code, bad_key.upstream_status) == (
        502, "provider_auth_failed", 401)
    hostile = google_error("g", 429, json.dumps({"error": {"details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "nan"}]}}).encode())
    assert hostile.status == 429 and hostile.retry_after is None  # the gateway's own wait
    not_json = google_error("g", 503, b"<html>Service Unavailable</html>")
    assert not_json.status == 502 and not_json.upstream_status == 503


def test_stream_translator_takes_the_last_usage_and_needs_a_finish_reason() -> None:
    tr = StreamTranslator("m", created=1)
    first = tr.feed(b'{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}],'
                    b'"usageMetadata":{"promptTokenCount":4},"responseId":"r1"}')
    assert [json.loads(c)["choices"][0]["delta"] for c in first] == [
        {"role": "assistant", "content": "", "refusal": None}, {"content": "Hel"}]
    with pytest.raises(UpstreamError, match="ended early"):
        StreamTranslator("m").end()
    tr.feed(b'{"candidates":[{"content":{"parts":[{"text":"lo"}]},"finishReason":"STOP"}],'
            b'"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,'
            b'"thoughtsTokenCount":3}}')
    tr.end()
    assert tr.usage is not None and (tr.usage.prompt_tokens, tr.usage.completion_tokens) == (4, 5)
    assert tr.usage_chunk is not None and json.loads(bytes(tr.usage_chunk["id"])) == "chatcmpl-r1"


def test_stream_error_event_maps_by_its_canonical_status() -> None:
    with pytest.raises(UpstreamError) as caught:
        StreamTranslator("m").feed(
            b'{"error":{"code":429,"message":"slow","status":"RESOURCE_EXHAUSTED"}}')
    assert caught.value.status == 429


def test_vertex_publisher_follows_the_upstream_id_unless_set() -> None:
    assert publisher(_CATALOG.get("vertex/claude-sonnet-4-5")) == "anthropic"
    assert publisher(_CATALOG.get("vertex/gemini-2.5-flash")) == "google"
    pinned = dataclasses.replace(_CATALOG.get("vertex/gemini-2.5-flash"), publisher="anthropic")
    assert publisher(pinned) == "anthropic"


def test_vertex_anthropic_body_has_the_version_and_no_model() -> None:
    model = _CATALOG.get("vertex/claude-haiku-4-5")
    c = ChatCall(model, {}, msgspec.convert(USER, list[Message]), False, 10)
    body = json.loads(anthropic_body(c))
    assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
    assert body["max_tokens"] == 10
