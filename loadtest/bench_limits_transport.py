"""The limits' Redis transport on its own: redis-py pipelines against the lean connection;
and the whole of `RedisLimits` (admit + settle) on top of it.

    python loadtest/bench_limits_transport.py                  # 20,000 calls, 64 at a time
    python loadtest/bench_limits_transport.py --calls 100000 --concurrency 256 --loop asyncio
    python loadtest/bench_limits_transport.py --limits --tree ../other-checkout

Each of `--concurrency` workers admits and settles (the real ADMIT and SETTLE scripts, the
arguments `RedisLimits` sends, one API key per worker, no limit reached) until `--calls`
script calls are made, through an `AutoPipeline` with redis-py's pipelines (what the gateway
used before) and with the lean connection, in turns, in the same process, against the same
Redis. Printed per transport and round: calls per second, and the client's CPU per call
(time.process_time, so Redis's own work is not in it). Keys live under a namespace of the
run's own and are deleted afterwards.

With `--limits`, each worker instead admits and settles requests through `RedisLimits` (one
key per worker, a spend limit and an rpm limit, so every admit runs the ADMIT script; then
with a spend limit only, so most admits draw from a lease): requests per second and CPU
per request (admit + settle). `--tree` measures another checkout's `proxy/` the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import redis.asyncio as redis
import uvloop


def _tree() -> Path:
    """The checkout to measure: `--tree`, else this one (read before `proxy` is imported)."""
    if "--tree" in sys.argv[:-1]:
        return Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
    return Path(__file__).resolve().parent.parent


sys.path.insert(0, str(_tree()))
from proxy.auth import Principal
from proxy.config import LimitsConfig
from proxy.limits import scripts
from proxy.limits.autopipeline import AutoPipeline
from proxy.limits.durable import SpendSource
from proxy.limits.memory import reservation_id
from proxy.limits.redis import REDIS_TIMEOUT_S, RedisLimits

PERIOD = "2025-06"
TTL_MS = 60_000


async def worker(pipeline: AutoPipeline, client: redis.Redis, namespace: str, key_id: str,
                 rounds: int) -> None:
    admit, settle = client.register_script(scripts.ADMIT), client.register_script(scripts.SETTLE)
    keys = scripts.keys_of(namespace, key_id, PERIOD)
    for _ in range(rounds):
        rid = reservation_id()
        now_ms = int(time.time() * 1000)
        # The arguments RedisLimits.admit sends: the last two ask for no lease.
        result = await pipeline.call(admit, keys, [rid, 100_000, 10**15, now_ms, now_ms + TTL_MS,
                                                   0, 0, 50, 2 * TTL_MS, 0, ""])
        if result[0] == -1:  # no counter yet
            # counter, reservations, due: REBUILD clears the last two with a new counter
            await pipeline.call(client.register_script(scripts.REBUILD), keys[:3],
                                [0, 0, 3600])
            continue
        await pipeline.call(settle, [keys[0], keys[1], keys[2], keys[4]], [rid, 60_000, 0, 0])


async def run(client: redis.Redis, lean: bool, calls: int, concurrency: int) -> tuple[float, float]:
    """Calls per second and the client's CPU µs per call."""
    namespace = f"bench-transport-{uuid.uuid4().hex[:8]}"
    pipeline = AutoPipeline(client, REDIS_TIMEOUT_S, lean=lean)
    rounds = calls // (2 * concurrency)
    try:
        await worker(pipeline, client, namespace, "warm", 20)  # connections, script cache
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(pipeline, client, namespace, f"k{i}", rounds)
                               for i in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await pipeline.close()
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    made = rounds * concurrency * 2  # the few rebuilds not counted
    return made / wall, cpu / made * 1e6


def _limits(redis_url: str, namespace: str) -> RedisLimits:
    config = LimitsConfig(reservation_ttl_s=60)
    source = SpendSource(None, lambda: None)
    try:  # this checkout's: built from its collaborators
        return RedisLimits.from_url(config, redis_url, namespace, source)
    except AttributeError:  # a checkout from before the composition (issue 18)
        return RedisLimits(config, redis_url, namespace, source)  # type: ignore[call-arg]


async def limits_worker(limits: RedisLimits, principal: Principal, rounds: int) -> None:
    for _ in range(rounds):
        admission = await limits.admit(principal, "bench", 100_000, 50)
        limits.settle(admission, 60_000, 40)


async def run_limits(redis_url: str, rpm: int | None, requests: int, concurrency: int
                     ) -> tuple[float, float]:
    """Requests (admit + settle) per second and the client's CPU µs per request."""
    namespace = f"bench-limits-{uuid.uuid4().hex[:8]}"
    limits = _limits(redis_url, namespace)
    rounds = requests // concurrency
    keys = [Principal(f"k{i}", limit_nusd=10**15, rpm=rpm) for i in range(concurrency)]
    client = redis.Redis.from_url(redis_url)
    try:
        await asyncio.gather(*(limits_worker(limits, p, 5) for p in keys))  # counters, leases
        await limits.drain()
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(limits_worker(limits, p, rounds) for p in keys))
        await limits.drain()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert not limits.degraded and not limits.redis_errors, "Redis failed under the bench"
    finally:
        await limits.close()
        found = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if found:
            await client.delete(*found)
        await client.aclose()
    made = rounds * concurrency
    return made / wall, cpu / made * 1e6


async def main(args: argparse.Namespace) -> None:
    if args.limits:
        print(f"RedisLimits of {_tree()}: {args.calls} requests, {args.concurrency} at a time, "
              f"loop {args.loop}")
        for round_ in range(1, args.rounds + 1):
            for name, rpm in (("admit script + settle", 10**9), ("leased + settle", None)):
                rate, cpu_us = await run_limits(args.redis, rpm, args.calls, args.concurrency)
                print(f"round {round_}  {name:22}  {rate:9,.0f} requests/s  "
                      f"{cpu_us:6.1f} µs CPU/request")
        return
    client = redis.Redis.from_url(args.redis, max_connections=4096,
                                  socket_timeout=REDIS_TIMEOUT_S)
    try:
        print(f"{args.calls} calls, {args.concurrency} at a time, loop {args.loop}")
        for round_ in range(1, args.rounds + 1):
            for name, lean in (("redis-py pipeline", False), ("lean RESP", True)):
                rate, cpu_us = await run(client, lean, args.calls, args.concurrency)
                print(f"round {round_}  {name:18}  {rate:9,.0f} calls/s  {cpu_us:6.1f} µs CPU/call")
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--limits", action="store_true",
                        help="admit + settle through RedisLimits, not bare script calls")
    parser.add_argument("--tree", default=None,
                        help="the checkout whose proxy/ is measured (default: this one)")
    options = parser.parse_args()
    (uvloop.run if options.loop == "uvloop" else asyncio.run)(main(options))
