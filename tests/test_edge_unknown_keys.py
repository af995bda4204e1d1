"""Unknown keys are refused from memory: a flood of made-up `sk-px-...` keys costs the key
database nothing, while a key created a moment ago on another instance still works at once."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from harness import Gateway, gateway_settings, running_gateway

from proxy.auth import KEY_PREFIX, KeyTags
from proxy.gateway import GATEWAY
from proxy.keys.model import KeyRow
from proxy.keys.registry import KeyRegistry

FLOOD = 200


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class LookupCounter:
    """Counts the registry's database lookups by key hash (the request path's only query)."""

    def __init__(self, registry: KeyRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = registry.store.by_hash

        async def counted(key_hash: str) -> KeyRow | None:
            self.calls += 1
            return await real(key_hash)

        monkeypatch.setattr(registry.store, "by_hash", counted)


def registry_of(gw: Gateway) -> KeyRegistry:
    registry = gw.app[GATEWAY].auth.keys
    assert registry is not None
    return registry


@asynccontextmanager
async def two_instances(
    tmp_path: Path, database_url: str, redis_url: str, namespace: str
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    settings = gateway_settings(tmp_path, f'redis_namespace = "{namespace}"\n',
                                PROXY_DATABASE_URL=database_url, PROXY_REDIS_URL=redis_url)
    async with running_gateway(settings) as a, running_gateway(settings) as b:
        yield a, b


async def status(http: aiohttp.ClientSession, gw: Gateway, key: str) -> int:
    resp = await http.get(gw.url + "/v1/models", headers=bearer(key))
    await resp.read()
    return resp.status


def made_up_keys(tags: KeyTags) -> list[str]:
    """Random keys of every plausible shape: the old length, the new length with a random
    tag, and keys tagged with another gateway's secret."""
    other = KeyTags(secrets.token_bytes(32))
    keys = []
    for i in range(FLOOD):
        if i % 3 == 0:
            keys.append(KEY_PREFIX + secrets.token_urlsafe(32))
        elif i % 3 == 1:
            keys.append(KEY_PREFIX + secrets.token_urlsafe(32) + secrets.token_urlsafe(6))
        else:
            keys.append(other.new_key())
    assert not any(tags.may_exist(k) for k in keys)
    return keys


async def test_flood_of_unknown_keys_costs_no_database_lookup(
    tmp_path: Path, fresh_pg: str, redis_url: str, redis_namespace: str,
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with two_instances(tmp_path, fresh_pg, redis_url, redis_namespace) as (a, _b):
        counter = LookupCounter(registry_of(a), monkeypatch)
        for key in made_up_keys(a.app[GATEWAY].auth.tags):
            assert await status(http, a, key) == 401
        assert counter.calls == 0


async def test_key_created_on_another_instance_works_there_at_once(
    tmp_path: Path, fresh_pg: str, redis_url: str, redis_namespace: str,
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with two_instances(tmp_path, fresh_pg, redis_url, redis_namespace) as (a, b):
        counter = LookupCounter(registry_of(b), monkeypatch)
        resp = await http.post(a.url + "/v1/api-keys", json={}, headers=a.headers)
        made = await resp.json()
        assert b.app[GATEWAY].auth.tags.may_exist(made["key"])
        assert await status(http, b, made["key"]) == 200  # the message or one lookup
        assert counter.calls <= 1
        resp = await http.delete(f"{a.url}/v1/api-keys/{made['id']}", headers=a.headers)
        assert resp.status == 200
        for _ in range(20):  # a deleted key, replayed: refused from the tombstone
            assert await status(http, a, made["key"]) == 401
        assert counter.calls <= 1


def test_only_keys_made_with_the_secret_carry_a_valid_tag() -> None:
    tags = KeyTags(b"s" * 32)
    key = tags.new_key()
    assert len(key) == KeyTags.LENGTH and key.startswith(KEY_PREFIX)
    assert tags.may_exist(key)
    assert not KeyTags(b"t" * 32).may_exist(key)
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert not tags.may_exist(flipped)
    assert not tags.may_exist(key[:-8] + key[6:14])  # the right length, a wrong tag


async def test_only_keys_that_matched_are_remembered_and_the_memory_is_bounded(
    tmp_path: Path, fresh_pg: str, redis_url: str, redis_namespace: str,
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The digest memo (no HMAC for a key seen before) keeps made-up keys out, so a flood
    cannot grow it, and a deleted key it remembers is still refused (the registry says)."""
    async with two_instances(tmp_path, fresh_pg, redis_url, redis_namespace) as (a, _b):
        auth = a.app[GATEWAY].auth
        for key in made_up_keys(auth.tags):
            assert await status(http, a, key) == 401
        assert auth.remembered_keys == 0
        resp = await http.post(a.url + "/v1/api-keys", json={}, headers=a.headers)
        made = await resp.json()
        assert await status(http, a, made["key"]) == 200
        assert auth.remembered_keys == 2  # the admin key that created it, and it
        resp = await http.delete(f"{a.url}/v1/api-keys/{made['id']}", headers=a.headers)
        assert resp.status == 200
        assert await status(http, a, made["key"]) == 401
        monkeypatch.setattr("proxy.auth.DIGEST_MEMO_SIZE", 2)
        assert await status(http, a, KEY_PREFIX + "x" * 10) == 401  # refused: not kept
        other = await (await http.post(a.url + "/v1/api-keys", json={},
                                       headers=a.headers)).json()
        assert await status(http, a, other["key"]) == 200
        assert auth.remembered_keys == 1  # full: emptied, then this one
