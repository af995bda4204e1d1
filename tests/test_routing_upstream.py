"""The attempt loop driven by the real OpenAI adapter against the fake OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakes import Fail, FakeOpenAI, Hang, Reply
from msgspec import Raw

from proxy.catalog import Model, _model
from proxy.config import ModelConfig, ProviderConfig
from proxy.errors import UpstreamError
from proxy.providers.base import ChatCall, ChatStream, Completion
from proxy.providers.openai import OpenAIProvider
from proxy.routing import AttemptLog, Routing, Step
from proxy.wire import Message, decode_body

BODY = b'{"model":"x","messages":[{"role":"user","content":"Hi"}]}'
M1 = _model(ModelConfig(id="fake/one", provider="fake", upstream="one"))
M2 = _model(ModelConfig(id="fake/two", provider="fake", upstream="two"))


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeOpenAI, OpenAIProvider]]:
    async with FakeOpenAI() as fake:
        provider = OpenAIProvider("fake", ProviderConfig(protocol="openai", base_url=fake.base_url),
                                  None)
        await provider.start()
        try:
            yield fake, provider
        finally:
            await provider.close()


def call(model: Model, stream: bool = False) -> ChatCall:
    fields = decode_body(BODY)
    if stream:
        fields["stream"] = Raw(b"true")
    return ChatCall(model, fields, [Message(role="user", content="Hi")], stream, None)


async def test_provider_errors_retry_honour_retry_after_and_fall_back(
    upstream: tuple[FakeOpenAI, OpenAIProvider],
) -> None:
    fake, provider = upstream
    fake.script(Fail(503, retry_after=0), Fail(429, retry_after=0), Fail(500),
                Reply(text="from two"))
    routing = Routing()
    log = AttemptLog()

    async def attempt(model: Model) -> Completion:
        return await provider.chat(call(model))

    done = await routing.run([Step(M1, 2), Step(M2, 0)], attempt, log)
    assert done.finish_reason == "stop"
    assert [r.json["model"] for r in fake.requests] == ["one", "one", "one", "two"]
    assert [(f.reason, f.action) for f in log.failures] == [
        ("503", "retry"), ("429", "retry"), ("500", "fallback")]
    assert log.model is M2 and log.attempts == 4 and log.waited_s == 0


async def test_provider_400_is_returned_without_fallback(
    upstream: tuple[FakeOpenAI, OpenAIProvider],
) -> None:
    fake, provider = upstream
    fake.script(Fail(400, message="bad messages"))

    async def attempt(model: Model) -> Completion:
        return await provider.chat(call(model))

    with pytest.raises(UpstreamError) as info:
        await Routing().run([Step(M1, 3), Step(M2, 3)], attempt, AttemptLog())
    assert info.value.status == 400 and fake.hits == 1


async def test_stream_without_a_first_event_in_time_falls_over(
    upstream: tuple[FakeOpenAI, OpenAIProvider],
) -> None:
    fake, provider = upstream
    fake.script(Hang(headers=True), Reply(text="streamed from two"))
    opened: list[ChatStream] = []

    async def attempt(model: Model) -> tuple[ChatStream, bytes | None]:
        # open the stream and take its first event: that is the whole attempt
        stream = await provider.stream(call(model, stream=True))
        opened.append(stream)
        try:
            first = await anext(aiter(stream), None)
        except BaseException:
            await stream.aclose()
            raise
        return stream, first

    log = AttemptLog()
    stream, first = await Routing().run([Step(M1, 0), Step(M2, 0)], attempt, log,
                                        attempt_timeout=lambda m: 0.3)
    assert first is not None and b'"role":"assistant"' in first
    assert [(f.model.id, f.reason) for f in log.failures] == [("fake/one", "timeout")]
    assert log.model is M2 and log.attempt_s < 0.3
    await stream.aclose()
