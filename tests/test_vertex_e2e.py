"""Chat through the gateway to a fake Vertex AI: Gemini and Claude models, a service
account's OAuth token from a fake token endpoint (cached, refreshed before expiry, off
the request path), usage and cost, errors."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import Fail, Gate, Reply
from fakes.gemini_server import FakeGemini, GeminiReply
from fakes.google_token_server import FakeGoogleToken
from harness import Gateway, gateway_settings, running_gateway
from ledger_support import wait_for
from test_gemini_e2e import ledger_rows, sse_data

from proxy.config import ConfigError

USER = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}]


def vertex_toml(base_url: str, extra: str = "") -> str:
    return f"""
[providers.vx]
protocol = "vertex"
base_url = "{base_url}"
gcp_project = "fake-project"
gcp_location = "europe-west4"
regions = ["global"]
first_byte_timeout_s = 5
timeout_s = 10
{extra}
[[models]]
id = "vx/gemini"
provider = "vx"
upstream = "gemini-2.5-pro"
input_price = 1.25
cached_input_price = 0.125
output_price = 10.0
context_window = 1048576
max_output_tokens = 65536

[[models]]
id = "vx/claude"
provider = "vx"
upstream = "claude-sonnet-4-5@20250929"
input_price = 3.0
cached_input_price = 0.30
cache_write_price = 3.75
output_price = 15.0
context_window = 200000
max_output_tokens = 64000

