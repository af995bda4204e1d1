"""Chat through the gateway to a fake Bedrock Runtime (tests/fakes/bedrock_server.py, proven
faithful to boto3 in tests/test_bedrock_fake.py): every request signed, every stream real
eventstream frames."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloud_ledger import FAST_LEDGER, ledger_row
from conftest import UPSTREAM_SECRET
from fakes import Cut, ErrorEvent, Fail, FakeAnthropic, FakeBedrock, Gate, Reply
from fakes.bedrock_server import ACCESS_KEY, SECRET_KEY
from harness import Gateway, gateway_settings, running_gateway
from openai.types.chat import ChatCompletionMessageParam
from sse_reading import (
    contents_released_one_by_one,
    json_events,
    sdk_stream,
    sdk_text,
    streamed_text,
)

MODEL_ID = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Frankfurt?"},
]
# The same conversation as the openai SDK's parameter type, for its typed `create`.
SDK_CONVERSATION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Frankfurt?"},
]
TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
PRICES = {"input": 3.30, "cached": 0.33, "write": 4.125, "output": 16.50}


def bedrock_toml(bedrock: str, anthropic: str) -> str:
    return f"""
[providers.bedrock-eu]
protocol = "bedrock"
base_url = "{bedrock}"
aws_region = "eu-central-1"
regions = ["eu", "global"]
timeout_s = 10
first_byte_timeout_s = 5

[providers.direct]
protocol = "anthropic"
base_url = "{anthropic}"
api_key_env = "FAKE_ANTHROPIC_KEY"

[[models]]
id = "bedrock/claude-sonnet-4-5"
provider = "bedrock-eu"
upstream = "{MODEL_ID}"
input_price = {PRICES['input']}
cached_input_price = {PRICES['cached']}
cache_write_price = {PRICES['write']}
output_price = {PRICES['output']}
context_window = 200000
max_output_tokens = 64000

[[models]]
id = "direct/claude-sonnet-4-5"
provider = "direct"
upstream = "claude-sonnet-4-5-20250929"
input_price = 3.00
output_price = 15.00

