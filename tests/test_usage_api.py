"""GET /v1/api-keys/{key_id}/usage and GET /v1/organization/usage over HTTP: who may read
what, every bad parameter named in a 400, the JSON and CSV shapes, and a real request
showing up within 2 seconds."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ledger_support import known_records, usage_record

from proxy.app import build_app
from proxy.auth import Authenticator, Principal
from proxy.config import load_settings
from proxy.errors import Unauthorized
from proxy.gateway import GATEWAY
from proxy.ledger.record import UsageRecord

ADMIN = "sk-test-admin"
TOKENS = {
    ADMIN: Principal("admin", role="admin"),
    "sk-key-a": Principal("key-a"),
    "sk-key-b": Principal("key-b"),
}
NOW = datetime.now(UTC)
BASE = (NOW - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)


class FixedKeys(Authenticator):
    """A few fixed keys: an admin and two users."""

    def __init__(self) -> None:
        super().__init__(b"test-secret", "no-digest")

    async def authenticate(self, token: str) -> Principal:
        if token in TOKENS:
            return TOKENS[token]
        raise Unauthorized("Invalid API key.")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = load_settings(env={
        "PROXY_ADMIN_KEY": ADMIN,
        "PROXY_DATA_DIR": str(tmp_path / "data"),
        "PROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'proxy.db'}",
    })
    async with TestClient(TestServer(build_app(settings, FixedKeys()))) as c:
        yield c


RECORDS: list[UsageRecord] = known_records(BASE, n=300)


async def seed(c: TestClient[Any, Any], records: list[UsageRecord] = RECORDS) -> None:
    """Hand records to the app's ledger and wait until the reports see them all."""
    ledger = c.app[GATEWAY].ledger
    before = (await (await c.get("/v1/organization/usage", headers=auth(ADMIN))).json()
              )["total_requests"]
    for r in records:
        ledger.enqueue(r)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        body = await (await c.get("/v1/organization/usage", headers=auth(ADMIN))).json()
        if body["total_requests"] == before + len(records):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("records not visible")


def _sum(records: list[UsageRecord], key: str | None = None) -> tuple[int, int]:
    chosen = [r for r in records if key is None or r.key_id == key]
    return len(chosen), sum(r.cost_nusd for r in chosen)


async def test_admin_reads_any_key_and_a_key_reads_its_own(client: TestClient[Any, Any]
                                                           ) -> None:
    await seed(client)
    for token in (ADMIN, "sk-key-a"):
        resp = await client.get("/v1/api-keys/key-a/usage", headers=auth(token))
        assert resp.status == 200
        body = await resp.json()
        assert (body["total_requests"], body["total_cost_nusd"]) == _sum(RECORDS, "key-a")
        assert body["key_id"] == "key-a"
        assert body["total_cost"] == pytest.approx(body["total_cost_nusd"] / 1e9)
        assert sum(row["cost_nusd"] for row in body["breakdown"]) == body["total_cost_nusd"]


async def test_another_keys_usage_is_404_as_if_it_did_not_exist(client: TestClient[Any, Any]
                                                                ) -> None:
    for query in ("", "?group_by=nonsense"):  # refused before its parameters are read
        resp = await client.get(f"/v1/api-keys/key-b/usage{query}", headers=auth("sk-key-a"))
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert error["code"] == "not_found"
        assert "key-b" in error["message"]


