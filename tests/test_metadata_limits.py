"""Request metadata and bodies at the edge, on PostgreSQL and Redis: metadata out of bounds
and bodies the gateway cannot read are a 400 naming the field, before anything is sent or
charged; metadata at every bound reaches the ledger and its rollups, so what the spend
counter charged and what the ledger holds stay equal."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from conftest import UPSTREAM_SECRET
from fakes import FakeAnthropic, FakeOpenAI
from harness import Gateway
from ledger_gateway import counter_spend, ledger_spend, new_key, pg_redis_gateway, settled

from proxy import metadata
from proxy.gateway import GATEWAY
from proxy.ledger.writer import LedgerWriter
from proxy.limits.redis import RedisLimits

USER = [{"role": "user", "content": "Hello"}]
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "fake/gpt", "messages": USER}),
    "embeddings": ("/v1/embeddings", {"model": "fake/embed", "input": "Hello"}),
}
NOISE = "".join(chr(c) for c in range(0x1F600, 0x1F650))  # 4 bytes each in UTF-8


def noise(n: int, rng: random.Random) -> str:
    """n characters of random 4-byte UTF-8: as large in bytes as n characters get, and
    nothing a database could compress below its index row limit."""
    return "".join(rng.choice(NOISE) for _ in range(n))


@pytest.fixture
async def gw(tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
             fresh_pg: str, redis_url: str, redis_namespace: str,
             monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    async with pg_redis_gateway(tmp_path, fake_openai.base_url, fake_anthropic.base_url,
                                fresh_pg, redis_url, redis_namespace) as g:
        yield g


async def post(http: aiohttp.ClientSession, gw: Gateway, key: str, path: str,
               data: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    resp = await http.post(gw.url + path, data=data, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers})
    return resp.status, await resp.json()


BAD_META: list[tuple[str, Any, str]] = [
    ("too many tags", {"tags": [f"t{i}" for i in range(20_000)]}, "requesty.tags"),
    ("a tag too long", {"tags": ["ok", "x" * 3000]}, "requesty.tags[1]"),
    ("a NUL in a tag", {"tags": ["a\x00b"]}, "requesty.tags[0]"),
    ("a user_id too long", {"user_id": "u" * 3000}, "requesty.user_id"),
    ("a NUL in user_id", {"user_id": "alice\x00"}, "requesty.user_id"),
    ("a NUL in trace_id", {"trace_id": "\x00"}, "requesty.trace_id"),
    ("a newline in trace_id", {"trace_id": "t\n"}, "requesty.trace_id"),
    ("too many extra keys", {"extra": {f"k{i}": "v" for i in range(10_000)}},
     "requesty.extra"),
    ("an extra key too long", {"extra": {"k" * 65: "v"}}, "requesty.extra"),
    ("an empty extra key", {"extra": {"": "v"}}, "requesty.extra"),
    ("an extra value too long", {"extra": {"team": "v" * 3000}}, "requesty.extra[...]"),
    ("a NUL in an extra value", {"extra": {"team": "a\x00"}}, "requesty.extra[...]"),
    ("a control character in an extra key", {"extra": {"te\x1bam": "a"}}, "requesty.extra"),
]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(("what", "meta", "param"), BAD_META, ids=[b[0] for b in BAD_META])
async def test_metadata_out_of_bounds_is_400_naming_the_field_and_nothing_is_charged(
        gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fresh_pg: str,
        route: str, what: str, meta: Any, param: str) -> None:
    key = await new_key(http, gw)
    path, body = ROUTES[route]
    status, err = await post(http, gw, key["key"], path,
                             msgspec.json.encode({**body, "requesty": meta}))
    assert status == 400, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert fake_openai.hits == 0
    # One good request after it: the ledger holds exactly it, and what was charged.
    status, _ = await post(http, gw, key["key"], path, msgspec.json.encode(body))
    assert status == 200
    charged, recorded = await settled(http, gw, fresh_pg, key["id"], records=1)
    assert charged == recorded > 0


BAD_HEADERS: list[tuple[str, dict[str, str], str]] = [
    ("a value too long", {"X-Requesty-Team": "v" * 3000}, "X-Requesty-Team"),
    ("too many", {f"X-Requesty-H{i}": "v" for i in range(33)}, "X-Requesty-*"),
    ("a name too long", {"X-Requesty-" + "n" * 65: "v"}, "X-Requesty-*"),
]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(("what", "headers", "param"), BAD_HEADERS,
                         ids=[b[0] for b in BAD_HEADERS])
async def test_requesty_headers_out_of_bounds_are_400_naming_the_header(
        gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fresh_pg: str,
        route: str, what: str, headers: dict[str, str], param: str) -> None:
    key = await new_key(http, gw)
    path, body = ROUTES[route]
    status, err = await post(http, gw, key["key"], path, msgspec.json.encode(body), **headers)
    assert status == 400, err
    assert err["error"]["param"] == param
    assert fake_openai.hits == 0
    assert await ledger_spend(fresh_pg, key["id"]) == (0, 0, 0)


async def raw_post(gw: Gateway, path: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (a header aiohttp's client would not send)."""
    assert gw.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\n" + head
                     + b"Content-Type: application/json\r\nConnection: close\r\n"
                     + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_requesty_header_that_is_not_utf8_is_400_naming_it(
        gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fresh_pg: str,
        route: str) -> None:
    key = await new_key(http, gw)
    path, body = ROUTES[route]
    head = (b"Authorization: Bearer " + key["key"].encode() + b"\r\n"
            + b"X-Requesty-Team: caf\xe9 \xff\xfe\r\n")
    status, answer = await raw_post(gw, path, head, msgspec.json.encode(body))
    assert status == 400, answer
    assert msgspec.json.decode(answer)["error"]["param"] == "X-Requesty-Team"
    assert fake_openai.hits == 0


