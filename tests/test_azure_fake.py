"""The fake Azure OpenAI resource is faithful: openai's own `AzureOpenAI` client talks to it.

These run before the gateway is tested against the fake (tests/test_azure_gateway.py):
what the SDK accepts here is what Azure sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from fakes import Fail, FakeAzure, Reply
from fakes.azure_server import API_KEY

API_VERSION = "2024-10-21"


@pytest.fixture
async def azure() -> AsyncIterator[FakeAzure]:
    deployments = {"gpt-4o-eu": "gpt-4o-2024-11-20", "embed-eu": "text-embedding-3-small"}
    async with FakeAzure(deployments) as fake:
        yield fake


def client(fake: FakeAzure, api_key: str = API_KEY) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=fake.base_url, api_version=API_VERSION, api_key=api_key, max_retries=0
    )


async def test_sdk_reads_a_completion_with_azure_filter_results(azure: FakeAzure) -> None:
    azure.script(Reply(text="Bonjour.", prompt_tokens=9, completion_tokens=2))
    async with client(azure) as sdk:
        done = await sdk.chat.completions.create(
            model="gpt-4o-eu", messages=[{"role": "user", "content": "Hi"}]
        )
    assert done.choices[0].message.content == "Bonjour."
    assert done.model == "gpt-4o-2024-11-20"  # the deployment's model, not its name
    assert done.usage is not None and done.usage.prompt_tokens == 9
    sent = azure.last
    assert sent.path == "/openai/deployments/gpt-4o-eu/chat/completions"
    assert sent.headers["api-key"] == API_KEY
    assert (done.model_extra or {})["prompt_filter_results"][0]["prompt_index"] == 0


async def test_sdk_streams_through_the_filter_preamble_with_usage(azure: FakeAzure) -> None:
    azure.script(Reply(text="one two three", tool_calls=[("f", '{"a": 1}')],
                       prompt_tokens=5, completion_tokens=4))
    chunks = []
    async with client(azure) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-4o-eu", messages=[{"role": "user", "content": "Hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            chunks.append(chunk)
    preamble = chunks[0]
    assert preamble.choices == [] and preamble.id == "" and preamble.usage is None
    assert (preamble.model_extra or {})["prompt_filter_results"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    args = "".join(
        tc.function.arguments or ""
        for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()
        if tc.function
    )
    assert args == '{"a": 1}'
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_sdk_embeds_through_a_deployment(azure: FakeAzure) -> None:
    async with client(azure) as sdk:
        out = await sdk.embeddings.create(model="embed-eu", input=["a b", "c"])
    assert len(out.data) == 2 and out.usage.prompt_tokens == 3
    assert azure.last.path == "/openai/deployments/embed-eu/embeddings"


async def test_sdk_sees_azure_errors_as_azure_sends_them(azure: FakeAzure) -> None:
    async with client(azure, api_key="wrong") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(
                model="gpt-4o-eu", messages=[{"role": "user", "content": "x"}])
    async with client(azure) as sdk:
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}])
        assert missing.value.code == "DeploymentNotFound"
        azure.script(Fail(429, "Requests ... Please retry after 6 seconds.", retry_after=6))
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.chat.completions.create(
                model="gpt-4o-eu", messages=[{"role": "user", "content": "x"}])
        assert limited.value.response.headers["retry-after-ms"] == "6000"
        azure.script(Fail(400, "", error_type="content_filter"))
        with pytest.raises(openai.BadRequestError) as filtered:
            await sdk.chat.completions.create(
                model="gpt-4o-eu", messages=[{"role": "user", "content": "x"}])
        assert filtered.value.code == "content_filter"
        body = filtered.value.body
        assert isinstance(body, dict)
        assert body["innererror"]["content_filter_result"]["violence"]["filtered"] is True
