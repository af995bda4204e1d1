"""A gateway killed with SIGKILL while requests are in flight: at its next start every one of
them becomes a usage record (status 502, `worker_lost`, estimated) and its reservation is
settled, so Redis holds no reservation of the dead worker and its spend counter equals the
ledger, at once rather than after the sweeper's 900 s.

The gateway runs as `python -m proxy serve` on a fresh PostgreSQL and a Redis namespace; the
upstream is the fake OpenAI server in this test's loop, holding streams after their first
event and non-stream requests without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from polling import poll
import redis.asyncio as aioredis
from conftest import REDIS_URL
from fakes import FakeOpenAI, Hang, Reply
from ledger_support import wait_for

# Gateway worker processes or subprocesses: skipped by the quick run (-m "not slow").
pytestmark = pytest.mark.slow

ADMIN = "sk-admin-inflight-test"
ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "hello there"}]
MAX_TOKENS = 50
STREAMS_PER_KEY = 5
HELD_PER_KEY = 2  # non-stream requests the upstream never answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """One `serve` process; its stderr drained into `lines`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 30)).decode()
            if not line:
                raise AssertionError("gateway exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if "listening on" in line:
                break
        self._drain = asyncio.create_task(self._keep_draining())

    async def _keep_draining(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode())

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 30)
        if self._drain is not None:
            await self._drain