[[models]]
id = "vx/aliased"
provider = "vx"
upstream = "my-tuned-sonnet"
publisher = "anthropic"
input_price = 3.0
output_price = 15.0
"""


@pytest.fixture
async def tokens() -> AsyncIterator[FakeGoogleToken]:
    async with FakeGoogleToken() as server:
        yield server


@pytest.fixture
async def vertex(tokens: FakeGoogleToken) -> AsyncIterator[FakeGemini]:
    async with FakeGemini(tokens=tokens.issued) as server:
        yield server


@pytest.fixture
def key_file(tokens: FakeGoogleToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tokens.key_file(tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path


@pytest.fixture
async def gw(tmp_path: Path, vertex: FakeGemini, key_file: Path) -> AsyncIterator[Gateway]:
    settings = gateway_settings(tmp_path, vertex_toml(vertex.root_url))
    async with running_gateway(settings) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(http: aiohttp.ClientSession, gw: Gateway, model: str,
               **body: Any) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/chat/completions", headers=gw.headers,
                           json={"model": model, "messages": USER, **body})


PREFIX = "/v1/projects/fake-project/locations/europe-west4/publishers/"


async def test_gemini_on_vertex_with_a_cached_token_and_exact_cost(
    gw: Gateway, vertex: FakeGemini, tokens: FakeGoogleToken, http: aiohttp.ClientSession
) -> None:
    for _ in range(5):
        vertex.script(GeminiReply(text="Sonnig.", prompt_tokens=100, completion_tokens=4,
                                  thoughts_tokens=40, cached_tokens=60))
        resp = await chat(http, gw, "vx/gemini")
        assert resp.status == 200, await resp.text()
    assert tokens.hits == 1  # one token for every call
    sent = vertex.last
    assert sent.path == PREFIX + "google/models/gemini-2.5-pro:generateContent"
    assert sent.headers["authorization"] == "Bearer " + tokens.last_issued
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "Sonnig."
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (100, 44)
    expected = (40 * 1.25 + 60 * 0.125 + 44 * 10.0) / 1e6
    assert usage["cost"] == pytest.approx(expected)
    rows = await ledger_rows(gw, 5)
    assert [(r["completion_tokens"], r["cost_nusd"]) for r in rows] == [
        (44, round(expected * 1e9))] * 5


async def test_claude_on_vertex_uses_raw_predict_without_model_in_the_body(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    vertex.script(Reply(text="Sunny.", prompt_tokens=50, completion_tokens=2,
                        cached_tokens=1000, cache_write_tokens=200))
    resp = await chat(http, gw, "vx/claude", max_tokens=64)
    assert resp.status == 200, await resp.text()
    sent = vertex.last
    assert sent.path == PREFIX + "anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    assert "model" not in sent.json and sent.json["anthropic_version"] == "vertex-2023-10-16"
    assert sent.json["system"] == "Be terse." and sent.json["max_tokens"] == 64
    usage = (await resp.json())["usage"]
    assert usage["prompt_tokens"] == 1250
    expected = (50 * 3.0 + 1000 * 0.30 + 200 * 3.75 + 2 * 15.0) / 1e6
    assert usage["cost"] == pytest.approx(expected)
    [row] = await ledger_rows(gw, 1)
    assert row["cost_nusd"] == round(expected * 1e9)


async def test_a_burst_of_first_calls_fetches_one_token(
    gw: Gateway, vertex: FakeGemini, tokens: FakeGoogleToken, http: aiohttp.ClientSession
) -> None:
    answers = await asyncio.gather(*(chat(http, gw, "vx/gemini") for _ in range(12)))
    assert [r.status for r in answers] == [200] * 12
    assert tokens.hits == 1


async def test_each_claude_stream_event_reaches_the_client_before_the_next_is_sent(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    vertex.script(Reply(text="alpha beta gamma", gate=gate))
    request = asyncio.ensure_future(chat(http, gw, "vx/claude", stream=True))
    assert await gate.release()  # message_start: the gateway answers with the role chunk
    resp = await request
    assert resp.status == 200
    buf = bytearray()

    async def next_delta() -> dict[str, Any]:
        while b"\n\n" not in buf:
            chunk = await asyncio.wait_for(resp.content.readany(), timeout=5)
            assert chunk, "the stream ended early"
            buf.extend(chunk)
        end = buf.index(b"\n\n")
        event = json.loads(bytes(buf[:end]).decode().removeprefix("data: "))
        del buf[: end + 2]
        return event["choices"][0]["delta"]  # type: ignore[no-any-return]

    assert (await next_delta())["role"] == "assistant"
    # content_block_start (empty text) and ping carry nothing to forward.
    assert await gate.release() and await gate.release()
    seen = []
    for _ in range(3):  # then one word an event, each at the client before the next is sent
        assert await gate.release()
        seen.append((await next_delta())["content"])
    assert "".join(seen) == "alpha beta gamma"
    await gate.release_all()


async def test_claude_stream_on_vertex_with_a_tool_call(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    vertex.script(Reply(text="Let me see.", tool_calls=[("get_weather", '{"city": "Paris"}')],
                        prompt_tokens=20, completion_tokens=12))
    resp = await chat(http, gw, "vx/claude", tools=TOOLS, stream=True,
                      stream_options={"include_usage": True})
    assert resp.status == 200
    assert vertex.last.path.endswith(":streamRawPredict") and vertex.last.json["stream"] is True
    chunks = [json.loads(e) for e in sse_data(await resp.read())[:-1]]
    calls = [tc for c in chunks if c["choices"]
             for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert chunks[-1]["usage"]["cost"] == pytest.approx((20 * 3.0 + 12 * 15.0) / 1e6)


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_on_vertex_answers_a_json_schema_request_as_content(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession, stream: bool
) -> None:
    """`response_format` goes to Claude as the answer tool; its input comes back as the
    message's content with finish "stop", as on Anthropic's own API, plain and streamed."""
    vertex.script(Reply(tool_calls=[("json_output", '{"t": 4}')]))
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"]}}}
    resp = await chat(http, gw, "vx/claude", response_format=fmt, stream=stream)
    assert resp.status == 200, await resp.text()
    assert vertex.last.json["tool_choice"] == {"type": "tool", "name": "json_output"}
    if stream:
        chunks = [json.loads(e) for e in sse_data(await resp.read())[:-1]]
        deltas = [c["choices"][0] for c in chunks if c["choices"]]
        text = "".join(d["delta"].get("content") or "" for d in deltas)
        assert not any(d["delta"].get("tool_calls") for d in deltas)
        finish = next(d["finish_reason"] for d in deltas if d["finish_reason"])
    else:
        choice = (await resp.json())["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
        assert not choice["message"].get("tool_calls")
    assert json.loads(text) == {"t": 4} and finish == "stop"


async def test_gemini_stream_on_vertex_is_translated(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    vertex.script(GeminiReply(text="eins zwei drei", prompt_tokens=7, completion_tokens=3))
    resp = await chat(http, gw, "vx/gemini", stream=True, stream_options={"include_usage": True})
    assert resp.status == 200
    assert vertex.last.path == PREFIX + "google/models/gemini-2.5-pro:streamGenerateContent"
    chunks = [json.loads(e) for e in sse_data(await resp.read())[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "eins zwei drei"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_a_models_publisher_setting_overrides_the_upstream_id(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    vertex.script(Reply(text="ok"))
    assert (await chat(http, gw, "vx/aliased", max_tokens=5)).status == 200
    assert vertex.last.path == PREFIX + "anthropic/models/my-tuned-sonnet:rawPredict"


async def test_throttling_on_vertex_is_429_with_retry_after(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    vertex.retry_delay = "4.2s"
    vertex.script(Fail(429, "Quota exceeded for aiplatform.googleapis.com/generate_content."))
    resp = await chat(http, gw, "vx/gemini")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "5" and resp.headers["retry-after-ms"] == "4200"


async def test_validation_error_passes_as_400(
    gw: Gateway, vertex: FakeGemini, http: aiohttp.ClientSession
) -> None:
    vertex.script(Fail(400, "Request contains an invalid argument."))
    resp = await chat(http, gw, "vx/gemini")
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "invalid argument" in error["message"]


async def test_a_refused_token_is_502_and_the_next_call_gets_a_new_one(
    gw: Gateway, vertex: FakeGemini, tokens: FakeGoogleToken, http: aiohttp.ClientSession
) -> None:
    assert (await chat(http, gw, "vx/gemini")).status == 200
    first = tokens.last_issued
    tokens.issued.clear()  # revoked: Vertex now answers 401
    resp = await chat(http, gw, "vx/gemini")
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "provider_auth_failed"
    assert (await chat(http, gw, "vx/gemini")).status == 200
    assert tokens.hits == 2 and tokens.last_issued != first
    assert vertex.last.headers["authorization"] == "Bearer " + tokens.last_issued


async def test_a_token_endpoint_refusal_is_a_502_and_the_next_call_tries_again(
    gw: Gateway, vertex: FakeGemini, tokens: FakeGoogleToken, http: aiohttp.ClientSession
) -> None:
    tokens.fail_next = 1  # 400 invalid_grant: google-auth does not retry it itself
    resp = await chat(http, gw, "vx/gemini")
    assert resp.status == 502  # retryable, so a routing policy falls back to another model
    assert "could not get a Google access token" in (await resp.json())["error"]["message"]
    assert vertex.hits == 0
    assert (await chat(http, gw, "vx/gemini")).status == 200


async def test_token_is_refreshed_before_it_expires_off_the_request_path(
    tmp_path: Path, vertex: FakeGemini, tokens: FakeGoogleToken, key_file: Path,
    http: aiohttp.ClientSession,
) -> None:
    # Refreshed a quarter of its life before the end: after ~6 s, the next one ~6 s after
    # that (4 s left a loaded host no margin between the second refresh and a third).
    tokens.expires_in = 8
    settings = gateway_settings(tmp_path, vertex_toml(vertex.root_url))
    async with running_gateway(settings) as gw:
        assert (await chat(http, gw, "vx/gemini")).status == 200
        first = tokens.last_issued
        await wait_for(lambda: tokens.hits == 2, timeout=15)  # no request asked for it
        second = tokens.last_issued
        assert second != first

        async def carries_the_new_token() -> bool:
            # The token endpoint counts the hit before the gateway's thread has read the
            # answer: until it has, calls rightly go out with the old, still valid token.
            assert (await chat(http, gw, "vx/gemini")).status == 200
            return vertex.last.headers["authorization"] == "Bearer " + second

        await wait_for(carries_the_new_token, timeout=5, what="the new token was never used")
        assert tokens.hits == 2  # the calls meanwhile fetched nothing themselves


async def test_without_credentials_vertex_is_not_configured(
    tmp_path: Path, vertex: FakeGemini, monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server to probe here
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    settings = gateway_settings(tmp_path, vertex_toml(vertex.root_url))
    async with running_gateway(settings) as gw:
        resp = await chat(http, gw, "vx/gemini")
        assert resp.status == 502  # as for a provider whose key is not set: every step failed
        error = (await resp.json())["error"]
        assert "GOOGLE_APPLICATION_CREDENTIALS" in error["message"]
    assert vertex.hits == 0


@pytest.mark.parametrize(("extra", "key"), [
    ('gcp_location = "europe-west4/../x"', "providers.vx.gcp_location"),
])
def test_a_bad_gcp_location_is_refused_naming_the_key(tmp_path: Path, extra: str, key: str) -> None:
    toml = vertex_toml("https://vertex.example").replace('gcp_location = "europe-west4"\n', "")
    with pytest.raises(ConfigError, match=f"key `{key}`"):
        gateway_settings(
            tmp_path, toml.replace("first_byte_timeout_s", extra + "\nfirst_byte_timeout_s"))


def test_a_vertex_provider_needs_a_location(tmp_path: Path) -> None:
    toml = vertex_toml("https://vertex.example").replace('gcp_location = "europe-west4"\n', "")
    with pytest.raises(ConfigError, match=re.escape("key `providers.vx.gcp_location`")):
        gateway_settings(tmp_path, toml)


def test_gcp_keys_and_publisher_belong_to_vertex_only(tmp_path: Path) -> None:
    other = """