async def test_organization_usage_needs_an_admin_key(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/organization/usage", headers=auth("sk-key-a"))
    assert resp.status == 403
    assert (await resp.json())["error"]["type"] == "permission_error"
    assert (await client.get("/v1/organization/usage")).status == 401
    assert (await client.get("/v1/organization/usage", headers=auth(ADMIN))).status == 200


@pytest.mark.parametrize(("query", "param"), [
    ({"start": "yesterday"}, "start"),
    ({"end": "2024-13-01"}, "end"),
    ({"start": "2024-05-01T25:00:00Z"}, "start"),
    ({"start": "1969-12-31"}, "start"),
    ({"start": "2024-05-10", "end": "2024-05-01"}, "end"),
    ({"start": "2024-05-10", "end": "2024-05-10"}, "end"),
    ({"start": "2023-01-01", "end": "2024-06-01"}, "end"),
    ({"group_by": "colour"}, "group_by"),
    ({"group_by": "extra."}, "group_by"),
    ({"resolution": "week"}, "resolution"),
    ({"format": "xml"}, "format"),
])
async def test_bad_parameters_are_400_naming_the_parameter(
        client: TestClient[Any, Any], query: dict[str, str], param: str) -> None:
    for path, token in (("/v1/organization/usage", ADMIN), ("/v1/api-keys/key-a/usage",
                                                             "sk-key-a")):
        resp = await client.get(path, params=query, headers=auth(token))
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        assert f"`{param}`" in error["message"]


async def test_window_defaults_to_the_last_30_days_and_accepts_dates_and_offsets(
        client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/v1/organization/usage", headers=auth(ADMIN))).json()
    start = datetime.fromisoformat(body["start"])
    end = datetime.fromisoformat(body["end"])
    assert end - start == timedelta(days=30)
    assert abs((end - datetime.now(UTC)).total_seconds()) < 60
    assert (body["group_by"], body["resolution"], body["breakdown"]) == ("model", None, [])

    params = {"start": "2024-05-01T02:00:00+02:00", "end": "2024-05-03", "resolution": "day"}
    body = await (await client.get("/v1/organization/usage", params=params,
                                   headers=auth(ADMIN))).json()
    assert (body["start"], body["end"]) == ("2024-05-01T00:00:00Z", "2024-05-03T00:00:00Z")
    assert body["resolution"] == "day"


async def test_breakdown_rows_carry_group_period_and_measures(client: TestClient[Any, Any]
                                                              ) -> None:
    await seed(client)
    params = {"group_by": "extra.team", "resolution": "day",
              "start": BASE.isoformat(), "end": (BASE + timedelta(days=4)).isoformat()}
    body = await (await client.get("/v1/organization/usage", params=params,
                                   headers=auth(ADMIN))).json()
    row = body["breakdown"][0]
    assert set(row) == {"extra.team", "period", "requests", "tokens", "prompt_tokens",
                        "completion_tokens", "cached_tokens", "cost", "cost_nusd",
                        "cached_requests", "savings", "savings_nusd"}
    assert row["tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    teams = {r["extra.team"] for r in body["breakdown"]}
    assert teams == {"search", "ads", "from-header", None}
    assert sum(r["requests"] for r in body["breakdown"]) == body["total_requests"] == 300
    assert sum(r["tokens"] for r in body["breakdown"]) == body["total_tokens"]


async def test_csv_is_one_row_per_group_with_exact_usd(client: TestClient[Any, Any]) -> None:
    formula = usage_record(request_id="formula", ts=BASE, model="=cmd()", provider="x",
                           cost_nusd=1)
    await seed(client, [*RECORDS, formula])
    resp = await client.get("/v1/organization/usage", params={"format": "csv"},
                            headers=auth(ADMIN))
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert list(rows[0])[:3] == ["model", "requests", "tokens"]
    assert sum(int(r["cost_nusd"]) for r in rows) == _sum(RECORDS)[1] + 1
    for r in rows:
        whole, frac = r["cost"].split(".")
        assert int(whole) * 10**9 + int(frac) == int(r["cost_nusd"])
    assert "'=cmd()" in {r["model"] for r in rows}  # never a formula in a spreadsheet


async def test_a_request_is_in_the_usage_report_within_two_seconds(
        client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/chat/completions", headers=auth("sk-key-a"), json={
        "model": "simulated/chat", "messages": [{"role": "user", "content": "hello"}],
        "requesty": {"user_id": "u-1", "tags": ["demo"]}})
    assert resp.status == 200
    cost = (await resp.json())["usage"]["cost"]
    ended = time.monotonic()
    while True:
        body = await (await client.get("/v1/api-keys/key-a/usage",
                                       params={"group_by": "tag"},
                                       headers=auth("sk-key-a"))).json()
        if body["total_requests"] == 1:
            break
        assert time.monotonic() - ended < 2.0
        await asyncio.sleep(0.05)
    assert body["breakdown"][0]["tag"] == "demo"
    assert body["total_cost"] == pytest.approx(cost)
