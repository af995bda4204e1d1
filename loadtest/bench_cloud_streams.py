"""CPU per streamed answer in each cloud protocol's stream adapter, against OpenAI's
pass-through: what translating Azure's and Bedrock's streams costs the gateway.

    PYTHONPATH=. python loadtest/bench_cloud_streams.py

Each adapter reads the same answer (100 text deltas, a finish, usage) from an in-memory
response, one upstream event per read as a paced stream brings them, rendered by the
test fakes (tests/fakes: OpenAI SSE, Azure SSE with its filter preamble, Bedrock
eventstream frames). Prints process CPU microseconds per stream, best of five rounds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes import Reply, azure_server, bedrock_server, openai_server

from proxy.providers.base import ChatStream
from proxy.providers.bedrock import BedrockStream, ConverseTranslator
from proxy.providers.openai import OpenAIStream
from proxy.providers.redact import PATTERNS_ONLY


class Reads:
    """What `h1.Response` gives a stream adapter: the body read by read."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._each()

    async def _each(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


async def cpu_us(make: Callable[[], ChatStream], n: int = 300) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            async for _events in make():
                pass
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


async def main() -> None:
    reply = Reply(chunks=[" word"] * 100, prompt_tokens=10, completion_tokens=100)
    req: dict[str, Any] = {"model": "m", "stream_options": {"include_usage": True}}
    adapters: dict[str, Callable[[], ChatStream]] = {
        "openai (pass-through)": lambda: OpenAIStream(
            "p", Reads(openai_server.chunks(reply, req, 1))),  # type: ignore[arg-type]
        "azure (preamble dropped)": lambda: OpenAIStream(
            "p", Reads(azure_server.chunks(reply, req, 1))),  # type: ignore[arg-type]
        "bedrock (eventstream translated)": lambda: BedrockStream(
            ConverseTranslator("m", "p", PATTERNS_ONLY, "rid"),
            Reads(bedrock_server.frames(reply, req, 1))),  # type: ignore[arg-type]
    }
    for name, make in adapters.items():
        print(f"{name:34} {await cpu_us(make):7.0f} us CPU per 100-delta stream")


if __name__ == "__main__":
    asyncio.run(main())
