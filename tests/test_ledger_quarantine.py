"""A record the database refuses is still counted: written again with its metadata replaced
by a marker, so the ledger, its rollups, the usage API and the spend counter keep agreeing;
the original waits in the quarantine file, and a metric (and its alert) says it happened."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import UPSTREAM_SECRET
from fakes import FakeAnthropic, FakeOpenAI
from harness import Gateway
from ledger_gateway import new_key, pg_redis_gateway, settled
from ledger_support import count_records, record, wait_for

from proxy.config import LedgerConfig
from proxy.gateway import GATEWAY
from proxy.ledger.postgres import postgres_ledger
from proxy.ledger.salvage import MARKER_TAG
from proxy.ledger.writer import LedgerWriter, WriterOptions

USER = [{"role": "user", "content": "Hello"}]
FAST: WriterOptions = {"backoff_s": (0.02, 0.1), "write_timeout_s": 5.0}


@pytest.fixture
async def gw(tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
             fresh_pg: str, redis_url: str, redis_namespace: str,
             monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    async with pg_redis_gateway(tmp_path, fake_openai.base_url, fake_anthropic.base_url,
                                fresh_pg, redis_url, redis_namespace) as g:
        yield g


def metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith((name + " ", name + "{"))]
    assert values, f"{name} not exported"
    return sum(values)


async def test_a_record_the_database_refuses_is_counted_with_a_marker_and_raises_the_metric(
        gw: Gateway, http: aiohttp.ClientSession, fresh_pg: str) -> None:
    # Metadata within every edge bound that this database refuses all the same (a rule an
    # operator added, a column changed under the gateway): the edge cannot know.
    conn = await asyncpg.connect(fresh_pg)
    try:
        await conn.execute("ALTER TABLE usage_records ADD CONSTRAINT no_mallory "
                           "CHECK (user_id IS DISTINCT FROM 'mallory')")
    finally:
        await conn.close()
    key = await new_key(http, gw)
    auth = {"Authorization": f"Bearer {key['key']}"}
    for user in ("alice", "mallory", "bob"):
        resp = await http.post(gw.url + "/v1/chat/completions", headers=auth, json={
            "model": "fake/gpt", "messages": USER,
            "requesty": {"user_id": user, "tags": ["prod"], "extra": {"team": "a"}}})
        assert resp.status == 200, await resp.text()
    charged, recorded = await settled(http, gw, fresh_pg, key["id"], records=3)
    assert charged == recorded > 0
    # The usage API: every request and all the cost, the refused one under the marker.
    resp = await http.get(f"{gw.url}/v1/api-keys/{key['id']}/usage?group_by=tag",
                          headers=gw.headers)
    report = await resp.json()
    assert (report["total_requests"], report["total_cost_nusd"]) == (3, recorded)
    by_tag = {row["tag"]: row["requests"] for row in report["breakdown"]}
    assert by_tag == {"prod": 2, MARKER_TAG: 1}
    scrape = await (await http.get(gw.url + "/metrics")).text()
    assert metric(scrape, "proxy_ledger_records_salvaged_total") == 1
    assert metric(scrape, "proxy_ledger_records_quarantined_total") == 0
    # The original, metadata and all, is kept for an operator.
    ledger = gw.app[GATEWAY].ledger
    assert isinstance(ledger, LedgerWriter)
    [line] = [json.loads(x) for f in ledger.journal.directory.glob("quarantine-*.jsonl")
              for x in f.read_text().splitlines()]
    assert line["salvaged"] is True and "no_mallory" in line["reason"]
    assert line["record"]["user_id"] == "mallory"
    assert line["record"]["extra"] == {"team": "a"}


async def test_a_record_the_journal_cannot_encode_is_written_with_a_marker(
        fresh_pg: str, tmp_path: Path) -> None:
    """A lone surrogate (a header byte that was not UTF-8, had it got past the edge) cannot
    be encoded into the journal or sent to PostgreSQL: the marker copy carries its cost."""
    spool = tmp_path / "spool"
    ledger = postgres_ledger(fresh_pg, LedgerConfig(flush_interval_ms=20), spool, **FAST)
    await ledger.start()
    ts = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
    good = record(1, ts, user_id="alice")
    bad = record(2, ts, user_id="caf\udce9", headers={"team": "\udcff"})
    ledger.enqueue(good)
    ledger.enqueue(bad)
    await wait_for(lambda: ledger.stats().records_written == 2)
    await ledger.close()
    assert (ledger.stats().records_salvaged, ledger.stats().records_quarantined) == (1, 0)
    assert await count_records(fresh_pg) == (2, 2, 2)
    conn = await asyncpg.connect(fresh_pg)
    try:
        rows = {r["request_id"]: r for r in await conn.fetch(
            "SELECT request_id, cost_nusd, user_id, tags, headers FROM usage_records")}
        rolled = await conn.fetchval("SELECT sum(cost_nusd) FROM usage_key_hourly")
    finally:
        await conn.close()
    marked = rows[bad.request_id]
    assert (marked["cost_nusd"], marked["user_id"], marked["tags"]) == (
        bad.cost_nusd, None, [MARKER_TAG])
    assert rolled == good.cost_nusd + bad.cost_nusd
    [line] = [json.loads(x) for f in spool.glob("quarantine-*.jsonl")
              for x in f.read_text().splitlines()]
    assert line["salvaged"] is True and "\\udce9" in line["record"]
