"""What every provider adapter implements, and the shapes it hands back.

An adapter turns one `ChatCall` (the client's OpenAI-shaped request, already validated)
into its provider's wire format, and the provider's answer back into OpenAI shapes:
a `Completion` for a plain call, a `ChatStream` of OpenAI chunk payloads for a stream.
Failures are raised as `errors.UpstreamError` (status mapped, message safe to show).
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

from msgspec import Raw

from ..catalog import Model, Usage
from ..config import ProviderConfig
from ..errors import InvalidRequest
from ..stats import PoolStats
from ..wire import Message
from .h1 import Pool, Proxies


class ChatCall:
    """One upstream attempt: the request as the client sent it, for one model."""

    __slots__ = ("auto_cache", "fields", "max_tokens", "messages", "model", "stream")

    def __init__(
        self,
        model: Model,
        fields: dict[str, Raw],
        messages: list[Message],
        stream: bool,
        max_tokens: int | None,
        auto_cache: bool = False,
    ) -> None:
        self.model = model
        # The client's body minus gateway-only fields (`requesty`, `models`); `model` is
        # still the client's id: adapters put the upstream name in.
        self.fields = fields
        self.messages = messages
        self.stream = stream
        self.max_tokens = max_tokens
        self.auto_cache = auto_cache


class Completion:
    """A non-streamed answer: an OpenAI `chat.completion` object with raw top-level fields."""

    __slots__ = ("finish_reason", "payload", "text_chars", "usage")

    def __init__(
        self,
        payload: dict[str, Raw],
        usage: Usage | None,
        finish_reason: str | None,
        text_chars: int,
    ) -> None:
        self.payload = payload
        self.usage = usage
        self.finish_reason = finish_reason
        self.text_chars = text_chars


class Embedding:
    __slots__ = ("payload", "usage")

    def __init__(self, payload: dict[str, Raw], usage: Usage | None) -> None:
        self.payload = payload
        self.usage = usage


class ChatStream(abc.ABC):
    """An open upstream stream, iterated as SSE bytes for the client: `data:` events of
    OpenAI `chat.completion.chunk` JSON, each run what one upstream read brought, so the
    relay writes it in one write (a paced upstream gives one event at a time). An OpenAI
    upstream's events pass through as they came; other protocols are translated.

    The usage chunk (OpenAI's last chunk, `choices: []`) is not yielded: it is kept in
    `usage_chunk` so the caller can add the cost and send it only if the client asked.
    A failure after the first chunk is raised from the iterator as `UpstreamError`.
    """

    # Its events are the client dialect's own (`WireStream`) and end the stream themselves:
    # the relay adds no usage chunk and no `[DONE]`. A class attribute, read once a stream:
    # `isinstance` against an ABC is a Python-level call.
    ends_itself: ClassVar[bool] = False

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.usage_chunk: dict[str, Raw] | None = None
        self.finish_reason: str | None = None
        self.text_chars = 0  # content and tool-call argument characters that flowed
        # The upstream's end is in, and accounted: iterating further yields nothing more.
        self.finished = False

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def push(self, sink: Callable[[bytes], bool]) -> None:  # noqa: B027 - pushing nothing is valid: iterating then does it all
        """Hand what comes next to `sink` as it arrives, without a task switch per read,
        until the stream is finished or `sink` returns False (the client fell behind);
        iterating carries on from where this stopped. Streams that cannot return at once.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional: nothing to release by default
        """Stop reading and release the upstream connection (the client went away)."""


class Provider(abc.ABC):
    """One configured provider: its settings and, for network protocols, one connection pool."""

    def __init__(self, name: str, config: ProviderConfig, api_key: str | None) -> None:
        self.name = name
        self.config = config
        self.api_key = api_key
        self.pool: Pool | None = None

    async def start(self) -> None:
        if self.config.protocol == "simulated":
            return
        self.pool = Pool(
            limit=self.config.max_connections,
            timeout=self.config.timeout_s,
            connect_timeout=self.config.connect_timeout_s,
            keepalive=30.0,
            max_body_bytes=self.config.max_response_bytes,
            ca_file=self.config.ca_file,
            proxies=Proxies.from_env(os.environ),
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def stats(self) -> PoolStats:
        """The connection pool's, for metrics (none before `start`, or simulated)."""
        return self.pool.stats() if self.pool is not None else PoolStats()

    @abc.abstractmethod
    async def chat(self, call: ChatCall) -> Completion: ...

    @abc.abstractmethod
    async def stream(self, call: ChatCall) -> ChatStream:
        """Open the stream; returns once the provider accepted the request (status 200)."""

    async def embed(self, model: Model, fields: dict[str, Raw]) -> Embedding:
        raise InvalidRequest(f"The provider of `{model.id}` does not serve embeddings.")
