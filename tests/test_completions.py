"""`/v1/completions` (legacy text completions): passed through to OpenAI-compatible
providers; a 400 naming the model for one that does not serve it."""

from __future__ import annotations

import openai
import pytest
from dialect_support import cost, records
from fakes import Fail, FakeAnthropic, FakeOpenAI, Reply
from harness import ADMIN_KEY, Gateway


def client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0)


async def test_completions_pass_through_with_fill_in_the_middle(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="return a + b", prompt_tokens=12, completion_tokens=5))
    c = client(dgw)
    resp = await c.completions.create(model="d/gpt", prompt="def add(a, b):\n    ",
                                      suffix="\n\nprint(add(1, 2))", max_tokens=20,
                                      temperature=0)
    sent = fake_openai.last
    assert sent.path == "/v1/completions"
    assert sent.json["model"] == "gpt-4o-mini-2024-07-18"
    assert sent.json["suffix"] == "\n\nprint(add(1, 2))" and sent.json["temperature"] == 0
    assert resp.choices[0].text == "return a + b"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    [rec] = await records(dgw, 1)
    assert rec["route"] == "completions" and rec["cost_nusd"] == cost("d/gpt", 12, 5)
    await c.close()


async def test_completions_stream_is_piped_and_metered(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="one two three", prompt_tokens=7, completion_tokens=3))
    c = client(dgw)
    stream = await c.completions.create(model="d/gpt", prompt="Count:", stream=True,
                                        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert text == "one two three"
    assert usage is not None and usage.completion_tokens == 3
    assert fake_openai.last.json["stream_options"] == {"include_usage": True}
    [rec] = await records(dgw, 1)
    assert rec["stream"] == 1 and rec["cost_nusd"] == cost("d/gpt", 7, 3)
    await c.close()


async def test_completions_to_an_anthropic_model_is_a_400_naming_the_model(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    c = client(dgw)
    with pytest.raises(openai.BadRequestError) as bad:
        await c.completions.create(model="d/claude", prompt="Hi")
    assert "d/claude" in str(bad.value) and fake_anthropic.hits == 0
    await c.close()


async def test_completions_upstream_errors_and_missing_prompt(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    fake_openai.script(Fail(429, "slow down", retry_after=1))
    with pytest.raises(openai.RateLimitError):
        await c.completions.create(model="d/gpt", prompt="Hi")
    with pytest.raises(openai.BadRequestError) as bad:
        await c.completions.create(model="d/gpt", prompt=None)
    assert "prompt" in str(bad.value)
    await c.close()
