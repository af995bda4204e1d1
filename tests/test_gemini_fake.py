"""The fake Gemini API is faithful: Google's own SDK (`google-genai`) talks to it.

Before the gateway is tested against the fake, the SDK that speaks the real API reads the
fake's answers, streams, usage and errors as it reads Google's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakes import Fail
from fakes.gemini_server import FakeGemini, GeminiReply
from google import genai
from google.genai import errors, types

KEY = "AIza-fake-key-for-tests-0123456789"


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as server:
        yield server


def client(fake: FakeGemini, key: str = KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=fake.root_url))


async def test_sdk_reads_text_thoughts_and_usage(fake: FakeGemini) -> None:
    fake.script(GeminiReply(text="Sunny today.", prompt_tokens=40, completion_tokens=3,
                            thoughts_tokens=11, cached_tokens=8, thought="Check the sky."))
    resp = await client(fake).aio.models.generate_content(
        model="gemini-2.5-flash", contents="Weather?",
        config=types.GenerateContentConfig(system_instruction="Be terse.", max_output_tokens=50),
    )
    assert resp.text == "Sunny today."
    assert resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.STOP
    parts = resp.candidates[0].content.parts  # type: ignore[union-attr]
    assert parts and parts[0].thought is True
    u = resp.usage_metadata
    assert u is not None
    assert (u.prompt_token_count, u.candidates_token_count, u.thoughts_token_count,
            u.cached_content_token_count) == (40, 3, 11, 8)
    sent = fake.last
    assert sent.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json["systemInstruction"]["parts"] == [{"text": "Be terse."}]
    assert sent.json["generationConfig"]["maxOutputTokens"] == 50


async def test_sdk_streams_pieces_and_a_function_call(fake: FakeGemini) -> None:
    fake.script(GeminiReply(text="Let me check.", tool_calls=[("get_weather", '{"city":"Paris"}')],
                            prompt_tokens=9, completion_tokens=7))
    chunks = [c async for c in await client(fake).aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Weather in Paris?")]
    assert "".join(c.text or "" for c in chunks[:-1]) == "Let me check."
    last = chunks[-1]
    assert last.function_calls and last.function_calls[0].name == "get_weather"
    assert last.function_calls[0].args == {"city": "Paris"}
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata and last.usage_metadata.candidates_token_count == 7
    assert fake.last.path.endswith(":streamGenerateContent")


async def test_sdk_sees_throttling_with_retry_info_and_a_wrong_key(fake: FakeGemini) -> None:
    fake.retry_delay = "17s"
    fake.script(Fail(429, "Quota exceeded."))
    with pytest.raises(errors.ClientError) as caught:
        await client(fake).aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    assert caught.value.details["error"]["details"][0]["retryDelay"] == "17s"
    with pytest.raises(errors.ClientError) as caught:
        await client(fake, key="wrong").aio.models.generate_content(
            model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 403 and caught.value.status == "PERMISSION_DENIED"


async def test_sdk_reads_a_max_tokens_cut_and_structured_output(fake: FakeGemini) -> None:
    fake.script(GeminiReply(text='{"a": 1}', finish_reason="MAX_TOKENS"))
    resp = await client(fake).aio.models.generate_content(
        model="gemini-2.5-flash", contents="json please",
        config=types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema={"type": "object", "properties": {"a": {"type": "integer"}}},
        ),
    )
    assert resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert resp.text == '{"a": 1}'
    config = fake.last.json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"]["a"] == {"type": "integer"}


async def test_sdk_embeds_through_batch_embed_contents(fake: FakeGemini) -> None:
    resp = await client(fake).aio.models.embed_content(
        model="gemini-embedding-001", contents=["alpha", "beta"],
        config=types.EmbedContentConfig(output_dimensionality=4))
    assert resp.embeddings and [len(e.values or []) for e in resp.embeddings] == [4, 4]
    assert fake.last.path.endswith("/models/gemini-embedding-001:batchEmbedContents")