[providers.oa]
protocol = "openai"
base_url = "https://api.example"
gcp_project = "p"
"""
    with pytest.raises(ConfigError, match=re.escape("key `providers.oa.gcp_project`")):
        gateway_settings(tmp_path, other)
    model = """
[providers.oa]
protocol = "openai"
base_url = "https://api.example"

[[models]]
id = "oa/x"
provider = "oa"
upstream = "x"
publisher = "anthropic"
"""
    with pytest.raises(ConfigError, match=r"key `models\[\d+\]\.publisher`"):
        gateway_settings(tmp_path, model)


def test_vertex_base_url_defaults_to_the_locations_endpoint(tmp_path: Path) -> None:
    from proxy.providers.vertex import default_base_url

    toml = vertex_toml("x").replace('base_url = "x"\n', "")
    settings = gateway_settings(tmp_path, toml)
    assert settings.providers["vx"].base_url == ""
    assert default_base_url("europe-west4") == "https://europe-west4-aiplatform.googleapis.com"
    assert default_base_url("global") == "https://aiplatform.googleapis.com"


def test_eu_config_offers_gemini_and_claude_through_vertex_in_europe_west() -> None:
    from proxy.config import load_settings

    deploy = Path(__file__).resolve().parent.parent / "deploy" / "eu.toml"
    settings = load_settings(str(deploy), env={})
    google = {m.id: settings.providers[m.provider] for m in settings.models
              if settings.providers[m.provider].protocol == "vertex"
              and "eu" in settings.providers[m.provider].regions}
    assert {"vertex-eu/gemini-2.5-flash", "vertex-claude-eu/claude-sonnet-4-5"} <= set(google)
    for provider in google.values():
        assert provider.regions == ("eu",)
        assert provider.gcp_location is not None and provider.gcp_location.startswith("europe-west")
        assert provider.base_url == ""  # the regional endpoint, never `global`
