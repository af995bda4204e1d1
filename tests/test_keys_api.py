"""/v1/api-keys: CRUD, validation, who may do what, and what a key's limits do to a request.

Every test runs on both key stores (SQLite, the embedded default; PostgreSQL) with the
in-process limits, against the fake OpenAI upstream, whose hit count shows whether a
request reached it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from conftest import UPSTREAM_SECRET, fake_provider_toml
from fakes import FakeAnthropic, FakeOpenAI, Reply
from harness import Gateway, gateway_settings, running_gateway

from proxy.gateway import GATEWAY

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["sqlite", "postgres"])
async def gw(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
    pg_database: str,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    env = {"PROXY_DATABASE_URL": pg_database} if request.param == "postgres" else {}
    toml = fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url)
    async with running_gateway(gateway_settings(tmp_path, toml, **env)) as g:
        yield g


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> dict[str, Any]:
    resp = await http.post(gw.url + "/v1/api-keys", json=body, headers=gw.headers)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def chat(
    http: aiohttp.ClientSession, gw: Gateway, key: str, **extra: Any,
) -> aiohttp.ClientResponse:
    body = {"model": "fake/gpt", "messages": USER, "max_tokens": 20, **extra}
    return await http.post(gw.url + "/v1/chat/completions", json=body, headers=bearer(key))


async def test_admin_creates_a_key_whose_secret_is_shown_only_once(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    made = await create(http, gw, name="ci", limit=12.5, labels=["team:a"], rpm=60, tpm=1000,
                        expiry="2099-01-31")
    assert made["key"].startswith("sk-px-") and made["id"].startswith("key_")
    assert made["key"].startswith(made["key_prefix"]) and len(made["key_prefix"]) < 12
    assert made["limit"] == 12.5 and made["limit_period"] == "monthly" and made["role"] == "user"
    assert made["labels"] == ["team:a"] and (made["rpm"], made["tpm"]) == (60, 1000)
    assert made["expiry"] == "2099-01-31T00:00:00Z" and made["spend"] == 0
    got = await (await http.get(f"{gw.url}/v1/api-keys/{made['id']}", headers=gw.headers)).json()
    listed = await (await http.get(gw.url + "/v1/api-keys", headers=gw.headers)).json()
    assert "key" not in got and made["key"] not in str(listed)
    assert got == {k: v for k, v in made.items() if k != "key"}
    assert made["id"] in [k["id"] for k in listed["data"]]


async def test_owner_and_cache_are_stored_shown_and_loaded_into_the_principal(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    plain = await create(http, gw)
    assert (plain["owner"], plain["cache"]) == ("default", False)
    made = await create(http, gw, owner="acme", cache=True)
    assert (made["owner"], made["cache"]) == ("acme", True)
    got = await (await http.get(f"{gw.url}/v1/api-keys/{made['id']}", headers=gw.headers)).json()
    listed = await (await http.get(gw.url + "/v1/api-keys", headers=gw.headers)).json()
    assert (got["owner"], got["cache"]) == ("acme", True)
    shown = {k["id"]: (k["owner"], k["cache"]) for k in listed["data"]}
    assert (shown[plain["id"]], shown[made["id"]]) == (("default", False), ("acme", True))
    auth = gw.app[GATEWAY].auth
    principal = await auth.authenticate(made["key"])
    assert (principal.owner, principal.cache) == ("acme", True)
    assert (auth.admin.owner, auth.admin.cache) == ("default", False)
    assert auth.keys is not None
    stored = await auth.keys.store.get(made["id"])  # from the database, not the cache
    assert stored is not None and (stored.owner, stored.cache) == ("acme", True)


async def test_user_key_may_call_models_but_every_management_call_is_403(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    user = await create(http, gw, name="user")
    assert (await chat(http, gw, user["key"])).status == 200
    kid, h = user["id"], bearer(user["key"])
    calls = [
        http.get(gw.url + "/v1/api-keys", headers=h),
        http.post(gw.url + "/v1/api-keys", json={"name": "x"}, headers=h),
        http.get(f"{gw.url}/v1/api-keys/{kid}", headers=h),
        http.patch(f"{gw.url}/v1/api-keys/{kid}/limit", json={"limit": 100}, headers=h),
        http.delete(f"{gw.url}/v1/api-keys/{kid}", headers=h),
    ]
    for call in calls:
        resp = await call
        assert resp.status == 403
        assert (await resp.json())["error"]["type"] == "permission_error"
    assert (await chat(http, gw, user["key"])).status == 200  # the DELETE above did nothing


async def test_missing_and_unknown_keys_get_401_everywhere(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    for headers in ({}, bearer("sk-px-not-a-real-key"), bearer("nonsense"),
                    {"Authorization": "Basic x"}):
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/api-keys")):
            resp = await http.request(method, gw.url + path, json={}, headers=headers)
            assert resp.status == 401, (headers, path)


async def test_admin_role_key_manages_keys(gw: Gateway, http: aiohttp.ClientSession) -> None:
    admin = await create(http, gw, name="ops", role="admin")
    resp = await http.post(gw.url + "/v1/api-keys", json={"name": "by-ops"},
                           headers=bearer(admin["key"]))
    assert resp.status == 200
    resp = await http.get(gw.url + "/v1/api-keys", headers=bearer(admin["key"]))
    assert resp.status == 200


async def test_deleted_key_is_refused_at_once_and_gone(
    gw: Gateway, http: aiohttp.ClientSession,
) -> None:
    made = await create(http, gw)
    assert (await chat(http, gw, made["key"])).status == 200
    resp = await http.delete(f"{gw.url}/v1/api-keys/{made['id']}", headers=gw.headers)
    assert resp.status == 200 and (await resp.json())["deleted"] is True
    resp = await chat(http, gw, made["key"])
    assert resp.status == 401
    for method in ("GET", "DELETE"):
        resp = await http.request(method, f"{gw.url}/v1/api-keys/{made['id']}", headers=gw.headers)
        assert resp.status == 404


async def test_expired_key_gets_401(gw: Gateway, http: aiohttp.ClientSession) -> None:
    expiry = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    made = await create(http, gw, expiry=expiry)
    assert (await chat(http, gw, made["key"])).status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        resp = await chat(http, gw, made["key"])
        if resp.status == 401:
            assert (await resp.json())["error"]["code"] == "expired_api_key"
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the key still worked after its expiry")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": True}, "limit"),
        ({"expiry": "next tuesday"}, "expiry"),
        ({"expiry": "2001-01-01T00:00:00Z"}, "expiry"),
        ({"role": "root"}, "role"),
        ({"limit_period": "weekly"}, "limit_period"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": 1.5}, "tpm"),
        ({"labels": "a,b"}, "labels"),
        ({"name": 7}, "name"),
        ({"owner": 7}, "owner"),
        ({"owner": ""}, "owner"),
        ({"owner": "x" * 129}, "owner"),
        ({"cache": "yes"}, "cache"),
        ({"cache": 1}, "cache"),
        ({"limt": 5}, "limt"),
    ],
)
async def test_invalid_key_fields_get_400_naming_the_field(
    gw: Gateway, http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    resp = await http.post(gw.url + "/v1/api-keys", json=body, headers=gw.headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_limit_patch_validation_and_unknown_ids(
    gw: Gateway, http: aiohttp.ClientSession,
) -> None:
    made = await create(http, gw)
    url = f"{gw.url}/v1/api-keys/{made['id']}/limit"
    for body, param in (({}, "limit"), ({"limit": -0.01}, "limit"), ({"limit": 1, "x": 1}, "x")):
        resp = await http.patch(url, json=body, headers=gw.headers)
        assert resp.status == 400 and (await resp.json())["error"]["param"] == param
    resp = await http.patch(url, data=b"{nope", headers=gw.headers)
    assert resp.status == 400
    for method, path in (("GET", ""), ("DELETE", ""), ("PATCH", "/limit")):
        resp = await http.request(method, f"{gw.url}/v1/api-keys/key_missing{path}",
                                  json={"limit": 1}, headers=gw.headers)
        assert resp.status == 404


async def test_key_at_its_limit_gets_429_before_upstream_until_the_limit_is_raised(
    gw: Gateway, http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    made = await create(http, gw, limit=0)
    resp = await chat(http, gw, made["key"])
    assert resp.status == 429 and resp.headers["x-should-retry"] == "false"
    error = (await resp.json())["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert fake_openai.hits == 0
    resp = await http.patch(f"{gw.url}/v1/api-keys/{made['id']}/limit", json={"limit": 1},
                            headers=gw.headers)
    assert resp.status == 200 and (await resp.json())["limit"] == 1
    resp = await chat(http, gw, made["key"])
    assert resp.status == 200 and fake_openai.hits == 1
    cost = (await resp.json())["usage"]["cost"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # settling happens after the response
        got = await (await http.get(f"{gw.url}/v1/api-keys/{made['id']}",
                                    headers=gw.headers)).json()
        if got["spend"] == cost:
            break
        await asyncio.sleep(0.05)
    assert got["spend"] == pytest.approx(cost) and cost > 0


async def test_rate_limit_headers_on_success_then_429_with_retry_after(
    gw: Gateway, http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    made = await create(http, gw, rpm=2, tpm=10_000)
    first = await chat(http, gw, made["key"])
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert (await chat(http, gw, made["key"])).status == 200
    third = await chat(http, gw, made["key"])
    assert third.status == 429
    assert (await third.json())["error"]["code"] == "rate_limit_exceeded"
    assert 25 <= int(third.headers["retry-after"]) <= 30
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert fake_openai.hits == 2


async def test_openai_sdk_does_not_retry_a_quota_error(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    made = await create(http, gw, limit=0.0001, limit_period="total")
    sent: list[object] = []

    async def count(request: object) -> None:
        sent.append(request)

    client = openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=made["key"], max_retries=3,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]}),
    )
    fake_openai.default = Reply(prompt_tokens=100, completion_tokens=200)  # costs > the limit
    ok = await client.chat.completions.create(model="fake/gpt", messages=USER, max_tokens=200)  # type: ignore[arg-type]
    assert ok.choices[0].message.content
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="fake/gpt", messages=USER)  # type: ignore[arg-type]
    assert refused.value.code == "insufficient_quota"
    assert len(sent) == 2 and fake_openai.hits == 1  # one call each: no retry of the 429
    await client.close()