async def test_metadata_at_every_bound_reaches_the_ledger_and_every_rollup(
        gw: Gateway, http: aiohttp.ClientSession, fresh_pg: str) -> None:
    rng = random.Random(16)
    key = await new_key(http, gw)
    requests = 4
    for i in range(requests):
        meta = {
            "user_id": noise(metadata.MAX_ID_CHARS, rng),
            "trace_id": noise(metadata.MAX_ID_CHARS, rng),
            "tags": [noise(metadata.MAX_TAG_CHARS, rng) for _ in range(metadata.MAX_TAGS)],
            "extra": {noise(metadata.MAX_KEY_CHARS, rng): noise(metadata.MAX_VALUE_CHARS, rng)
                      for _ in range(metadata.MAX_EXTRA_KEYS)},
        }
        headers = {f"X-Requesty-{i}-{h:02d}-" + "n" * (metadata.MAX_KEY_CHARS - 6):
                   "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                           for _ in range(metadata.MAX_VALUE_CHARS))
                   for h in range(metadata.MAX_HEADERS)}
        path, body = ROUTES["chat" if i % 2 else "embeddings"]
        status, answer = await post(http, gw, key["key"], path,
                                    msgspec.json.encode({**body, "requesty": meta}), **headers)
        assert status == 200, answer
    charged, recorded = await settled(http, gw, fresh_pg, key["id"], records=requests)
    assert charged == recorded > 0
    ledger = gw.app[GATEWAY].ledger
    assert isinstance(ledger, LedgerWriter)
    assert (ledger.stats().records_quarantined, ledger.stats().records_salvaged) == (0, 0)
    conn = await asyncpg.connect(fresh_pg)
    try:
        dims = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE dim = 'tag'), "
            "count(*) FILTER (WHERE dim LIKE 'extra.%'), "
            "count(*) FILTER (WHERE dim = 'user_id'), "
            "coalesce(sum(cost_nusd) FILTER (WHERE dim = 'user_id'), 0) FROM usage_dim_hourly")
    finally:
        await conn.close()
    per_request = metadata.MAX_EXTRA_KEYS + metadata.MAX_HEADERS
    assert dims is not None
    assert tuple(dims) == (requests * metadata.MAX_TAGS, requests * per_request, requests,
                           recorded)


ONE_MESSAGE = b'{"model": "fake/gpt", "messages": [{"role": "user", "content": "x"}], '
BAD_BODIES: list[tuple[str, str, bytes, str | None]] = [
    ("invalid UTF-8 in messages", "chat",
     b'{"model": "fake/gpt", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}',
     "messages"),
    ("a lone surrogate in messages", "chat",
     b'{"model": "fake/gpt", "messages": [{"role": "user", "content": "\\ud800"}]}', None),
    ("nested 1,000 deep", "chat",
     b'{"model": "fake/gpt", "messages": ' + msgspec.json.encode(USER)
     + b', "tools": ' + b"[" * 1000 + b"]" * 1000 + b"}", None),
    ("nested 200 deep in a message", "chat",
     b'{"model": "fake/gpt", "messages": [{"role": "user", "content": [{"type": "text", '
     b'"text": "x", "deep": ' + b"[" * 200 + b"]" * 200 + b"}]}]}", None),
    ("max_tokens of 2^63", "chat", ONE_MESSAGE + b'"max_tokens": 9223372036854775808}',
     "max_tokens"),
    ("max_completion_tokens of 10^30", "chat",
     ONE_MESSAGE + b'"max_completion_tokens": 1000000000000000000000000000000}',
     "max_completion_tokens"),
    ("max_tokens of 2^31", "chat", ONE_MESSAGE + b'"max_tokens": 2147483648}', "max_tokens"),
    ("invalid UTF-8 in input", "embeddings",
     b'{"model": "fake/embed", "input": ["caf\xe9"]}', "input"),
    ("invalid UTF-8 in a passed-through field", "embeddings",
     b'{"model": "fake/embed", "input": "x", "user": "\xff"}', "user"),
    ("nested 1,000 deep", "embeddings",
     b'{"model": "fake/embed", "input": "x", "extra": ' + b"[" * 1000 + b"]" * 1000 + b"}",
     None),
]


@pytest.mark.parametrize(("what", "route", "data", "param"), BAD_BODIES,
                         ids=[b[0] for b in BAD_BODIES])
async def test_a_body_the_gateway_cannot_read_is_400_naming_the_problem(
        gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, fresh_pg: str,
        what: str, route: str, data: bytes, param: str | None) -> None:
    key = await new_key(http, gw)
    status, err = await post(http, gw, key["key"], ROUTES[route][0], data)
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param
    assert fake_openai.hits == 0
    limits = gw.app[GATEWAY].limits
    assert isinstance(limits, RedisLimits)
    assert limits.redis_errors == 0
    assert await counter_spend(http, gw, key["id"]) == 0
    assert await ledger_spend(fresh_pg, key["id"]) == (0, 0, 0)
