"""Helpers for the ledger tests: databases, known records, sums computed independently,
and a TCP proxy in front of PostgreSQL that a test can cut and restore."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

# The polling helper, re-exported for the tests that import it from here.
from polling import wait_for as wait_for

from proxy.ledger.record import UsageRecord

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# USD per million tokens (input, output) -> nano-USD per token, exact integers.
PRICES = {"openai/gpt-4o-mini": (150, 600), "anthropic/claude-3-5-haiku": (800, 4000),
          "simulated/chat": (150, 600)}
PROVIDER = {"openai/gpt-4o-mini": "openai", "anthropic/claude-3-5-haiku": "anthropic",
            "simulated/chat": "simulated"}
KEYS = ("key-a", "key-b", "key-c", "key-d")


async def create_database() -> str:
    name = f"proxy_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def drop_database(url: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


def usage_record(**fields: Any) -> UsageRecord:
    """The tests' one UsageRecord factory: `fields` over a plain 200 record of
    `simulated/chat` (the request id, model and provider follow what is given)."""
    model = fields.get("model", "simulated/chat")
    base = UsageRecord(
        request_id="req-1", ts=datetime.now(UTC), key_id="key-a", model_requested=model,
        model=model, provider=PROVIDER.get(model, model.split("/")[0]), region="global",
        status=200)
    return msgspec.structs.replace(base, **fields)


def record(i: int, ts: datetime, **kw: Any) -> UsageRecord:
    """Record `i` at `ts`, priced from PRICES for its model and tokens."""
    model = kw.pop("model", "openai/gpt-4o-mini")
    prompt = kw.pop("prompt_tokens", 100)
    completion = kw.pop("completion_tokens", 20)
    inp, out = PRICES[model]
    fields: dict[str, Any] = {
        "request_id": f"req-{i:06d}", "ts": ts, "model": model,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "cost_nusd": prompt * inp + completion * out, "latency_ms": 12.5,
    }
    return usage_record(**(fields | kw))


def known_records(base: datetime, n: int = 900, seed: int = 7) -> list[UsageRecord]:
    """Records over ~3 days from `base`, across models, keys, statuses and metadata."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = base + timedelta(seconds=rng.randrange(0, 3 * 86400),
                              microseconds=rng.randrange(10**6))
        model = rng.choice(list(PRICES))
        status = rng.choice((200, 200, 200, 200, 429, 502))
        hit = status == 200 and rng.random() < 0.1
        tags = rng.choice(([], ["prod"], ["prod", "beta"], ["beta", "beta"], ["eu", "", "prod"]))
        extra = rng.choice(({}, {"team": "search"}, {"team": "ads", "env": "prod"}))
        headers = rng.choice(({}, {"team": "from-header"}, {"env": "staging"}))
        prompt = rng.randrange(0, 5000)
        completion = 0 if status != 200 else rng.randrange(0, 2000)
        r = record(i, ts, model=model, key_id=rng.choice(KEYS), status=status,
                   prompt_tokens=prompt, completion_tokens=completion,
                   cached_tokens=rng.randrange(0, prompt + 1) if rng.random() < 0.3 else 0,
                   user_id=rng.choice((None, "alice", "bob", "carol")), tags=tags,
                   extra=extra, headers=headers, cache_hit=hit)
        if hit:
            r.savings_nusd, r.cost_nusd = r.cost_nusd, 0
        out.append(r)
    return out


# --- sums computed independently of proxy.ledger.report --------------------------------


def _period(ts: datetime, resolution: str | None) -> datetime | None:
    if resolution == "hour":
        return datetime(ts.year, ts.month, ts.day, ts.hour, tzinfo=UTC)
    if resolution == "day":
        return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
    if resolution == "month":
        return datetime(ts.year, ts.month, 1, tzinfo=UTC)
    return None


def _groups(r: UsageRecord, group_by: str) -> list[object]:
    if group_by == "key":
        return [r.key_id]
    if group_by in ("model", "provider", "status", "user_id"):
        return [getattr(r, group_by)]
    if group_by == "tag":
        tags = {t for t in r.tags if t}
        return [*sorted(tags)] if tags else [None]
    name = group_by.removeprefix("extra.")
    if name in r.extra:
        return [r.extra[name]]
    return [r.headers.get(name)]


# requests, tokens, prompt, completion, cost, cached requests, savings
Sums = tuple[int, int, int, int, int, int, int]


def expected(records: Iterable[UsageRecord], start: datetime, end: datetime, group_by: str,
             resolution: str | None, key_id: str | None
             ) -> tuple[dict[tuple[object, datetime | None], Sums], Sums]:
    rows: dict[tuple[object, datetime | None], list[int]] = {}
    total = [0] * 7
    for r in records:
        if not start <= r.ts < end or (key_id is not None and r.key_id != key_id):
            continue
        v = [1, r.prompt_tokens + r.completion_tokens, r.prompt_tokens, r.completion_tokens,
             r.cost_nusd, int(r.cache_hit), r.savings_nusd]
        total = [a + b for a, b in zip(total, v, strict=True)]
        for g in _groups(r, group_by):
            acc = rows.setdefault((g, _period(r.ts, resolution)), [0] * 7)
            acc[:] = [a + b for a, b in zip(acc, v, strict=True)]
    as_sums = {k: (v[0], v[1], v[2], v[3], v[4], v[5], v[6]) for k, v in rows.items()}
    return as_sums, (total[0], total[1], total[2], total[3], total[4], total[5], total[6])


async def count_records(dsn: str) -> tuple[int, int, int]:
    """(rows, distinct request ids, requests counted by the hourly rollup)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM usage_records), "
            "(SELECT count(DISTINCT request_id) FROM usage_records), "
            "(SELECT coalesce(sum(requests), 0) FROM usage_hourly)")
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


class TcpProxy:
    """Forwards a local port to PostgreSQL; `cut()` closes the listener and every
    connection (the database looks down), `restore()` listens again on the same port."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def dsn_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