[policies.claude]
strategy = "fallback"
models = ["bedrock/claude-sonnet-4-5", "direct/claude-sonnet-4-5"]
""" + FAST_LEDGER


class Stack:
    def __init__(
        self, gw: Gateway, bedrock: FakeBedrock, anthropic: FakeAnthropic, pg: str
    ) -> None:
        self.gw, self.bedrock, self.anthropic, self.pg = gw, bedrock, anthropic, pg


def aws_env(monkeypatch: pytest.MonkeyPatch, secret: str = SECRET_KEY) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)


@pytest.fixture
async def stack(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    aws_env(monkeypatch)
    async with FakeBedrock() as bedrock, FakeAnthropic() as anthropic:
        settings = gateway_settings(tmp_path, bedrock_toml(bedrock.base_url, anthropic.base_url),
                                    PROXY_DATABASE_URL=pg_database)
        async with running_gateway(settings) as gw:
            yield Stack(gw, bedrock, anthropic, pg_database)


async def chat(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> aiohttp.ClientResponse:
    return await http.post(
        gw.url + "/v1/chat/completions", headers=gw.headers,
        json={"model": "bedrock/claude-sonnet-4-5", "messages": CONVERSATION, **body})


def cost(prompt: int, cached: int, written: int, out: int) -> float:
    return (prompt * PRICES["input"] + cached * PRICES["cached"] + written * PRICES["write"]
            + out * PRICES["output"]) / 1e6


async def test_chat_is_translated_to_converse_and_back_with_tool_calls_and_cache_usage(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(Reply(tool_calls=[("get_weather", '{"city": "Frankfurt"}')],
                               prompt_tokens=50, completion_tokens=9, cached_tokens=1000,
                               cache_write_tokens=200))
    history = [*CONVERSATION,
               {"role": "assistant", "content": None,
                "tool_calls": [{"id": "t1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Bonn"}'}}]},
               {"role": "tool", "tool_call_id": "t1", "content": "rain"},
               {"role": "user", "content": "And Frankfurt?"}]
    resp = await chat(http, stack.gw, messages=history, tools=TOOLS, tool_choice="required",
                      max_tokens=300, temperature=0.2, stop="END")
    assert resp.status == 200, await resp.text()
    sent = stack.bedrock.last
    assert sent.path == f"/model/{MODEL_ID}/converse"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    req = sent.json
    assert req["system"] == [{"text": "You are terse."}]
    assert [m["role"] for m in req["messages"]] == ["user", "assistant", "user"]
    assert req["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Bonn"}}}]
    assert req["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "rain"}]}},
        {"text": "And Frankfurt?"}]
    assert req["inferenceConfig"] == {
        "maxTokens": 300, "temperature": 0.2, "stopSequences": ["END"]}
    assert req["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "get_weather", "description": "Weather now",
        "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}], "toolChoice": {"any": {}}}
    body = await resp.json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "tooluse_fake000001x0"
    assert json.loads(call["function"]["arguments"]) == {"city": "Frankfurt"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["id"] == "chatcmpl-req_fake000001"  # AWS's request id names the completion
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1250, 9)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1000, "cache_creation_tokens": 200}
    assert usage["cost"] == pytest.approx(cost(50, 1000, 200, 9))
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    assert (row["provider"], row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"],
            row["completion_tokens"]) == ("bedrock-eu", 1250, 1000, 200, 9)
    assert row["cost_nusd"] == round(cost(50, 1000, 200, 9) * 1e9)


async def test_stream_is_translated_from_eventstream_frames_with_usage_and_cost(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(Reply(text="Grey skies.",
                               tool_calls=[("get_weather", '{"city": "Frankfurt"}')],
                               prompt_tokens=20, completion_tokens=7, cached_tokens=100,
                               cache_write_tokens=10))
    resp = await chat(http, stack.gw, tools=TOOLS, stream=True,
                      stream_options={"include_usage": True})
    assert resp.status == 200
    chunks = json_events(await resp.read())
    assert stack.bedrock.last.path == f"/model/{MODEL_ID}/converse-stream"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    text = streamed_text(chunks)
    calls = [tc for c in chunks if c["choices"]
             for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["id"] == "tooluse_fake000001x0"
    assert calls[0]["function"]["name"] == "get_weather"
    args = "".join(tc["function"].get("arguments") or "" for tc in calls)
    assert (text, json.loads(args)) == ("Grey skies.", {"city": "Frankfurt"})
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (130, 7)
    assert usage["cost"] == pytest.approx(cost(20, 100, 10, 7))
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    assert (row["stream"], row["cached_tokens"], row["cache_write_tokens"], row["cost_nusd"]) == (
        True, 100, 10, round(cost(20, 100, 10, 7) * 1e9))


async def test_openai_sdk_streams_bedrock_through_the_gateway(stack: Stack) -> None:
    stack.bedrock.script(Reply(text="It is sunny in Frankfurt.", prompt_tokens=9,
                               completion_tokens=6))
    chunks = await sdk_stream(stack.gw, "bedrock/claude-sonnet-4-5", SDK_CONVERSATION)
    assert sdk_text(chunks) == "It is sunny in Frankfurt."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15


async def test_each_bedrock_frame_reaches_the_client_before_the_next_is_sent(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    stack.bedrock.script(Reply(text="alpha beta gamma", gate=gate))
    request = asyncio.ensure_future(chat(http, stack.gw, stream=True))
    assert await gate.release()  # messageStart: the gateway's first event
    seen = await contents_released_one_by_one(request, gate, 3)
    assert seen == ["alpha", " beta", " gamma"]
    await gate.release_all()


async def test_structured_output_goes_as_converse_output_config_and_comes_back_as_content(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"]}
    stack.bedrock.script(Reply(text='{"t": 4}'), Reply(text='{"t": 4}'))
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}
    resp = await chat(http, stack.gw, response_format=fmt)
    assert resp.status == 200
    sent = stack.bedrock.last.json["outputConfig"]["textFormat"]
    assert sent["type"] == "json_schema"
    assert sent["structure"]["jsonSchema"]["name"] == "weather"
    assert json.loads(sent["structure"]["jsonSchema"]["schema"]) == schema
    assert json.loads((await resp.json())["choices"][0]["message"]["content"]) == {"t": 4}
    streamed = await (await chat(http, stack.gw, response_format=fmt, stream=True)).read()
    text = streamed_text(json_events(streamed))
    assert json.loads(text) == {"t": 4}


@pytest.mark.parametrize(("stop", "finish"), [
    ("max_tokens", "length"), ("content_filtered", "content_filter"),
    ("guardrail_intervened", "content_filter"), ("stop_sequence", "stop"),
])
async def test_converse_stop_reasons_become_openai_finish_reasons(
    stack: Stack, http: aiohttp.ClientSession, stop: str, finish: str
) -> None:
    stack.bedrock.script(Reply(text="Partial", finish_reason=stop, completion_tokens=5),
                         Reply(text="Partial", finish_reason=stop, completion_tokens=5))
    plain = await (await chat(http, stack.gw, max_tokens=5)).json()
    assert plain["choices"][0]["finish_reason"] == finish
    assert stack.bedrock.last.json["inferenceConfig"]["maxTokens"] == 5
    streamed = json_events(await (await chat(http, stack.gw, max_tokens=5, stream=True)).read())
    assert [c["choices"][0]["finish_reason"] for c in streamed if c["choices"]][-1] == finish


async def test_throttling_is_a_429_with_retry_after_and_the_policy_falls_back_to_anthropic(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(Fail(429, "Too many requests, please wait before trying again."))
    resp = await chat(http, stack.gw)
    assert resp.status == 429
    assert int(resp.headers["retry-after"]) > 0 and resp.headers["retry-after-ms"]
    error = (await resp.json())["error"]
    assert error["type"] == "rate_limit_error" and "ThrottlingException" in error["message"]
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["cost_nusd"]) == (429, "upstream_rate_limited", 0)
    stack.bedrock.script(Fail(429, "Too many requests"))
    stack.anthropic.script(Reply(text="From Anthropic's API."))
    resp = await chat(http, stack.gw, model="policy/claude")
    assert resp.status == 200 and resp.headers["x-provider"] == "direct"
    assert (await resp.json())["choices"][0]["message"]["content"] == "From Anthropic's API."
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    assert (row["provider"], row["status"], row["attempts"]) == ("direct", 200, 2)


@pytest.mark.parametrize(("fail", "status"), [
    (Fail(503, "Service unavailable"), 502),
    (Fail(424, "The model returned an error", error_type="ModelErrorException"), 502),
    (Fail(408, "Model timed out", error_type="ModelTimeoutException"), 502),
    (Fail(429, "Model not ready", error_type="ModelNotReadyException"), 429),
])
async def test_bedrock_server_faults_fall_back_and_alone_are_not_the_client_s(
    stack: Stack, http: aiohttp.ClientSession, fail: Fail, status: int
) -> None:
    stack.bedrock.script(fail, fail)
    alone = await chat(http, stack.gw)
    assert alone.status == status
    resp = await chat(http, stack.gw, model="policy/claude")
    assert resp.status == 200 and resp.headers["x-provider"] == "direct"


async def test_validation_error_passes_with_aws_s_message_and_is_not_retried(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(
        Fail(400, "The model returned the following errors: temperature: range: 0..1"))
    resp = await chat(http, stack.gw, model="policy/claude")
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "ValidationException" and "temperature: range" in error["message"]
    assert stack.anthropic.hits == 0
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    assert (row["status"], row["cost_nusd"]) == (400, 0)


async def test_a_mid_stream_exception_frame_becomes_an_sse_error_after_the_text_before_it(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(ErrorEvent(after_events=3, message="Too many tokens, please wait.",
                                    error_type="throttlingException",
                                    reply=Reply(text="one two three four")))
    resp = await chat(http, stack.gw, stream=True)
    raw = (await resp.read()).decode()
    blocks = [b for b in raw.split("\n\n") if b]
    last = json.loads(blocks[-1][6:])
    assert "Too many tokens" in last["error"]["message"]
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in json_events(raw.encode()) if c.get("choices"))
    assert text == "one two"
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    # What flowed is charged, estimated: the usage never came.
    assert (row["status"], row["error_code"], row["estimated"]) == (
        502, "upstream_rate_limited", True)
    assert row["completion_tokens"] > 0 and row["cost_nusd"] > 0


async def test_a_cut_stream_ends_with_an_error_event(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(Cut(after_events=2, reply=Reply(text="one two three")))
    raw = (await (await chat(http, stack.gw, stream=True)).read()).decode()
    last = json.loads([b for b in raw.split("\n\n") if b][-1][6:])
    assert last["error"]["message"] == (
        "The connection to upstream provider `bedrock-eu` failed (ConnectionLost).")
    assert "one" in raw  # what came before the cut reached the client


async def test_a_wrong_aws_secret_is_502_provider_auth_failed_and_leaks_nothing(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every line an operator could read, not only warnings
    secret = "wrong/secret/0123456789abcdefghijklmnopq"
    aws_env(monkeypatch, secret=secret)
    async with FakeBedrock() as bedrock, FakeAnthropic() as anthropic:
        settings = gateway_settings(tmp_path, bedrock_toml(bedrock.base_url, anthropic.base_url))
        async with running_gateway(settings) as gw:
            resp = await chat(http, gw)
            assert resp.status == 502
            text = await resp.text()
            error = json.loads(text)["error"]
            assert error["code"] == "provider_auth_failed"
            assert "signature" not in error["message"]
            assert bedrock.hits == 0  # refused at the signature check
    # Neither the key id nor the secret anywhere the client or an operator reads.
    headers = " ".join(f"{k}: {v}" for k, v in resp.headers.items())
    for where in (text, headers, caplog.text):
        assert ACCESS_KEY not in where and secret not in where


async def test_temporary_credentials_send_the_session_token(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEFAKESESSIONTOKEN")
    async with FakeBedrock() as bedrock, FakeAnthropic() as anthropic:
        bedrock.session_token = "FwoGZXIvYXdzEFAKESESSIONTOKEN"
        settings = gateway_settings(tmp_path, bedrock_toml(bedrock.base_url, anthropic.base_url))
        async with running_gateway(settings) as gw:
            resp = await chat(http, gw)
            assert resp.status == 200, await resp.text()
            assert bedrock.last.headers["x-amz-security-token"] == "FwoGZXIvYXdzEFAKESESSIONTOKEN"


async def test_without_aws_credentials_bedrock_is_not_configured_and_the_policy_falls_back(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_env(monkeypatch)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    async with FakeBedrock() as bedrock, FakeAnthropic() as anthropic:
        settings = gateway_settings(tmp_path, bedrock_toml(bedrock.base_url, anthropic.base_url))
        async with running_gateway(settings) as gw:
            alone = await chat(http, gw)
            assert alone.status == 502  # one model, every attempt failed: 502
            assert "AWS_ACCESS_KEY_ID" in (await alone.json())["error"]["message"]
            resp = await chat(http, gw, model="policy/claude")
            assert resp.status == 200 and resp.headers["x-provider"] == "direct"
            assert bedrock.hits == 0


async def test_a_stream_without_usage_metadata_is_whole_and_its_usage_estimated(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(Reply(text="one two three", omit_usage=True))
    resp = await chat(http, stack.gw, stream=True, stream_options={"include_usage": True})
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw
    row = await ledger_row(stack.pg, resp.headers["x-request-id"])
    assert (row["status"], row["estimated"]) == (200, True) and row["completion_tokens"] > 0


async def test_a_bedrock_stream_is_cached_and_replayed_with_the_same_chunks(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(Reply(text="Same answer twice."))
    body = {"stream": True, "requesty": {"cache": True}}
    first = json_events(await (await chat(http, stack.gw, **body)).read())
    again = await chat(http, stack.gw, **body)
    assert again.headers["x-cache"] == "HIT"
    replayed = json_events(await again.read())
    text = streamed_text(replayed)
    assert text == "Same answer twice." and replayed[0]["id"] == first[0]["id"]
    assert stack.bedrock.hits == 1


async def test_an_exception_frame_before_any_text_falls_back_to_anthropic(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.bedrock.script(ErrorEvent(after_events=0, message="Too many tokens",
                                    error_type="throttlingException"))
    stack.anthropic.script(Reply(text="Fallback answer."))
    resp = await chat(http, stack.gw, model="policy/claude", stream=True)
    assert resp.status == 200 and resp.headers["x-provider"] == "direct"
    text = streamed_text(json_events(await resp.read()))
    assert text == "Fallback answer."
