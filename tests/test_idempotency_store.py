"""The idempotency stores, in-process and Redis, one behaviour per test on both; and the
header's bounds and the body digest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import InvalidRequest, ServiceUnavailable
from proxy.idempotency import Answer, MemoryStore, RedisStore
from proxy.idempotency.request import body_digest, header_key
from proxy.idempotency.store import IdempotencyStore, Seen

ANSWER = Answer(model="fake/gpt", provider="fake", body=b'{"id":"chatcmpl-1"}')


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str, redis_namespace: str
                ) -> AsyncIterator[IdempotencyStore]:
    if request.param == "memory":
        yield MemoryStore(1 << 20)
        return
    client = aioredis.Redis.from_url(redis_url)
    yield RedisStore(client, redis_namespace)
    await client.aclose()


async def test_of_many_concurrent_claims_of_one_key_exactly_one_wins(
    store: IdempotencyStore,
) -> None:
    got = await asyncio.gather(*(store.claim("k1", "K", "d", f"req-{i}", 60) for i in range(50)))
    assert got.count(None) == 1
    assert all(g == Seen("d", None) for g in got if g is not None)


async def test_a_finished_key_answers_with_its_digest_and_answer(store: IdempotencyStore) -> None:
    assert await store.claim("k1", "K", "d1", "req-1", 60) is None
    assert await store.finish("k1", "K", "req-1", ANSWER, 60)
    assert await store.claim("k1", "K", "d2", "req-2", 60) == Seen("d1", ANSWER)
    await store.release("k1", "K", "req-2")  # not its claim: nothing changes
    assert await store.claim("k1", "K", "d1", "req-3", 60) == Seen("d1", ANSWER)


async def test_keys_are_scoped_to_the_api_key(store: IdempotencyStore) -> None:
    assert await store.claim("k1", "K", "d1", "req-1", 60) is None
    assert await store.claim("k2", "K", "d2", "req-2", 60) is None


async def test_a_released_key_can_be_claimed_again(store: IdempotencyStore) -> None:
    assert await store.claim("k1", "K", "d", "req-1", 60) is None
    await store.release("k1", "K", "req-1")
    assert await store.claim("k1", "K", "d", "req-2", 60) is None


async def test_only_the_claims_own_request_can_finish_or_release_it(
    store: IdempotencyStore,
) -> None:
    assert await store.claim("k1", "K", "d", "req-new", 60) is None
    assert not await store.finish("k1", "K", "req-old", ANSWER, 60)  # a lapsed claim's request
    await store.release("k1", "K", "req-old")
    assert await store.claim("k1", "K", "d", "req-3", 60) == Seen("d", None)


async def test_a_stream_answer_round_trips(store: IdempotencyStore) -> None:
    from proxy.cache import completion_from_body

    kept = Answer(model="m", provider="p", cost_nusd=4200, usage_chunk=False,
                  stream=completion_from_body(b'{"id":"x","choices":[],"usage":{"prompt_tokens":1}}'))
    assert await store.claim("k1", "S", "d", "req-1", 60) is None
    await store.finish("k1", "S", "req-1", kept, 60)
    assert await store.claim("k1", "S", "d", "req-2", 60) == Seen("d", kept)


async def test_redis_entries_expire_with_the_claim_then_the_retention(
    redis_url: str, redis_namespace: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client, redis_namespace)
        name = store.redis_key("k1", "K")
        assert name.startswith(f"{redis_namespace}:idem:v1:{{k1}}:")  # the limits' slot
        await store.claim("k1", "K", "d", "req-1", 30)
        assert 0 < await client.pttl(name) <= 30_000
        await store.finish("k1", "K", "req-1", ANSWER, 86400)
        assert 30_000 < await client.pttl(name) <= 86_400_000
    finally:
        await client.aclose()


async def test_memory_claims_lapse_and_answers_expire() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, clock=clock)
    assert await store.claim("k1", "K", "d", "req-1", 30) is None
    clock.t += 31  # its request never ended (a crash): the claim lapses
    assert await store.claim("k1", "K", "d", "req-2", 30) is None
    await store.finish("k1", "K", "req-2", ANSWER, 100)
    clock.t += 99
    assert await store.claim("k1", "K", "d", "req-3", 30) == Seen("d", ANSWER)
    clock.t += 2
    assert await store.claim("k1", "K", "d", "req-4", 30) is None
    assert store.size_bytes == 0


async def test_memory_answers_are_bounded_oldest_dropped_first() -> None:
    big = Answer(model="m", provider="p", body=b"x" * 1000)
    store = MemoryStore(3000)
    for i in range(5):
        assert await store.claim("k1", f"K{i}", "d", f"req-{i}", 30) is None
        await store.finish("k1", f"K{i}", f"req-{i}", big, 100)
    assert store.size_bytes <= 3000
    assert await store.claim("k1", "K0", "d", "again", 30) is None  # dropped: runs again
    assert await store.claim("k1", "K4", "d", "again", 30) == Seen("d", big)
    huge = Answer(model="m", provider="p", body=b"x" * 5000)
    assert not await store.finish("k1", "K0", "again", huge, 100)  # larger than the bound
    await store.release("k1", "K0", "again")  # what `Once.close` then does
    assert await store.claim("k1", "K0", "d", "third", 30) is None


async def test_redis_unreachable_refuses_the_claim_with_503_not_a_500() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        store = RedisStore(client, "ns", timeout_s=0.5)
        with pytest.raises(ServiceUnavailable) as refused:
            await store.claim("k1", "K", "d", "req-1", 60)
        assert refused.value.code == "idempotency_unavailable"
        assert refused.value.headers["retry-after"] == "1"
        assert not await store.finish("k1", "K", "req-1", ANSWER, 60)  # logged, not raised
        await store.release("k1", "K", "req-1")
    finally:
        await client.aclose()


def headers(*values: str) -> CIMultiDictProxy[str]:
    h: CIMultiDict[str] = CIMultiDict()
    for v in values:
        h.add("Idempotency-Key", v)
    return CIMultiDictProxy(h)


def test_header_bounds() -> None:
    assert header_key(headers()) is None
    assert header_key(headers("order-42")) == "order-42"
    assert header_key(headers("k" * 255)) == "k" * 255
    assert header_key(headers("with space and {braces}:~")) == "with space and {braces}:~"
    for bad in (headers("k" * 256), headers(""), headers("a\tb"), headers("clé"),
                headers("a\x7fb"), headers("one", "two")):
        with pytest.raises(InvalidRequest) as refused:
            header_key(bad)
        assert refused.value.param == "Idempotency-Key"
        assert refused.value.code == "invalid_idempotency_key"


def test_the_digest_is_of_the_json_not_its_bytes_and_of_every_field() -> None:
    a = body_digest("chat", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    b = body_digest("chat", b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}')
    assert a == b
    assert a != body_digest("embeddings",
                            b'{"model":"m","messages":[{"content":"hi","role":"user"}]}')
    assert a != body_digest("chat", b'{"model":"m","messages":[{"content":"hi","role":"user"}],'
                                    b'"stream":true}')
    assert a != body_digest("chat", b'{"model":"m","messages":[{"content":"hi","role":"user"}],'
                                    b'"requesty":{"user_id":"u"}}')
