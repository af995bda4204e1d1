"""The limits' Redis transport on its own: redis-py pipelines against the lean connection.

    python loadtest/bench_limits_transport.py                  # 20,000 calls, 64 at a time
    python loadtest/bench_limits_transport.py --calls 100000 --concurrency 256 --loop asyncio

Each of `--concurrency` workers admits and settles (the real ADMIT and SETTLE scripts, the
arguments `RedisLimits` sends, one API key per worker, no limit reached) until `--calls`
script calls are made, through an `AutoPipeline` with redis-py's pipelines (what the gateway
used before) and with the lean connection, in turns, in the same process, against the same
Redis. Printed per transport and round: calls per second, and the client's CPU per call
(time.process_time, so Redis's own work is not in it). Keys live under a namespace of the
run's own and are deleted afterwards.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy.limits import scripts
from proxy.limits.autopipeline import AutoPipeline
from proxy.limits.memory import reservation_id
from proxy.limits.redis import REDIS_TIMEOUT_S

PERIOD = "2025-06"
TTL_MS = 60_000


async def worker(pipeline: AutoPipeline, client: redis.Redis, namespace: str, key_id: str,
                 rounds: int) -> None:
    admit, settle = client.register_script(scripts.ADMIT), client.register_script(scripts.SETTLE)
    keys = scripts.keys_of(namespace, key_id, PERIOD)
    for _ in range(rounds):
        rid = reservation_id()
        now_ms = int(time.time() * 1000)
        result = await pipeline.call(admit, keys, [rid, 100_000, 10**15, now_ms, now_ms + TTL_MS,
                                                   0, 0, 50, 2 * TTL_MS])
        if result[0] == -1:  # no counter yet
            await pipeline.call(client.register_script(scripts.REBUILD), [keys[0]],
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


async def main(args: argparse.Namespace) -> None:
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
    options = parser.parse_args()
    (uvloop.run if options.loop == "uvloop" else asyncio.run)(main(options))
