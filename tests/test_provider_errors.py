"""A provider's error answers as the client sees them (issue 16, finding 7).

The provider is not trusted with the client's answer: its text may reflect the gateway's
key or its internal addresses, its 401 is about the gateway's credentials, and its 429
must reach the client as a 429 with a Retry-After so that SDKs back off.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import openai
import pytest
from conftest import UPSTREAM_SECRET
from fakes import ErrorEvent, Fail, FakeAnthropic, FakeOpenAI, Reply
from harness import ADMIN_KEY, Gateway

from proxy.providers.faults import retry_after_s, upstream_error
from proxy.providers.redact import Redactor

USER = [{"role": "user", "content": "Say hello"}]
REFLECTED_KEY = "sk-upstream-0123456789abcdefABCDEF"
REFLECTION = f"Incorrect API key provided: Bearer {REFLECTED_KEY}; host 10.1.2.3"


async def chat(http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any]
               ) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/chat/completions", json=body, headers=gw.headers)


def leaks(text: str) -> list[str]:
    return [s for s in (REFLECTED_KEY, UPSTREAM_SECRET, "10.1.2.3", "sk-upstream") if s in text]


@pytest.mark.parametrize("status", [401, 403])
async def test_provider_auth_failure_is_502_provider_auth_failed_without_its_text(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, status: int,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_openai.script(Fail(status, REFLECTION))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    raw = await resp.text()
    assert resp.status == 502
    error = json.loads(raw)["error"]
    assert error["code"] == "provider_auth_failed" and error["type"] == "upstream_error"
    assert leaks(raw) == []
    assert fake_openai.hits == 1  # the client's request is not at fault, but no retry helps
    # nor does the reflected text reach a log line or the access log
    assert leaks(caplog.text) == [] and leaks(capsys.readouterr().out) == []


async def test_a_provider_refusing_its_credentials_falls_back_to_another_and_leaks_nothing(
    gateway: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first provider answers 401 with the gateway's key in its text: the request is not
    at fault, so the next model (another provider, its own key) answers it."""
    caplog.set_level(logging.DEBUG)
    fake_openai.script(Fail(401, REFLECTION))
    fake_anthropic.script(Reply(text="from the fallback"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "models": ["fake/claude"],
                                      "messages": USER})
    raw = await resp.text()
    assert resp.status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == "from the fallback"
    assert resp.headers["x-model"] == "fake/claude"
    assert fake_openai.hits == 1 and fake_anthropic.hits == 1  # no retry of the refusal
    headers = " ".join(f"{k}: {v}" for k, v in resp.headers.items())
    for where in (raw, headers, caplog.text, capsys.readouterr().out):
        assert leaks(where) == []


async def test_provider_400_passes_with_its_message_and_keys_and_addresses_redacted(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Fail(400, f"max_tokens too large (key {UPSTREAM_SECRET}, "
                                 f"api_key={REFLECTED_KEY}, via 10.1.2.3:8443)"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    raw = await resp.text()
    assert resp.status == 400
    message = json.loads(raw)["error"]["message"]
    assert "max_tokens too large" in message and "[redacted]" in message
    assert leaks(raw) == []


async def test_provider_5xx_is_502_with_its_message_redacted(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Fail(500, "backend vllm-0.vllm.svc.cluster.local:8000 (10.1.2.3) died"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    raw = await resp.text()
    assert resp.status == 502
    assert "died" in raw and leaks(raw) == [] and "cluster.local" not in raw


async def test_provider_429_is_429_rate_limit_error_with_its_retry_after(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Fail(429, f"Rate limit reached for {REFLECTED_KEY}", retry_after=7))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    raw = await resp.text()
    assert resp.status == 429
    assert resp.headers["retry-after"] == "7" and resp.headers["retry-after-ms"] == "7000"
    error = json.loads(raw)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "upstream_rate_limited"
    assert leaks(raw) == []


async def test_provider_429_without_retry_after_gets_the_gateways(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Fail(429, "slow down"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    assert resp.status == 429 and resp.headers["retry-after"] == "1"


async def test_openai_sdk_sees_a_rate_limit_error_not_an_auth_or_server_error(
    gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Fail(429, "slow down", retry_after=7))
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="fake/gpt", messages=USER)  # type: ignore[arg-type]
    finally:
        await client.close()
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"


async def test_openai_sdk_sees_a_provider_401_as_a_server_error_not_its_own_auth_error(
    gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Fail(401, REFLECTION))
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="fake/gpt", messages=USER)  # type: ignore[arg-type]
    finally:
        await client.close()
    assert not isinstance(info.value, openai.AuthenticationError)
    assert info.value.status_code == 502


async def test_anthropic_429_is_429_with_its_retry_after(
    gateway: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake_anthropic.script(Fail(429, "Number of request tokens has exceeded your rate limit",
                               retry_after=3))
    resp = await chat(http, gateway, {"model": "fake/claude", "messages": USER})
    assert resp.status == 429 and resp.headers["retry-after"] == "3"
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_mid_stream_error_event_is_mapped_and_redacted(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(ErrorEvent(after_events=2, message=REFLECTION,
                                  error_type="authentication_error"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER, "stream": True})
    raw = await resp.text()
    assert resp.status == 200  # the first chunks went out before the error
    last = [e for e in raw.split("\n\n") if e][-1]
    assert json.loads(last[6:])["error"]["code"] == "provider_auth_failed"
    assert leaks(raw) == []


async def test_mid_stream_rate_limit_event_says_rate_limit_error(
    gateway: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake_anthropic.script(ErrorEvent(after_events=4, message=f"slow down {REFLECTED_KEY}",
                                     error_type="rate_limit_error"))
    resp = await chat(http, gateway, {"model": "fake/claude", "messages": USER, "stream": True})
    raw = await resp.text()
    error = json.loads([e for e in raw.split("\n\n") if e][-1][6:])["error"]
    assert error["type"] == "rate_limit_error" and leaks(raw) == []


async def test_rate_limited_first_event_of_a_stream_is_a_429_before_any_byte(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(ErrorEvent(after_events=0, message="slow down",
                                  error_type="rate_limit_error"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER, "stream": True})
    assert resp.status == 429 and resp.headers["retry-after"] == "1"


def test_provider_key_and_host_are_redacted_exactly_whatever_their_shape() -> None:
    redact = Redactor.for_provider("http://llm.example.org:8000/v1", "plainsecret")
    err = upstream_error("p", 404, json.dumps(
        {"error": {"message": "plainsecret is not valid at llm.example.org:8000"}}).encode(),
        {}, redact)
    assert "plainsecret" not in err.message and "llm.example.org" not in err.message
    assert err.status == 404


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: at once
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_retry_after_read_as_seconds_milliseconds_or_a_date(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_s(headers) == seconds


async def test_rate_limit_still_falls_back_to_the_next_model(
    gateway: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    http: aiohttp.ClientSession,
) -> None:
    fake_openai.script(Fail(429, "slow down", retry_after=0))
    fake_anthropic.script(Reply(text="from claude"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "models": ["fake/claude"],
                                      "messages": USER})
    assert resp.status == 200 and resp.headers["x-model"] == "fake/claude"