class Setup:
    def __init__(self, tmp: Path, dsn: str, ns: str, fake: FakeOpenAI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dsn = dsn
        self.ns = ns
        self.data = tmp / "data"
        self.config = tmp / "gateway.toml"
        self.config.write_text(f"""
redis_namespace = "{ns}"
access_log = false

[providers.up]
protocol = "openai"
base_url = "{fake.base_url}"
api_key_env = "UP_KEY"
first_byte_timeout_s = 60
timeout_s = 120

[[models]]
id = "up/model"
provider = "up"
upstream = "m"
input_price = 1.0
output_price = 2.0
""")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        self.env.update(PROXY_ADMIN_KEY=ADMIN, PROXY_DATA_DIR=str(self.data), UP_KEY="x",
                        PROXY_DATABASE_URL=dsn, PROXY_REDIS_URL=REDIS_URL,
                        PYTHONPATH=str(ROOT))

    async def start(self) -> Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(self.config),
            "--port", str(self.port), cwd=self.data.parent, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        process = Process(proc)
        await process.ready()
        return process

    def journal_lines(self) -> list[str]:
        spool = self.data / "spool"
        if not spool.exists():
            return []
        return [line for p in sorted(spool.glob("inflight-*.jsonl"))
                for line in p.read_text().splitlines()]


@pytest.fixture
async def setup(tmp_path: Path, fresh_pg: str, redis_namespace: str,
                fake_openai: FakeOpenAI) -> AsyncIterator[Setup]:
    yield Setup(tmp_path, fresh_pg, redis_namespace, fake_openai)


async def create_key(http: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    resp = await http.post(url + "/v1/api-keys", json=body,
                           headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def ledger_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(
            "SELECT request_id, key_id, status, error_code, estimated, stream, prompt_tokens,"
            " completion_tokens, cost_nusd FROM usage_records"))
    finally:
        await conn.close()


async def wait_rows(dsn: str, n: int) -> list[asyncpg.Record]:
    # the ledger writes behind: up to 10 s
    rows = await poll(lambda: ledger_rows(dsn), lambda rows: len(rows) >= n)
    if len(rows) < n:
        raise AssertionError(f"{len(rows)} records, expected {n}")
    return rows


async def redis_state(ns: str, key_id: str) -> tuple[int, int, dict[Any, Any], int]:
    """(settled, reserved, reservation fields, due entries) of the key's counters."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        settled = reserved = due = 0
        fields: dict[Any, Any] = {}  # bytes: the client does not decode
        async for name in client.scan_iter(match=f"{ns}:lim:{{{key_id}}}:*"):
            text = name.decode()
            if ":d:" in text:  # a settle's mark (whose id may end in ":c" too)
                continue
            if text.endswith(":c"):
                counter = await client.hgetall(name)
                settled += int(counter.get(b"s", 0))
                reserved += int(counter.get(b"r", 0))
            elif text.endswith(":res"):
                fields.update(await client.hgetall(name))
            elif text.endswith(":due"):
                due += await client.zcard(name)
        return settled, reserved, fields, due
    finally:
        await client.aclose()


async def test_requests_in_flight_when_a_worker_is_sigkilled_are_recorded_and_settled_at_next_start(
    setup: Setup, fake_openai: FakeOpenAI,
) -> None:
    first = await setup.start()
    async with aiohttp.ClientSession() as http:
        # A: only a spend limit (drawn from leases); B: a limit and rpm (own reservations).
        key_a = await create_key(http, setup.url, limit=10.0)
        key_b = await create_key(http, setup.url, limit=10.0, rpm=1000)
        keys = (key_a, key_b)
        # One finished request per key first: the counters and the ledger do not start at 0.
        for key in keys:
            resp = await http.post(setup.url + "/v1/chat/completions",
                                   json={"model": "up/model", "messages": USER},
                                   headers={"Authorization": f"Bearer {key['key']}"})
            assert resp.status == 200, await resp.text()
        await wait_rows(setup.dsn, 2)

        fake_openai.default = Reply(chunks=["one ", "two ", "three"], interval_s=120)
        opened: list[aiohttp.ClientResponse] = []
        for key in keys:
            for _ in range(STREAMS_PER_KEY):
                resp = await http.post(
                    setup.url + "/v1/chat/completions",
                    json={"model": "up/model", "messages": USER, "stream": True,
                          "max_tokens": MAX_TOKENS},
                    headers={"Authorization": f"Bearer {key['key']}"})
                assert resp.status == 200
                assert (await resp.content.readline()).startswith(b"data: ")  # in flight
                opened.append(resp)
        fake_openai.default = Hang()
        held = [asyncio.create_task(http.post(
            setup.url + "/v1/chat/completions",
            json={"model": "up/model", "messages": USER, "max_tokens": MAX_TOKENS},
            headers={"Authorization": f"Bearer {key['key']}"}))
            for key in keys for _ in range(HELD_PER_KEY)]
        in_flight = len(keys) * (STREAMS_PER_KEY + HELD_PER_KEY)
        await wait_for(lambda: fake_openai.hits == 2 + in_flight)
        await wait_for(lambda: sum(line.startswith('["A"') for line in setup.journal_lines())
                       >= in_flight)
        for key in keys:  # the dead worker's reservations are in Redis
            _, reserved, _, _ = await redis_state(setup.ns, key["id"])
            assert reserved > 0

        await first.stop(signal.SIGKILL)
        for task in held:
            with contextlib.suppress(aiohttp.ClientError):
                await task
        for resp in opened:
            resp.close()
        assert len(await ledger_rows(setup.dsn)) == 2  # nothing recorded them

        second = await setup.start()
        try:
            rows = await wait_rows(setup.dsn, 2 + in_flight)
            assert len(rows) == 2 + in_flight
            lost = [r for r in rows if r["status"] != 200]
            assert len(lost) == in_flight
            assert {(r["status"], r["error_code"], r["estimated"]) for r in lost} == {
                (502, "worker_lost", True)}
            assert sorted(r["stream"] for r in lost) == [False] * 4 + [True] * 10
            prompt = lost[0]["prompt_tokens"]
            assert prompt > 0
            # The prompt estimate, priced at 1 USD per million input tokens.
            assert {(r["prompt_tokens"], r["completion_tokens"], r["cost_nusd"])
                    for r in lost} == {(prompt, 0, prompt * 1_000)}
            for key in keys:
                settled, reserved, fields, due = await redis_state(setup.ns, key["id"])
                assert (reserved, due) == (0, 0)
                assert [f for f in fields if f[:2] in (b"a:", b"n:")] == []
                assert settled == sum(r["cost_nusd"] for r in rows if r["key_id"] == key["id"])
            assert setup.journal_lines() == []  # the dead worker's journal is gone
        finally:
            await second.stop()
    # SIGTERM with every request recorded: no admission journal is left for a start.
    assert list((setup.data / "spool").glob("inflight-*")) == []
    assert len(await ledger_rows(setup.dsn)) == 2 + in_flight
