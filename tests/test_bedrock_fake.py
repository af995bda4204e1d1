"""The fake Bedrock Runtime is faithful: boto3's own `bedrock-runtime` client talks to it.

boto3 signs with SigV4 and decodes the event stream itself, so a request it makes passing
the fake's signature check, and frames it decodes, prove the fake's side of both; these
run before the gateway is tested against the fake (tests/test_bedrock_gateway.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError
from fakes import ErrorEvent, Fail, FakeBedrock, Reply
from fakes.bedrock_server import ACCESS_KEY, REGION, SECRET_KEY, encode_frame, event_frame

MODEL = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"
USER = [{"role": "user", "content": [{"text": "Weather in Frankfurt?"}]}]


@pytest.fixture
async def bedrock() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock() as fake:
        yield fake


def client(fake: FakeBedrock, secret: str = SECRET_KEY, key: str = ACCESS_KEY) -> Any:
    return boto3.client(
        "bedrock-runtime", endpoint_url=fake.base_url, region_name=REGION,
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


async def run(call: Callable[[], Any]) -> Any:
    """boto3 blocks: it runs in a thread while the fake serves on this loop."""
    return await asyncio.to_thread(call)


def test_frames_encoded_by_the_fake_decode_with_botocore_and_a_bad_crc_is_refused() -> None:
    buf = EventStreamBuffer()
    buf.add_data(event_frame("messageStart", {"role": "assistant"}))
    buf.add_data(encode_frame({":message-type": "event", ":event-type": "x"}, b"{}")[:10])
    (message,) = list(buf)  # the half frame waits for the rest
    # botocore-stubs types `headers` as int; botocore sets the parsed header dict.
    assert cast("dict[str, Any]", message.headers)[":event-type"] == "messageStart"
    assert message.payload.startswith(b'{"role":"assistant"')
    broken = bytearray(event_frame("messageStop", {"stopReason": "end_turn"}))
    broken[-1] ^= 0xFF
    bad = EventStreamBuffer()
    bad.add_data(bytes(broken))
    with pytest.raises(ChecksumMismatch):
        list(bad)


async def test_boto3_converse_is_signed_and_reads_text_tools_and_cache_usage(
    bedrock: FakeBedrock,
) -> None:
    bedrock.script(Reply(text="Cloudy.", tool_calls=[("get_weather", '{"city": "Frankfurt"}')],
                         prompt_tokens=30, completion_tokens=8, cached_tokens=500,
                         cache_write_tokens=40))
    out = await run(lambda: client(bedrock).converse(modelId=MODEL, messages=USER))
    content = out["output"]["message"]["content"]
    assert content[0] == {"text": "Cloudy."}
    assert content[1]["toolUse"]["input"] == {"city": "Frankfurt"}
    assert out["stopReason"] == "tool_use"
    assert out["usage"] == {"inputTokens": 30, "outputTokens": 8, "totalTokens": 578,
                            "cacheReadInputTokens": 500, "cacheWriteInputTokens": 40}
    # The model id's ':' travels encoded in one path segment, as boto3 sends it.
    assert bedrock.last.path == f"/model/{MODEL}/converse"
    assert bedrock.signatures_checked == 1


async def test_boto3_converse_stream_decodes_every_event_in_order(bedrock: FakeBedrock) -> None:
    bedrock.script(Reply(text="Rain later.", tool_calls=[("get_weather", '{"city": "Bonn"}')],
                         prompt_tokens=11, completion_tokens=5))

    def events() -> list[dict[str, Any]]:
        return list(client(bedrock).converse_stream(modelId=MODEL, messages=USER)["stream"])

    seen = await run(events)
    kinds = [next(iter(e)) for e in seen]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in seen
                   if "contentBlockDelta" in e)
    args = "".join(e["contentBlockDelta"]["delta"].get("toolUse", {}).get("input", "")
                   for e in seen if "contentBlockDelta" in e)
    assert (text, args) == ("Rain later.", '{"city": "Bonn"}')
    start = next(e["contentBlockStart"] for e in seen if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "get_weather" and start["contentBlockIndex"] == 1
    assert seen[-1]["metadata"]["usage"]["inputTokens"] == 11
    assert bedrock.last.path.endswith("/converse-stream")


async def test_a_wrong_secret_or_unknown_key_is_refused_as_aws_refuses(
    bedrock: FakeBedrock,
) -> None:
    with pytest.raises(ClientError) as bad_sig:
        await run(lambda: client(bedrock, secret="not-the-secret").converse(
            modelId=MODEL, messages=USER))
    assert bad_sig.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(ClientError) as bad_key:
        await run(lambda: client(bedrock, key="AKIAOTHERKEY00000000").converse(
            modelId=MODEL, messages=USER))
    assert bad_key.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert bedrock.hits == 0


async def test_boto3_reads_the_fake_s_errors_and_stream_exceptions(bedrock: FakeBedrock) -> None:
    bedrock.script(Fail(429, "Too many requests, please wait before trying again."))
    with pytest.raises(ClientError) as limited:
        await run(lambda: client(bedrock).converse(modelId=MODEL, messages=USER))
    assert limited.value.response["Error"]["Code"] == "ThrottlingException"
    assert limited.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    bedrock.script(ErrorEvent(after_events=2, message="Too many tokens",
                              error_type="throttlingException"))

    def stream() -> list[Any]:
        return list(client(bedrock).converse_stream(modelId=MODEL, messages=USER)["stream"])

    with pytest.raises(EventStreamError) as broke:
        await run(stream)
    assert broke.value.response["Error"]["Code"] == "throttlingException"


async def test_the_fake_refuses_what_bedrock_refuses(bedrock: FakeBedrock) -> None:
    with pytest.raises(ClientError) as starts_with_assistant:
        await run(lambda: client(bedrock).converse(
            modelId=MODEL, messages=[{"role": "assistant", "content": [{"text": "hi"}]}]))
    assert starts_with_assistant.value.response["Error"]["Code"] == "ValidationException"
    tool_use = [*USER, {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]}]
    with pytest.raises(ClientError) as undeclared:
        await run(lambda: client(bedrock).converse(modelId=MODEL, messages=tool_use))
    assert "toolConfig" in undeclared.value.response["Error"]["Message"]
