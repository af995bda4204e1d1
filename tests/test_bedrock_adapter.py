"""The Bedrock adapter's pure parts, without a network: request translation, AWS's error
names, the stream translator's edges, the settings, and what signing and decoding cost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from botocore.eventstream import EventStreamBuffer
from fakes.bedrock_server import event_frame, exception_frame
from harness import gateway_settings

from proxy.catalog import Model
from proxy.config import ConfigError, ProviderConfig, load_settings
from proxy.errors import InvalidRequest, UpstreamError
from proxy.providers.base import ChatCall
from proxy.providers.bedrock import (
    BedrockProvider,
    ConverseTranslator,
    Signer,
    bedrock_error,
    build_request,
)
from proxy.providers.redact import PATTERNS_ONLY
from proxy.wire import Message, encode_raw

MODEL = Model(id="bedrock/claude", provider="bedrock-eu",
              upstream="eu.anthropic.claude-sonnet-4-5-20250929-v1:0", kind="chat",
              owned_by="anthropic", context_window=200000, max_output_tokens=64000,
              input_nano=3_300_000_000, output_nano=16_500_000_000, cached_input_nano=330_000_000,
              cache_write_nano=4_125_000_000,
              input_price=3.30, output_price=16.50)


def call(messages: list[dict[str, Any]], **fields: Any) -> ChatCall:
    msgs = msgspec.convert(messages, list[Message])
    raw = {name: encode_raw(value) for name, value in fields.items()}
    return ChatCall(MODEL, raw, msgs, stream=False, max_tokens=fields.get("max_tokens"))


USER = [{"role": "user", "content": "Hi"}]


def test_max_tokens_defaults_to_the_model_s_output_limit() -> None:
    assert build_request(call(USER))["inferenceConfig"] == {"maxTokens": 64000}


def test_images_and_documents_go_as_base64_bytes() -> None:
    req = build_request(call([{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "file", "file": {"filename": "Q3 report (final).pdf",
                                  "file_data": "data:application/pdf;base64,JVBERi0x"}},
    ]}]))
    blocks = req["messages"][0]["content"]
    assert blocks[1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert blocks[2] == {"document": {"format": "pdf", "name": "Q3 report (final) pdf",
                                      "source": {"bytes": "JVBERi0x"}}}


@pytest.mark.parametrize(("content", "param"), [
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
     "messages[0].content[0].image_url.url"),
    ([{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}],
     "messages[0].content[0].image_url.url"),
    ([{"type": "input_audio", "input_audio": {}}], "messages[0].content[0].type"),
])
def test_what_converse_cannot_take_is_a_400_naming_the_part(
    content: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        build_request(call([{"role": "user", "content": content}]))
    assert refused.value.param == param


def test_a_conversation_that_does_not_start_with_the_user_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="start with a `user` message"):
        build_request(call([{"role": "system", "content": "x"},
                            {"role": "assistant", "content": "y"}]))


def test_n_other_than_one_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="`n` must be 1"):
        build_request(call(USER, n=2))


def test_tool_choice_none_drops_the_tools_unless_the_conversation_used_them() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert "toolConfig" not in build_request(call(USER, tools=tools, tool_choice="none"))
    used: list[dict[str, Any]] = [*USER, {"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t", "content": ""}]
    req = build_request(call(used, tools=tools, tool_choice="none"))
    assert req["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "f", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]}
    # Converse refuses blank text: an empty tool result is said as such.
    assert req["messages"][2]["content"][0]["toolResult"]["content"] == [{"text": "(empty)"}]


def test_named_tool_choice_and_json_object_format() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    req = build_request(call(USER, tools=tools,
                             tool_choice={"type": "function", "function": {"name": "f"}},
                             response_format={"type": "json_object"}))
    assert req["toolConfig"]["toolChoice"] == {"tool": {"name": "f"}}
    schema = req["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert schema == {"name": "json_object", "schema": '{"type":"object"}'}


def test_auto_cache_marks_the_end_of_the_system_prompt() -> None:
    c = call([{"role": "system", "content": "Long rules"}, *USER])
    c.auto_cache = True
    assert build_request(c)["system"] == [
        {"text": "Long rules"}, {"cachePoint": {"type": "default"}}]


@pytest.mark.parametrize(("header", "status", "client", "code"), [
    ("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/", 429, 429,
     "upstream_rate_limited"),
    ("ServiceQuotaExceededException:http://internal", 400, 429, "upstream_rate_limited"),
    ("AccessDeniedException:http://internal", 403, 502, "provider_auth_failed"),
    ("ExpiredTokenException:http://internal", 400, 502, "provider_auth_failed"),
    ("ValidationException:http://internal", 400, 400, "ValidationException"),
    ("ResourceNotFoundException:http://internal", 404, 404, "ResourceNotFoundException"),
    ("ModelErrorException:http://internal", 424, 502, "upstream_error"),
    ("ModelTimeoutException:http://internal", 408, 502, "upstream_error"),
])
def test_aws_error_names_decide_the_client_s_status(
    header: str, status: int, client: int, code: str
) -> None:
    err = bedrock_error("bedrock-eu", status, b'{"message":"why"}', {"x-amzn-errortype": header},
                        PATTERNS_ONLY)
    assert (err.status, err.code) == (client, code)
    assert err.message.endswith("why") or code == "provider_auth_failed"


def test_an_error_body_s_type_names_the_exception_without_the_header() -> None:
    err = bedrock_error("b", 400,
                        b'{"__type":"com.amazon.coral#ThrottlingException","message":"slow"}',
                        {}, PATTERNS_ONLY)
    assert err.status == 429


def feed_all(tr: ConverseTranslator, raw: bytes) -> list[bytes]:
    buf = EventStreamBuffer()
    buf.add_data(raw)
    out: list[bytes] = []
    for message in buf:
        # botocore-stubs types `headers` as int; botocore sets the parsed header dict.
        out += tr.feed(cast("dict[str, Any]", message.headers), message.payload)
    return out


def test_a_stream_without_metadata_ends_whole_with_usage_left_to_estimate() -> None:
    tr = ConverseTranslator("m", "bedrock-eu", PATTERNS_ONLY, "rid")
    chunks = feed_all(tr, event_frame("messageStart", {"role": "assistant"})
                      + event_frame("contentBlockDelta",
                                    {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
                      + event_frame("messageStop", {"stopReason": "end_turn"}))
    assert len(chunks) == 3 and tr.finish_reason == "stop" and not tr.done
    tr.end()
    assert tr.done and tr.usage is None and tr.text_chars == 2


def test_a_stream_cut_before_message_stop_is_an_error() -> None:
    tr = ConverseTranslator("m", "bedrock-eu", PATTERNS_ONLY)
    feed_all(tr, event_frame("messageStart", {"role": "assistant"}))
    with pytest.raises(UpstreamError, match="ended early"):
        tr.end()


def test_an_exception_frame_is_mapped_like_the_same_error_as_an_answer() -> None:
    tr = ConverseTranslator("m", "bedrock-eu", PATTERNS_ONLY)
    with pytest.raises(UpstreamError) as broke:
        feed_all(tr, exception_frame("modelStreamErrorException", "The model stopped"))
    assert broke.value.upstream_status == 500 and "The model stopped" in broke.value.message


def test_reasoning_deltas_become_reasoning_content() -> None:
    tr = ConverseTranslator("m", "bedrock-eu", PATTERNS_ONLY)
    (chunk,) = feed_all(tr, event_frame("contentBlockDelta", {
        "contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Think"}}}))
    assert msgspec.json.decode(chunk)["choices"][0]["delta"] == {"reasoning_content": "Think"}


def test_the_default_endpoint_is_the_region_s_and_the_model_id_one_encoded_segment() -> None:
    cfg = ProviderConfig(protocol="bedrock", aws_region="eu-central-1")
    p = BedrockProvider("b", cfg, None, env={})
    assert p._url(MODEL.upstream, "converse") == (
        "https://bedrock-runtime.eu-central-1.amazonaws.com/model/"
        "eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse")


@pytest.mark.parametrize(("provider", "problem"), [
    ('protocol = "bedrock"', "key `providers.p.aws_region`: is required"),
    ('protocol = "bedrock"\naws_region = "Frankfurt"',
     "key `providers.p.aws_region`: must be an AWS region"),
    ('protocol = "openai"\nbase_url = "https://x"\naws_region = "eu-central-1"',
     'key `providers.p.aws_region`: applies only to protocol "bedrock"'),
    ('protocol = "bedrock"\naws_region = "eu-central-1"\nbase_url = "ftp://x"',
     "key `providers.p.base_url`: must be an http"),
])
def test_bedrock_settings_are_checked_at_load_naming_the_key(
    tmp_path: Path, provider: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        gateway_settings(tmp_path, f"[providers.p]\n{provider}\n")


def test_a_bedrock_provider_needs_no_base_url(tmp_path: Path) -> None:
    settings = gateway_settings(
        tmp_path, '[providers.p]\nprotocol = "bedrock"\naws_region = "eu-central-1"\n')
    assert settings.providers["p"].aws_region == "eu-central-1"


def test_signing_and_frame_decoding_cost_is_measured_not_assumed() -> None:
    """Not a timing assertion: it records what botocore costs per request and per frame,
    so that the choice of library (signing.py) stays an informed one. The bounds only
    catch a pathological regression (a thousand times slower)."""
    signer = Signer("eu-central-1", "AKIAIOSFODNN7EXAMPLE", "secret", None)
    url = "https://bedrock-runtime.eu-central-1.amazonaws.com/model/x%3A0/converse"
    start = time.perf_counter()
    for _ in range(200):
        signer.headers(url, b"{}" * 100, {"Content-Type": "application/json"})
    per_sign = (time.perf_counter() - start) / 200
    frame = event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " w"}})
    buf = EventStreamBuffer()
    start = time.perf_counter()
    for _ in range(1000):
        buf.add_data(frame)
        for _message in buf:
            pass
    per_frame = (time.perf_counter() - start) / 1000
    assert per_sign < 0.05 and per_frame < 0.01


def test_eu_deploy_serves_gpt_through_azure_and_claude_through_bedrock_eu_profiles() -> None:
    deploy = Path(__file__).resolve().parent.parent / "deploy" / "eu.toml"
    settings = load_settings(str(deploy), env={"PROXY_ADMIN_KEY": "x"})
    eu = {m.id: m for m in settings.models if "eu" in settings.providers[m.provider].regions}
    azure = [m for m in eu.values() if settings.providers[m.provider].protocol == "azure"]
    bedrock = [m for m in eu.values() if settings.providers[m.provider].protocol == "bedrock"]
    assert {m.upstream for m in azure} >= {"gpt-4.1"} and len({m.provider for m in azure}) == 2
    assert bedrock and all(m.upstream.startswith("eu.anthropic.") for m in bedrock)
    assert {settings.providers[m.provider].aws_region for m in bedrock} == {"eu-central-1"}
    assert all(settings.providers[m.provider].regions == ("eu",) for m in [*azure, *bedrock])


def test_an_eventstream_error_frame_is_an_error_with_its_message() -> None:
    from fakes.bedrock_server import encode_frame

    tr = ConverseTranslator("m", "bedrock-eu", PATTERNS_ONLY)
    frame = encode_frame({":message-type": "error", ":error-code": "InternalFailure",
                          ":error-message": "The stream failed"}, b"")
    with pytest.raises(UpstreamError) as broke:
        feed_all(tr, frame)
    assert "The stream failed" in broke.value.message and broke.value.status == 502
