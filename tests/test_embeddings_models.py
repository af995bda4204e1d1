"""POST /v1/embeddings and GET /v1/models, including regions."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import aiohttp
import openai
import pytest
from fakes import FakeAnthropic, FakeOpenAI, embedding_for
from harness import ADMIN_KEY, Gateway, gateway_settings, running_gateway


async def test_embeddings_for_a_list_via_the_sdk(gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    result = await client.embeddings.create(model="fake/embed", input=["hello world", "bye"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(embedding_for("hello world"))
    assert fake_openai.last.json["model"] == "text-embedding-3-small"
    assert result.usage.prompt_tokens == 3
    await client.close()


async def test_embeddings_for_a_string_carry_cost(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await http.post(gateway.url + "/v1/embeddings", headers=gateway.headers,
                           json={"model": "fake/embed", "input": "one two three four"})
    body = await resp.json()
    assert resp.status == 200 and len(body["data"]) == 1
    assert body["usage"]["cost"] == pytest.approx(4 * 0.02 / 1e6)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x"}, 400, "model"),
        ({"model": "fake/embed"}, 400, "input"),
        ({"model": "fake/embed", "input": []}, 400, "input"),
        ({"model": "fake/embed", "input": [1.5, "x"]}, 400, "input"),
        ({"model": "fake/gpt", "input": "x"}, 404, "model"),
        ({"model": "nope", "input": "x"}, 404, "model"),
    ],
)
async def test_bad_embedding_requests_are_refused_naming_the_field(
    gateway: Gateway, http: aiohttp.ClientSession, body: object, status: int, param: str
) -> None:
    resp = await http.post(gateway.url + "/v1/embeddings", headers=gateway.headers, json=body)
    assert resp.status == status
    assert (await resp.json())["error"]["param"] == param


async def test_models_lists_the_region_catalog_with_prices(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    models = {m.id: m for m in (await client.models.list()).data}
    assert "fake/gpt" in models and "simulated/chat" in models
    assert "fakeeu/gpt" not in models  # an EU-only provider is not served by a global instance
    extra = models["fake/gpt"].model_extra or {}
    assert extra["input_price"] == 0.15 and extra["output_price"] == 0.60
    assert extra["context_window"] == 128000
    assert models["fake/gpt"].owned_by == "fake"
    await client.close()


async def test_eu_instance_lists_and_serves_only_eu_providers(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession,
) -> None:
    from conftest import UPSTREAM_SECRET, fake_provider_toml

    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = 'region = "eu"\ndefault_model = "simulated/chat"\n' + fake_provider_toml(
        fake_openai.base_url, fake_anthropic.base_url)
    async with running_gateway(gateway_settings(tmp_path, toml)) as gw:
        resp = await http.get(gw.url + "/v1/models", headers=gw.headers)
        ids = {m["id"] for m in (await resp.json())["data"]}
        assert "fakeeu/gpt" in ids and "simulated/chat" in ids
        assert "fake/gpt" not in ids and "openai/gpt-4o-mini" not in ids
        refused = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers, json={
            "model": "fake/gpt", "messages": [{"role": "user", "content": "x"}]})
        assert refused.status == 404
        assert "region `eu`" in (await refused.json())["error"]["message"]
        served = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers, json={
            "model": "fakeeu/gpt", "messages": [{"role": "user", "content": "x"}]})
        assert served.status == 200
        assert fake_openai.hits == 1


async def test_simulated_model_answers_with_real_usage(
    tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        resp = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers, json={
            "model": "simulated/chat", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello there"}]})
        body = await resp.json()
        words = body["choices"][0]["message"]["content"].split()
        assert len(words) == 5 and body["usage"]["completion_tokens"] == 5
        assert body["choices"][0]["finish_reason"] == "length"
        again = await (await http.post(gw.url + "/v1/chat/completions", headers=gw.headers, json={
            "model": "simulated/chat", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello there"}]})).json()
        assert again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]


async def test_models_retrieve_via_the_sdk_takes_ids_with_a_slash(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    model = await client.models.retrieve("simulated/chat")
    assert (model.id, model.object, model.owned_by) == ("simulated/chat", "model", "simulated")
    extra = (await client.models.retrieve("fake/gpt")).model_extra or {}
    assert extra["input_price"] == 0.15 and extra["type"] == "chat"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("nope/model")
    assert missing.value.code == "model_not_found"
    assert "nope/model" in missing.value.message
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("fakeeu/gpt")  # another region's model is not served here
    await client.close()


async def test_simulated_embeddings_honour_dimensions_and_base64_via_the_sdk(
    gateway: Gateway,
) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    # The SDK asks for base64 by default and decodes it (openai-node does the same).
    default = await client.embeddings.create(model="simulated/embed", input="hello",
                                             dimensions=8)
    assert len(default.data[0].embedding) == 8
    assert any(abs(v) > 0.01 for v in default.data[0].embedding)
    floats = await client.embeddings.create(model="simulated/embed", input="hello",
                                            dimensions=8, encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(default.data[0].embedding, abs=1e-6)
    raw = await client.embeddings.create(model="simulated/embed", input=["hello", "bye"],
                                         dimensions=300, encoding_format="base64")
    packed = base64.b64decode(raw.data[0].embedding)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert len(decoded) == 300
    assert decoded[:8] == pytest.approx(floats.data[0].embedding, abs=1e-6)
    unsized = await client.embeddings.create(model="simulated/embed", input="hello",
                                             encoding_format="float")
    assert len(unsized.data[0].embedding) == 16
    await client.close()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": 1_000_000}, "dimensions"),
        ({"dimensions": "8"}, "dimensions"),
        ({"encoding_format": "hex"}, "encoding_format"),
    ],
)
async def test_bad_simulated_embedding_options_are_refused_naming_the_field(
    gateway: Gateway, http: aiohttp.ClientSession, extra: dict[str, object], param: str
) -> None:
    resp = await http.post(gateway.url + "/v1/embeddings", headers=gateway.headers,
                           json={"model": "simulated/embed", "input": "x", **extra})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_a_model_of_the_wrong_kind_is_refused_in_plain_words(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await http.post(gateway.url + "/v1/embeddings", headers=gateway.headers,
                           json={"model": "simulated/chat", "input": "x"})
    message = (await resp.json())["error"]["message"]
    assert resp.status == 404 and "an chat" not in message
    assert message == "The model `simulated/chat` serves chat requests, not this endpoint."
