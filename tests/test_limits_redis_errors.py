"""Redis answering a script with an error is a bug, never an outage: the limits stay on Redis.

The bug this pins: a model without prices (or an empty embedding input) reserves 0, and
releasing that reservation sent Redis `HINCRBY r "-0"`, which it refuses. The refusal was
taken for "Redis unreachable", so every such request flipped the limits to in-process
counting and back. Real Redis throughout, in a namespace of the test's own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from conftest import UPSTREAM_SECRET
from fakes import Fail, FakeOpenAI, Reply
from harness import Gateway, gateway_settings, running_gateway

from proxy.auth import Principal
from proxy.config import LimitsConfig
from proxy.errors import ServiceUnavailable
from proxy.gateway import GATEWAY
from proxy.limits.durable import SpendSource
from proxy.limits.periods import period_id
from proxy.limits.redis import RedisLimits
from proxy.limits.scripts import keys_of

USER = [{"role": "user", "content": "hi"}]


def unpriced_toml(base_url: str, namespace: str) -> str:
    return f"""
redis_namespace = "{namespace}"

[providers.up]
protocol = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_OPENAI_KEY"

[[models]]
id = "up/free"        # no prices: every worst case, and so every reservation, is 0
provider = "up"
upstream = "free-model"

[[models]]
id = "up/embed"
provider = "up"
upstream = "text-embedding-3-small"
kind = "embedding"
input_price = 0.02
"""


@pytest.fixture
async def gw(
    tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
    redis_url: str, redis_namespace: str,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    settings = gateway_settings(tmp_path, unpriced_toml(fake_openai.base_url, redis_namespace),
                                PROXY_REDIS_URL=redis_url)
    async with running_gateway(settings) as g:
        yield g


def redis_limits(gw: Gateway) -> RedisLimits:
    limits = gw.app[GATEWAY].limits
    assert isinstance(limits, RedisLimits)
    return limits


async def limited_key(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, str]:
    resp = await http.post(gw.url + "/v1/api-keys", json={"limit": 1, "tpm": 100_000},
                           headers=gw.headers)
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['key']}"}


@pytest.mark.parametrize(("behaviour", "status"), [(Fail(status=500), 502), (Reply(), 200)])
async def test_a_zero_reservation_settles_without_leaving_redis(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, behaviour: Any, status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = await limited_key(http, gw)
    limits = redis_limits(gw)
    for _ in range(3):
        fake_openai.script(behaviour)
        resp = await http.post(gw.url + "/v1/chat/completions", headers=headers,
                               json={"model": "up/free", "messages": USER})
        assert resp.status == status, await resp.text()
        await limits.drain()
        assert not limits.degraded
    assert (limits.redis_errors, limits.refusals) == (0, 0)
    assert "Redis unreachable" not in caplog.text


async def test_an_empty_embedding_input_reserves_nothing_and_stays_on_redis(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession,
) -> None:
    headers = await limited_key(http, gw)
    fake_openai.script(Fail(status=500))
    resp = await http.post(gw.url + "/v1/embeddings", headers=headers,
                           json={"model": "up/embed", "input": ""})
    assert resp.status == 502
    limits = redis_limits(gw)
    await limits.drain()
    assert (limits.degraded, limits.redis_errors) == (False, 0)


# --- RedisLimits on its own --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_750_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def limits(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisLimits]:
    made = RedisLimits.from_url(LimitsConfig(reservation_ttl_s=60), redis_url, redis_namespace,
                                SpendSource(None, lambda: None), lambda: ["k1"], Clock())
    yield made
    await made.close()


async def test_an_abandoned_zero_reservation_is_swept_without_error(limits: RedisLimits) -> None:
    await limits.admit(Principal("k1", limit_nusd=10**9), "req", 0, 5)
    assert await limits.sweep(limits.clock() + 3600) == 1
    assert (limits.degraded, limits.redis_errors) == (False, 0)


def break_counter(redis_url: str, namespace: str, key_id: str, when: float) -> None:
    """Make the key's counter a string: every script on it then gets WRONGTYPE."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(keys_of(namespace, key_id, period_id("monthly", when))[0], "not a hash")
    finally:
        client.close()


async def test_a_refused_script_is_logged_once_by_name_and_never_degrades(
    limits: RedisLimits, redis_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture,
) -> None:
    admission = await limits.admit(Principal("k1", limit_nusd=10**9), "req", 1000, 5)
    break_counter(redis_url, redis_namespace, "k1", limits.clock())
    with caplog.at_level(logging.ERROR, logger="proxy.limits"):
        for _ in range(3):
            limits.settle(admission, 500, 5)
            await limits.drain()
    assert not limits.degraded
    assert limits.refusals == limits.redis_errors == 3
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "settle script" in refused[0] and "WRONGTYPE" in refused[0]


async def test_a_refused_admission_fails_only_keys_with_a_spend_limit(
    limits: RedisLimits, redis_url: str, redis_namespace: str,
) -> None:
    break_counter(redis_url, redis_namespace, "k1", limits.clock())
    with pytest.raises(ServiceUnavailable) as refused:
        await limits.admit(Principal("k1", limit_nusd=10**9), "req", 1000, 5)
    assert refused.value.code == "limits_unavailable"
    admission = await limits.admit(Principal("k1"), "req", 1000, 5)  # nothing to enforce
    assert admission.reserved_nusd == 0
    assert not limits.degraded and limits.refusals == 1  # it did not even ask Redis


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_a_key_with_nothing_to_enforce_is_admitted_without_a_round_trip_and_charged(
    redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch, fail_closed: bool,
) -> None:
    limits = RedisLimits.from_url(LimitsConfig(reservation_ttl_s=60, fail_closed=fail_closed),
                                  redis_url, redis_namespace, SpendSource(None, lambda: None),
                                  lambda: ["k1"], Clock())
    scripts_run: list[str] = []
    run = limits.counters.run

    async def counted(name: str, *args: Any) -> Any:
        scripts_run.append(name)
        return await run(name, *args)

    monkeypatch.setattr(limits.counters, "run", counted)
    try:
        admission = await limits.admit(Principal("k1"), "req", 1000, 5)
        # failing closed, a request is served only while Redis answers: it still asks
        assert ("admit" in scripts_run) is fail_closed and (scripts_run == []) is not fail_closed
        assert admission.reserved_nusd == (1000 if fail_closed else 0)
        limits.settle(admission, 700, 5)
        await limits.drain()
        client = redis.Redis.from_url(redis_url)
        try:
            counter = keys_of(redis_namespace, "k1", period_id("monthly", limits.clock()))[0]
            assert int(client.hget(counter, "s") or 0) == 700  # the spend still counts
            assert not client.hgetall(keys_of(redis_namespace, "k1",
                                              period_id("monthly", limits.clock()))[1])
        finally:
            client.close()
    finally:
        await limits.close()
