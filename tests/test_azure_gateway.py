"""Chat and embeddings through the gateway to fake Azure OpenAI resources
(tests/fakes/azure_server.py, proven faithful to openai's `AzureOpenAI` in
tests/test_azure_fake.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloud_ledger import FAST_LEDGER, ledger_row
from fakes import Fail, FakeAzure, Gate, Reply
from fakes.azure_server import API_KEY
from harness import Gateway, gateway_settings, running_gateway
from openai.types.chat import ChatCompletionMessageParam
from sse_reading import (
    contents_released_one_by_one,
    json_events,
    sdk_stream,
    sdk_text,
    streamed_text,
)

from proxy.config import ConfigError

USER = [{"role": "user", "content": "Weather in Stockholm?"}]
# The same conversation as the openai SDK's parameter type, for its typed `create`.
SDK_USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Stockholm?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def azure_toml(sweden: str, france: str) -> str:
    return f"""
[providers.azure-se]
protocol = "azure"
base_url = "{sweden}"
api_version = "2024-10-21"
api_key_env = "AZURE_OPENAI_API_KEY"
regions = ["eu", "global"]
timeout_s = 10

[providers.azure-fr]
protocol = "azure"
base_url = "{france}"
api_version = "2024-10-21"
api_key_env = "AZURE_OPENAI_API_KEY"
regions = ["eu", "global"]
timeout_s = 10

[[models]]
id = "azure-se/gpt-4o"
provider = "azure-se"
upstream = "gpt-4o-eu"
input_price = 2.50
cached_input_price = 1.25
output_price = 10.00
context_window = 128000

[[models]]
id = "azure-fr/gpt-4o"
provider = "azure-fr"
upstream = "gpt-4o-eu"
input_price = 2.50
cached_input_price = 1.25
output_price = 10.00
context_window = 128000

[[models]]
id = "azure-se/embed"
provider = "azure-se"
upstream = "embed-eu"
kind = "embedding"
input_price = 0.02

