"""POST /v1/chat/completions, non-streaming, against a fake OpenAI-compatible upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from polling import poll
from conftest import UPSTREAM_SECRET
from fakes import Fail, FakeAnthropic, FakeOpenAI, Hang, Reply, Reset
from harness import Gateway

USER = [{"role": "user", "content": "Say hello"}]


async def chat(http: aiohttp.ClientSession, gw: Gateway, body: object) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/chat/completions", json=body, headers=gw.headers)


async def test_unknown_fields_reach_upstream_byte_for_byte(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    raw = (
        b'{"model": "fake/gpt", "messages": [{"role": "user", "content": "hi"}],'
        b' "seed": 7, "logit_bias": {"50256": -100},'
        b' "x_vendor_flag": {"nested": [1, 2.50, "three"]}}'
    )
    resp = await http.post(
        gateway.url + "/v1/chat/completions",
        data=raw,
        headers={**gateway.headers, "Content-Type": "application/json"},
    )
    assert resp.status == 200
    sent = fake_openai.last.body
    assert b'"x_vendor_flag":{"nested": [1, 2.50, "three"]}' in sent
    assert b'"logit_bias":{"50256": -100}' in sent
    assert b'"messages":[{"role": "user", "content": "hi"}]' in sent
    assert fake_openai.last.json["model"] == "gpt-4o-mini-2024-07-18"


async def test_requesty_metadata_is_stripped_before_upstream(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "fake/gpt",
        "messages": USER,
        "requesty": {"user_id": "u1", "tags": ["a"], "extra": {"team": "x"}},
        "models": ["fake/gpt"],
    }
    resp = await http.post(
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={**gateway.headers, "X-Requesty-Team": "growth"},
    )
    assert resp.status == 200
    sent = fake_openai.last.json
    assert "requesty" not in sent and "models" not in sent
    assert not any(h.startswith("x-requesty") for h in fake_openai.last.headers)
    assert fake_openai.last.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"


async def test_response_carries_cost_from_catalog_prices(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Reply(text="one two three", prompt_tokens=1000, completion_tokens=500,
                             cached_tokens=200))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    body = await resp.json()
    usage = body["usage"]
    assert usage["prompt_tokens"] == 1000 and usage["completion_tokens"] == 500
    # 800 fresh × 0.15 + 200 cached × 0.075 + 500 × 0.60, per million tokens
    assert usage["cost"] == pytest.approx((800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 200
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert resp.headers["x-model"] == "fake/gpt"
    assert resp.headers["x-provider"] == "fake"


async def test_missing_model_uses_configured_default(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession,
) -> None:
    from conftest import fake_provider_toml
    from harness import gateway_settings, running_gateway

    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = 'default_model = "fake/gpt"\n' + fake_provider_toml(
        fake_openai.base_url, fake_anthropic.base_url
    )
    async with running_gateway(gateway_settings(tmp_path, toml)) as gw:
        resp = await chat(http, gw, {"messages": USER})
        assert resp.status == 200
        assert fake_openai.last.json["model"] == "gpt-4o-mini-2024-07-18"


async def test_spec_default_model_is_gpt_4o_mini(gateway: Gateway) -> None:
    assert gateway.settings.default_model == "openai/gpt-4o-mini"


async def test_tools_tool_choice_response_format_and_images_pass_through(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    fake_openai.script(Reply(tool_calls=[("get_weather", '{"city": "Paris"}')]))
    resp = await chat(http, gateway, {
        "model": "fake/gpt",
        "messages": [{"role": "user", "content": content}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"},
    })
    assert resp.status == 200
    sent = fake_openai.last.json
    assert sent["tools"] == tools
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["messages"][0]["content"] == content
    body = await resp.json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_sdk_gets_a_completion(gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-test-admin-0123456789",
                                max_retries=0)
    fake_openai.script(Reply(text="Hi there", prompt_tokens=9, completion_tokens=2))
    result = await client.chat.completions.create(model="fake/gpt", messages=USER)  # type: ignore[arg-type]
    assert result.choices[0].message.content == "Hi there"
    assert result.usage is not None and result.usage.total_tokens == 11
    assert result.usage.model_extra is not None and result.usage.model_extra["cost"] > 0
    await client.close()


# --- errors ------------------------------------------------------------------------


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, object]:
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    return body["error"]  # type: ignore[no-any-return]


async def test_malformed_json_is_400(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp = await http.post(gateway.url + "/v1/chat/completions", data=b'{"model": ',
                           headers=gateway.headers)
    assert resp.status == 400
    err = await error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert "not valid JSON" in str(err["message"])


async def test_body_that_is_not_an_object_is_400(
    gateway: Gateway, http: aiohttp.ClientSession,
) -> None:
    resp = await http.post(gateway.url + "/v1/chat/completions", data=b"[1, 2]",
                           headers=gateway.headers)
    assert resp.status == 400


async def test_missing_messages_is_400_naming_the_field(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await chat(http, gateway, {"model": "fake/gpt"})
    assert resp.status == 400
    err = await error_of(resp)
    assert err["param"] == "messages" and "messages" in str(err["message"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 5, "messages": USER}, "model"),
        ({"model": "fake/gpt", "messages": "hi"}, "messages"),
        ({"model": "fake/gpt", "messages": [{"role": "robot", "content": "x"}]},
         "messages[0].role"),
        ({"model": "fake/gpt", "messages": [{"content": "x"}]}, "messages[0]"),
        ({"model": "fake/gpt", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "fake/gpt", "messages": USER, "max_tokens": "ten"}, "max_tokens"),
        ({"model": "fake/gpt", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "fake/gpt", "messages": []}, "messages"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, body: object, param: str
) -> None:
    resp = await chat(http, gateway, body)
    assert resp.status == 400
    err = await error_of(resp)
    assert err["param"] == param
    assert fake_openai.hits == 0


async def test_unknown_model_is_404_model_not_found(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await chat(http, gateway, {"model": "nope/model", "messages": USER})
    assert resp.status == 404
    err = await error_of(resp)
    assert err["code"] == "model_not_found"
    assert "does not exist" in str(err["message"]) and "nope/model" in str(err["message"])


async def test_model_outside_the_region_is_404_saying_so(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await chat(http, gateway, {"model": "fakeeu/gpt", "messages": USER})
    assert resp.status == 404
    err = await error_of(resp)
    assert err["code"] == "model_not_found"
    assert "not available in region `global`" in str(err["message"])


async def test_body_over_the_limit_is_413(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    big = "x" * (gateway.settings.max_body_bytes + 10)
    resp = await chat(http, gateway,
                      {"model": "fake/gpt", "messages": [{"role": "user", "content": big}]})
    assert resp.status == 413
    err = await error_of(resp)
    assert err["code"] == "request_too_large"


async def test_upstream_4xx_passes_through_with_its_message(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Fail(status=400, message="max_tokens is too large for this model"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    assert resp.status == 400
    err = await error_of(resp)
    assert "max_tokens is too large for this model" in str(err["message"])


@pytest.mark.parametrize("status", [500, 503])
async def test_upstream_5xx_is_502(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, status: int
) -> None:
    fake_openai.script(Fail(status=status, message="server exploded"))
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    assert resp.status == 502
    err = await error_of(resp)
    assert str(status) in str(err["message"])


async def test_upstream_reset_is_502_without_internal_address(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Reset())
    resp = await chat(http, gateway, {"model": "fake/gpt", "messages": USER})
    assert resp.status == 502
    text = await resp.text()
    assert "127.0.0.1" not in text and UPSTREAM_SECRET not in text and "Traceback" not in text


async def test_upstream_unreachable_is_502(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
) -> None:
    from conftest import fake_provider_toml
    from harness import gateway_settings, running_gateway

    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = fake_provider_toml("http://127.0.0.1:9/v1", fake_anthropic.base_url)
    async with running_gateway(gateway_settings(tmp_path, toml)) as gw:
        resp = await chat(http, gw, {"model": "fake/gpt", "messages": USER})
        assert resp.status == 502
        text = await resp.text()
        assert "127.0.0.1" not in text and ":9" not in text


async def test_upstream_timeout_is_504(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession,
) -> None:
    from conftest import fake_provider_toml
    from harness import gateway_settings, running_gateway

    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url).replace(
        "timeout_s = 10", "timeout_s = 0.5", 1
    )
    fake_openai.script(Hang())
    async with running_gateway(gateway_settings(tmp_path, toml)) as gw:
        resp = await chat(http, gw, {"model": "fake/gpt", "messages": USER})
        assert resp.status == 504
        err = await error_of(resp)
        assert err["type"] == "timeout_error"


async def test_missing_key_is_401(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp = await http.post(gateway.url + "/v1/chat/completions", json={"messages": USER})
    assert resp.status == 401
    assert (await error_of(resp))["type"] == "authentication_error"


async def test_wrong_key_is_401(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp = await http.post(gateway.url + "/v1/chat/completions", json={"messages": USER},
                           headers={"Authorization": "Bearer sk-wrong"})
    assert resp.status == 401


async def test_every_response_has_a_request_id_and_echoes_the_clients(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await http.post(gateway.url + "/v1/chat/completions", json={"messages": USER},
                           headers={"x-request-id": "req-abc-123"})
    assert resp.headers["x-request-id"] == "req-abc-123"
    resp = await http.get(gateway.url + "/healthz")
    assert len(resp.headers["x-request-id"]) >= 16


async def test_unknown_route_is_openai_shaped_404(
    gateway: Gateway, http: aiohttp.ClientSession,
) -> None:
    resp = await http.get(gateway.url + "/v1/nothing-here", headers=gateway.headers)
    assert resp.status == 404
    await error_of(resp)


async def test_error_bodies_are_json_not_html(
    gateway: Gateway, http: aiohttp.ClientSession,
) -> None:
    resp = await http.get(gateway.url + "/v1/chat/completions", headers=gateway.headers)
    assert resp.status == 405
    assert json.loads(await resp.text())["error"]["type"] == "invalid_request_error"


async def test_a_reused_client_request_id_loses_no_record(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:

    body = {"model": "simulated/chat", "messages": USER}
    for _ in range(2):
        resp = await http.post(gateway.url + "/v1/chat/completions", json=body,
                               headers={**gateway.headers, "x-request-id": "same-id-every-time"})
        assert resp.status == 200
        assert resp.headers["x-request-id"] == "same-id-every-time"

    async def usage() -> Any:
        return await (await http.get(gateway.url + "/v1/organization/usage",
                                     headers=gateway.headers)).json()

    report = await poll(usage, lambda r: r["total_requests"] == 2, 5)  # write-behind
    assert report["total_requests"] == 2
