"""Hostile values at the edge of auth, key management and usage: each is a 4xx naming the
problem, never a 500. On PostgreSQL, where a NUL in text is a database error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
from harness import Gateway, gateway_settings, running_gateway


@pytest.fixture
async def gw(tmp_path: Path, pg_database: str) -> AsyncIterator[Gateway]:
    settings = gateway_settings(tmp_path, PROXY_DATABASE_URL=pg_database)
    async with running_gateway(settings) as g:
        yield g


async def create(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/api-keys", json=body, headers=gw.headers)


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = (await resp.json())["error"]
    return body


async def test_authorization_header_with_a_0xff_byte_is_401(gw: Gateway) -> None:
    url = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                 b"Authorization: Bearer sk-px-\xff\xfeabc\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"401"
    error = msgspec.json.decode(body)["error"]
    assert error["code"] == "invalid_api_key" and "UTF-8" in error["message"]


@pytest.mark.parametrize("field,value", [
    ("name", "a\x00b"),
    ("labels", ["ok", "team\x00a"]),
    ("owner", "acme\x00"),
])
async def test_nul_in_a_key_field_is_400_naming_it(
    gw: Gateway, http: aiohttp.ClientSession, field: str, value: Any
) -> None:
    resp = await create(http, gw, **{field: value})
    assert resp.status == 400
    error = await error_of(resp)
    assert error["param"] == field and "NUL" in error["message"]


async def test_expiry_that_overflows_in_utc_is_400_naming_it(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    resp = await create(http, gw, expiry="9999-12-31T23:59:59-14:00")
    assert resp.status == 400
    error = await error_of(resp)
    assert error["param"] == "expiry" and "out of range" in error["message"]
    ok = await create(http, gw, expiry="9999-12-31T23:59:59+14:00")  # within range in UTC
    assert ok.status == 200


@pytest.mark.parametrize("param", ["start", "end"])
async def test_usage_time_that_overflows_in_utc_is_400_naming_it(
    gw: Gateway, http: aiohttp.ClientSession, param: str
) -> None:
    made = await (await create(http, gw)).json()
    value = "0001-01-01T00:00:00+14:00" if param == "start" else "9999-12-31T23:59:59-14:00"
    resp = await http.get(f"{gw.url}/v1/api-keys/{made['id']}/usage", params={param: value},
                          headers={"Authorization": f"Bearer {made['key']}"})  # the user key
    assert resp.status == 400
    error = await error_of(resp)
    assert error["param"] == param and "out of range" in error["message"]


@pytest.mark.parametrize("method,suffix", [
    ("GET", ""), ("DELETE", ""), ("PATCH", "/limit"), ("GET", "/usage"),
])
async def test_key_id_with_nul_in_the_path_is_404(
    gw: Gateway, http: aiohttp.ClientSession, method: str, suffix: str
) -> None:
    resp = await http.request(method, f"{gw.url}/v1/api-keys/key_%00x{suffix}",
                              json={"limit": 1}, headers=gw.headers)
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "not_found"