[policies.azure-eu]
strategy = "loadbalance"
models = ["azure-se/gpt-4o", "azure-fr/gpt-4o"]
""" + FAST_LEDGER


class Pair:
    def __init__(self, gw: Gateway, se: FakeAzure, fr: FakeAzure, pg: str) -> None:
        self.gw, self.se, self.fr, self.pg = gw, se, fr, pg


@pytest.fixture
async def azure(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pair]:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    deployments = {"gpt-4o-eu": "gpt-4o-2024-11-20", "embed-eu": "text-embedding-3-small"}
    async with FakeAzure(deployments) as se, FakeAzure(deployments) as fr:
        settings = gateway_settings(tmp_path, azure_toml(se.base_url, fr.base_url),
                                    PROXY_DATABASE_URL=pg_database)
        async with running_gateway(settings) as gw:
            yield Pair(gw, se, fr, pg_database)


async def chat(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/chat/completions", headers=gw.headers,
                           json={"model": "azure-se/gpt-4o", "messages": USER, **body})


async def test_chat_goes_to_the_deployment_with_api_key_and_version_and_tool_calls_return(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Reply(tool_calls=[("get_weather", '{"city": "Stockholm"}')],
                          prompt_tokens=300, cached_tokens=200, completion_tokens=9))
    resp = await chat(http, azure.gw, tools=TOOLS, tool_choice="auto")
    assert resp.status == 200, await resp.text()
    sent = azure.se.last
    assert sent.path == "/openai/deployments/gpt-4o-eu/chat/completions"
    assert sent.headers["api-key"] == API_KEY and "authorization" not in sent.headers
    assert sent.json["tools"] == TOOLS and sent.json["tool_choice"] == "auto"
    body = await resp.json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Stockholm"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["model"] == "gpt-4o-2024-11-20"
    expected = (100 * 2.50 + 200 * 1.25 + 9 * 10.00) / 1e6
    assert body["usage"]["cost"] == pytest.approx(expected)
    row = await ledger_row(azure.pg, resp.headers["x-request-id"])
    assert (row["provider"], row["model"], row["prompt_tokens"], row["cached_tokens"],
            row["completion_tokens"]) == ("azure-se", "azure-se/gpt-4o", 300, 200, 9)
    assert row["cost_nusd"] == round(expected * 1e9)


async def test_api_version_reaches_azure_in_the_query(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    # The fake answers 404 without it, as Azure does.
    resp = await chat(http, azure.gw)
    assert resp.status == 200
    assert azure.se.api_versions == ["2024-10-21"]


async def test_stream_drops_the_filter_preamble_and_keeps_tool_deltas_and_usage(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Reply(text="Cold.", tool_calls=[("get_weather", '{"city": "Stockholm"}')],
                          prompt_tokens=40, completion_tokens=6))
    resp = await chat(http, azure.gw, tools=TOOLS, stream=True,
                      stream_options={"include_usage": True})
    assert resp.status == 200
    chunks = json_events(await resp.read())
    assert azure.se.last.json["stream_options"] == {"include_usage": True}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] for c in chunks)
    assert not any("prompt_filter_results" in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = streamed_text(chunks)
    args = "".join(tc["function"].get("arguments") or "" for c in chunks if c["choices"]
                   for tc in c["choices"][0]["delta"].get("tool_calls") or ())
    assert (text, json.loads(args)) == ("Cold.", {"city": "Stockholm"})
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (40, 6)
    assert usage["cost"] == pytest.approx((40 * 2.50 + 6 * 10.00) / 1e6)
    row = await ledger_row(azure.pg, resp.headers["x-request-id"])
    assert (row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (True, 40, 6)


async def test_a_cached_azure_stream_replays_with_the_completion_id_not_the_preamble_s(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Reply(text="Same again."))
    body = {"stream": True, "requesty": {"cache": True}}
    first = json_events(await (await chat(http, azure.gw, **body)).read())
    again = await chat(http, azure.gw, **body)
    assert again.headers["x-cache"] == "HIT"
    replayed = json_events(await again.read())
    assert {c["id"] for c in replayed} == {first[0]["id"]}
    assert first[0]["id"].startswith("chatcmpl-")
    assert azure.se.hits == 1


async def test_openai_sdk_streams_azure_through_the_gateway(azure: Pair) -> None:
    azure.se.script(Reply(text="one two three four", prompt_tokens=7, completion_tokens=4))
    chunks = await sdk_stream(azure.gw, "azure-se/gpt-4o", SDK_USER)
    assert sdk_text(chunks) == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11


async def test_each_azure_event_reaches_the_client_before_the_next_is_sent(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    azure.se.script(Reply(text="alpha beta gamma", gate=gate))
    request = asyncio.ensure_future(chat(http, azure.gw, stream=True))
    assert await gate.release()  # the filter preamble: nothing for the client yet
    assert await gate.release()  # the role chunk: the gateway's first event
    seen = await contents_released_one_by_one(request, gate, 3)
    assert seen == ["alpha", " beta", " gamma"]
    await gate.release_all()


async def test_structured_output_passes_to_azure_and_back(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
        "type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"],
        "additionalProperties": False}}}
    azure.se.script(Reply(text='{"t": -3}'))
    resp = await chat(http, azure.gw, response_format=schema)
    assert resp.status == 200
    assert azure.se.last.json["response_format"] == schema
    assert json.loads((await resp.json())["choices"][0]["message"]["content"]) == {"t": -3}


@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_max_tokens_cut_and_filtered_answers_keep_azure_s_finish_reason(
    azure: Pair, http: aiohttp.ClientSession, finish: str
) -> None:
    azure.se.script(Reply(text="Partial", finish_reason=finish, completion_tokens=5),
                    Reply(text="Partial", finish_reason=finish, completion_tokens=5))
    plain = await (await chat(http, azure.gw, max_tokens=5)).json()
    assert plain["choices"][0]["finish_reason"] == finish
    assert azure.se.last.json["max_tokens"] == 5
    streamed = json_events(await (await chat(http, azure.gw, max_tokens=5, stream=True)).read())
    assert [c["choices"][0]["finish_reason"] for c in streamed if c["choices"]][-1] == finish


async def test_content_filter_refusal_is_a_400_content_filter_not_retried_elsewhere(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Fail(400, "", error_type="content_filter"))
    azure.fr.script(Fail(400, "", error_type="content_filter"))
    resp = await chat(http, azure.gw, model="policy/azure-eu")
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "content_filter" and error["type"] == "invalid_request_error"
    assert "content management policy" in error["message"]
    assert "[redacted]" not in error["message"] and "[address]" not in error["message"]
    assert azure.se.hits + azure.fr.hits == 1
    row = await ledger_row(azure.pg, resp.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["cost_nusd"]) == (400, "content_filter", 0)


async def test_throttling_is_a_429_with_azure_s_retry_after(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Fail(429, "Please retry after 7 seconds.", retry_after=7))
    resp = await chat(http, azure.gw)
    assert resp.status == 429
    assert resp.headers["retry-after"] == "7" and resp.headers["retry-after-ms"] == "7000"
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_a_wrong_azure_key_is_502_provider_auth_failed_without_azure_s_text(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "not-the-key-0123456789")
    async with FakeAzure() as se, FakeAzure() as fr:
        settings = gateway_settings(tmp_path, azure_toml(se.base_url, fr.base_url))
        async with running_gateway(settings) as gw:
            resp = await chat(http, gw)
            assert resp.status == 502
            error = (await resp.json())["error"]
            assert error["code"] == "provider_auth_failed"
            assert "subscription key" not in error["message"]


async def test_a_validation_error_passes_with_azure_s_message(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Fail(400, "Invalid value for 'temperature': must be at most 2.",
                         error_type="invalid_value"))
    resp = await chat(http, azure.gw, temperature=3)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_value" and "temperature" in error["message"]


async def test_loadbalance_spreads_over_two_azure_deployments_and_falls_over_on_429(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    served = set()
    for _ in range(16):
        resp = await chat(http, azure.gw, model="policy/azure-eu")
        assert resp.status == 200
        served.add(resp.headers["x-provider"])
    assert served == {"azure-se", "azure-fr"}
    azure.se.script(*[Fail(429, "busy", retry_after=1)] * 8)
    azure.fr.script(*[Fail(429, "busy", retry_after=1)] * 8)
    before = azure.se.hits + azure.fr.hits
    for _ in range(4):
        resp = await chat(http, azure.gw, model="policy/azure-eu")
        assert resp.status == 429  # both throttled: the last 429 with its Retry-After
    assert azure.se.hits + azure.fr.hits - before == 8  # each request tried both


async def test_embeddings_go_to_the_embedding_deployment(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    resp = await http.post(azure.gw.url + "/v1/embeddings", headers=azure.gw.headers,
                           json={"model": "azure-se/embed", "input": ["a b c", "d"]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert len(body["data"]) == 2 and body["usage"]["prompt_tokens"] == 4
    assert azure.se.last.path == "/openai/deployments/embed-eu/embeddings"


@pytest.mark.parametrize(("provider", "problem"), [
    ('protocol = "azure"\nbase_url = "https://x.openai.azure.com"',
     "key `providers.p.api_version`: is required"),
    ('protocol = "azure"\nbase_url = "https://x.openai.azure.com"\napi_version = "latest"',
     "key `providers.p.api_version`: must look like 2024-10-21"),
    ('protocol = "azure"\nbase_url = "https://x.openai.azure.com"\napi_version = "2024-02-01"',
     "key `providers.p.api_version`: must be 2024-09-01 or later"),
    ('protocol = "openai"\nbase_url = "https://x"\napi_version = "2024-10-21"',
     "key `providers.p.api_version`: applies only to protocol \"azure\""),
])
def test_azure_settings_are_checked_at_load_naming_the_key(
    tmp_path: Path, provider: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        gateway_settings(tmp_path, f"[providers.p]\n{provider}\n")


async def test_a_whole_azure_stream_in_one_read_loses_only_the_preamble(
    azure: Pair, http: aiohttp.ClientSession
) -> None:
    azure.se.script(Reply(text="all at once", burst=True, prompt_tokens=3, completion_tokens=3))
    resp = await chat(http, azure.gw, stream=True, stream_options={"include_usage": True})
    raw = await resp.read()
    chunks = json_events(raw)
    assert b"prompt_filter_results" not in raw and raw.endswith(b"data: [DONE]\n\n")
    text = streamed_text(chunks)
    assert text == "all at once"
    assert chunks[-1]["usage"]["total_tokens"] == 6 and chunks[-1]["usage"]["cost"] > 0
