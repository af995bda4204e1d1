"""`serve --workers 4` on one Redis and a fresh PostgreSQL: a spend limit holds across
processes under 200 concurrent requests, and a deleted key is refused by every worker
within a second.

The upstream is a small OpenAI-shaped fake, run on its own thread and event loop for the
module's gateway, that counts the requests reaching it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import aiohttp
import asyncpg
import pytest
from polling import poll, wait_for
from aiohttp import web
from conftest import PG_ADMIN_URL, REDIS_URL

# Gateway worker processes or subprocesses: skipped by the quick run (-m "not slow").
pytestmark = pytest.mark.slow

ADMIN = "sk-admin-workers-test"
ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 4  # what the gateway estimates for USER (1 text token + 3 per message)
COMPLETION_TOKENS = 30
MAX_TOKENS = 50
USER = [{"role": "user", "content": "hi"}]
# Prices are USD per million tokens: 1 USD/M is 1,000 nano-USD a token.
WORST_CASE = PROMPT_TOKENS * 1_000 + MAX_TOKENS * 2_000  # nano-USD reserved per request
COST = PROMPT_TOKENS * 1_000 + COMPLETION_TOKENS * 2_000  # nano-USD charged per request


class CountingUpstream:
    """An OpenAI chat endpoint that answers after 50 ms and counts every request."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _chat(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(0.05)  # keep requests in flight together
        return web.json_response({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        })

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workers:
    def __init__(self, url: str, upstream: CountingUpstream, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.upstream = upstream
        self.proc = proc


def _database(sql: str) -> None:
    async def admin() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin())


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    tmp = tmp_path_factory.mktemp("workers")
    db = f"proxy_test_workers_{os.getpid()}_{int(time.time())}"
    _database(f'CREATE DATABASE "{db}"')
    ns = f"test-workers-{os.getpid()}-{int(time.time())}"
    port = free_port()
    with CountingUpstream() as upstream:
        config = tmp / "gateway.toml"
        config.write_text(f"""
redis_namespace = "{ns}"
access_log = false

[providers.up]
protocol = "openai"
base_url = "http://127.0.0.1:{upstream.port}/v1"
api_key_env = "UP_KEY"

[[models]]
id = "up/model"
provider = "up"
upstream = "m"
input_price = 1.0
output_price = 2.0
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        env.update(PROXY_ADMIN_KEY=ADMIN, PROXY_DATA_DIR=str(tmp / "data"), UP_KEY="x",
                   PROXY_DATABASE_URL=PG_ADMIN_URL.rpartition("/")[0] + "/" + db,
                   PROXY_REDIS_URL=REDIS_URL)
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", "4",
             "--port", str(port)],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            _wait_for_workers(proc, 4)
            yield Workers(f"http://127.0.0.1:{port}", upstream, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            _database(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{ns}*"))
            if keys:
                client.delete(*keys)
            client.close()


def _wait_for_workers(proc: subprocess.Popen[str], n: int) -> None:
    """Each worker logs `listening on` once its app (keys loaded, limits started) is up."""
    assert proc.stderr is not None
    seen, lines = 0, list[str]()
    deadline = time.monotonic() + 30
    while seen < n and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError("gateway exited:\n" + "".join(lines))
        lines.append(line)
        seen += "listening on" in line
    assert seen == n, "".join(lines)
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


async def create_key(http: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    resp = await http.post(url + "/v1/api-keys", json=body, headers=admin_headers())
    assert resp.status == 200, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def chat(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict[str, Any]]:
    body = {"model": "up/model", "messages": USER, "max_tokens": MAX_TOKENS}
    resp = await http.post(url + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def test_200_concurrent_requests_on_4_workers_overshoot_by_less_than_one_request(
    workers: Workers,
) -> None:
    limit_nusd = 2_000_000  # room for 31.25 requests at their actual cost, 19.2 at worst case
    # Fresh connections for every request, so the kernel spreads them over the 4 workers.
    connector = aiohttp.TCPConnector(limit=200, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        made = await create_key(http, workers.url, limit=limit_nusd / 1e9)
        hits_before = workers.upstream.hits
        admitted, waves = 0, []
        # Waves of 200 at once until one admits nothing: the budget is then used up, and the
        # settled spend shows the overshoot (reservations make it less than one request).
        for _ in range(10):
            results = await asyncio.gather(*(chat(http, workers.url, made["key"])
                                             for _ in range(200)))
            ok = sum(status == 200 for status, _ in results)
            refused = [body for status, body in results if status != 200]
            assert all(b["error"]["code"] == "insufficient_quota" for b in refused), refused[:3]
            # Nothing refused reached the upstream: it saw exactly the admitted requests.
            assert workers.upstream.hits - hits_before == admitted + ok
            admitted += ok
            waves.append(ok)
            if not ok:
                break
        spent = admitted * COST

        async def settled() -> int:
            resp = await http.get(f"{workers.url}/v1/api-keys/{made['id']}",
                                  headers=admin_headers())
            return round(float((await resp.json())["spend"]) * 1e9)

        assert await poll(settled, lambda s: s == spent, 5) == spent
    overshoot = spent - limit_nusd
    print(f"\nadmitted per wave of 200: {waves}; settled {spent} nano-USD on a limit of "
          f"{limit_nusd}: overshoot {overshoot} (one request: {COST} actual, {WORST_CASE} worst)")
    assert waves[0] >= limit_nusd // WORST_CASE  # reservations did not refuse too early
    assert waves[-1] == 0 and 0 <= overshoot < WORST_CASE


async def test_deleted_key_is_refused_by_every_worker_within_1s(workers: Workers) -> None:
    connector = aiohttp.TCPConnector(limit=64, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        made = await create_key(http, workers.url)
        log: list[tuple[float, int]] = []  # (sent at, status)
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                status, _ = await chat(http, workers.url, made["key"])
                log.append((sent, status))

        floods = [asyncio.create_task(flood()) for _ in range(16)]
        await wait_for(lambda: sum(s == 200 for _, s in log) >= 16,
                       what="the key was not served before its delete")
        resp = await http.delete(f"{workers.url}/v1/api-keys/{made['id']}", headers=admin_headers())
        assert resp.status == 200
        deleted = time.monotonic()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*floods)
    assert any(s == 200 for t, s in log if t < deleted)
    late = [(t - deleted, s) for t, s in log if t > deleted + 1.0]
    assert len(late) > 50 and all(s == 401 for _, s in late), late[:5]
    served_after = [t - deleted for t, s in log if t > deleted and s == 200]
    print(f"\n{len(served_after)} requests sent after the delete returned were admitted; "
          f"{len(late)} sent 1-1.5 s after it, all 401")
