"""The built-in simulated provider: deterministic text, paced tokens, real usage numbers.

It serves the embedded default (so `curl` works offline on the first try), tests and load
tests. One token is one word of the answer; the prompt is counted with the gateway's own
estimate (`tokens.py`).
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Raw

from ..catalog import Model, Usage
from ..tokens import prompt_tokens, text_tokens
from ..wire import EmbeddingInput, Message, embedding_texts, encode_raw, field
from .base import ChatCall, ChatStream, Completion, Embedding, Provider
from .sse import frame

_WORDS: Final = (  # noqa: SIM905 - a sentence reads better than a 41-item list
    "the gateway answers every request with words drawn from this small list so that "
    "tests and load runs see the same text for the same prompt and can count each token "
    "exactly while no network or model is needed at all"
).split()
DEFAULT_COMPLETION_TOKENS: Final = 24
EMBEDDING_DIM: Final = 16  # without `dimensions`
# `dimensions` bound: text-embedding-3-large's size, so a hostile value cannot make the
# gateway build a huge vector.
MAX_EMBEDDING_DIM: Final = 3072
Dimensions = Annotated[int, msgspec.Meta(ge=1, le=MAX_EMBEDDING_DIM)]
EncodingFormat = Literal["float", "base64"]
_encode = msgspec.json.encode


def answer_words(messages: list[Message], n: int) -> list[str]:
    """The same prompt always gets the same answer."""
    seed = hashlib.blake2b(msgspec.json.encode(messages), digest_size=8).digest()
    start = int.from_bytes(seed, "big") % len(_WORDS)
    return [_WORDS[(start + i) % len(_WORDS)] for i in range(n)]


def _completion_tokens(call: ChatCall) -> int:
    if call.max_tokens is not None and call.max_tokens > 0:
        return min(call.max_tokens, DEFAULT_COMPLETION_TOKENS)
    return DEFAULT_COMPLETION_TOKENS


class SimulatedStream(ChatStream):
    def __init__(self, call: ChatCall, words: list[str], delay: float, cid: str) -> None:
        super().__init__()
        self._call = call
        self._words = words
        self._delay = delay
        self._id = cid
        self._prompt = prompt_tokens(call.messages)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        created = int(time.time())
        head = {"id": self._id, "object": "chat.completion.chunk", "created": created,
                "model": self._call.model.upstream}
        n = len(self._words)
        for i, word in enumerate(self._words):
            if self._delay:
                await asyncio.sleep(self._delay)
            text = word if i == 0 else " " + word
            delta: dict[str, str] = {"content": text}
            if i == 0:
                delta["role"] = "assistant"
            self.text_chars += len(text)
            finish = "length" if i == n - 1 and self._call.max_tokens == n else None
            if i == n - 1:
                finish = finish or "stop"
                self.finish_reason = finish
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield frame((_encode(chunk),))
        self.usage = Usage(prompt_tokens=self._prompt, completion_tokens=n)
        self.usage_chunk = {
            **{k: encode_raw(v) for k, v in head.items()},
            "choices": Raw(b"[]"),
        }


class SimulatedProvider(Provider):
    def _delay(self) -> float:
        rate = self.config.tokens_per_second
        return 1.0 / rate if rate > 0 else 0.0

    async def _latency(self) -> None:
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

    async def chat(self, call: ChatCall) -> Completion:
        await self._latency()
        words = answer_words(call.messages, _completion_tokens(call))
        if self._delay():
            await asyncio.sleep(self._delay() * len(words))
        text = " ".join(words)
        finish = "length" if call.max_tokens == len(words) else "stop"
        usage = Usage(prompt_tokens=prompt_tokens(call.messages), completion_tokens=len(words))
        payload = {
            "id": encode_raw(
                "chatcmpl-sim-" + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()),
            "object": Raw(b'"chat.completion"'),
            "created": encode_raw(int(time.time())),
            "model": encode_raw(call.model.upstream),
            "choices": encode_raw([{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }]),
        }
        return Completion(payload, usage, finish, len(text))

    async def stream(self, call: ChatCall) -> ChatStream:
        await self._latency()
        words = answer_words(call.messages, _completion_tokens(call))
        cid = "chatcmpl-sim-" + hashlib.blake2b(" ".join(words).encode(), digest_size=6).hexdigest()
        return SimulatedStream(call, words, self._delay(), cid)

    async def embed(self, model: Model, fields: dict[str, Raw]) -> Embedding:
        await self._latency()
        texts = embedding_texts(field(fields, "input", EmbeddingInput))
        dim: int = field(fields, "dimensions", Dimensions | None) or EMBEDDING_DIM
        as_base64 = field(fields, "encoding_format", EncodingFormat | None) == "base64"
        data = []
        tokens = 0
        for i, text in enumerate(texts):
            vec = embedding_vector(text, dim)
            data.append({"object": "embedding", "index": i,
                         "embedding": float32_base64(vec) if as_base64 else vec})
            tokens += max(1, text_tokens(len(text)))
        payload = {
            "object": Raw(b'"list"'),
            "data": encode_raw(data),
            "model": encode_raw(model.upstream),
        }
        return Embedding(payload, Usage(prompt_tokens=tokens))


def embedding_vector(text: str, dim: int) -> list[float]:
    """The same text always gets the same vector, of any length, values in [-1, 1]."""
    digest = hashlib.shake_256(text.encode()).digest(dim)
    return [round((b - 127.5) / 127.5, 6) for b in digest]


def float32_base64(vec: list[float]) -> str:
    """OpenAI's `encoding_format: "base64"`: the vector as little-endian float32 bytes."""
    packed = array.array("f", vec)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
