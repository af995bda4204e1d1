"""Upstream client cost: aiohttp's ClientSession against the gateway's h1 pool, same run.

    python loadtest/bench_upstream_client.py [--requests 20000] [--concurrency 64] [--rounds 2]

A fixed-answer server (a bare asyncio.Protocol: every request gets the same 712-byte JSON
with Content-Length, keep-alive) runs in a subprocess pinned to its own CPU, so the client
CPU time measured here (time.process_time of this process, pinned to another CPU) is the
client's alone. Both clients run on uvloop, as the gateway does, POST the same 300-byte
body through the same number of concurrent callers, and read each answer whole; the
rounds alternate the two clients to spread any drift over both.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
import uvloop

from proxy.providers.h1 import Endpoint, Pool

_ANSWER_BODY: Final = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"finish_reason":"stop","message":'
    b'{"role":"assistant","content":"'
)
_BODY_TAIL: Final = (
    b'"}}],"usage":{"prompt_tokens":12,"completion_tokens":40,"total_tokens":52}}'
)
ANSWER: Final = _ANSWER_BODY + b"x" * (712 - len(_ANSWER_BODY) - len(_BODY_TAIL)) + _BODY_TAIL
RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
    % (len(ANSWER), ANSWER)
)
REQUEST_BODY: Final = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + (
    b"y" * 230 + b'"}]}'
)
HEADERS: Final = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


class _FixedAnswer(asyncio.Protocol):
    """Answers each complete request (headers plus Content-Length body) with RESPONSE."""

    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self._buf) < end + 4 + length:
                return
            self._buf = self._buf[end + 4 + length:]
            assert self._transport is not None
            self._transport.write(RESPONSE)


def _serve(sock: socket.socket, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_FixedAnswer, sock=sock)
        await server.serve_forever()

    uvloop.run(main())


async def _drive(n: int, concurrency: int, one: Callable[[], Awaitable[bytes]]) -> float:
    """Run n calls through `concurrency` callers; returns the wall time."""
    left = n

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            body = await one()
            assert len(body) == len(ANSWER)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _measure(name: str, n: int, concurrency: int,
                   one: Callable[[], Awaitable[bytes]]) -> None:
    await _drive(min(n, 2000), concurrency, one)  # warm: connections open, caches filled
    cpu = time.process_time()
    wall = await _drive(n, concurrency, one)
    cpu = time.process_time() - cpu
    print(f"{name:8} {n / wall:9.0f} req/s   {cpu / n * 1e6:6.1f} µs client CPU per request")


async def _bench_aiohttp(url: str, n: int, concurrency: int) -> None:
    # As the gateway's providers configured it before h1.
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600, sock_connect=10),
        auto_decompress=True, skip_auto_headers=("User-Agent",),
    ) as session:
        async def one() -> bytes:
            resp = await session.post(url, data=REQUEST_BODY, headers=HEADERS)
            try:
                return await resp.read()
            finally:
                resp.release()

        await _measure("aiohttp", n, concurrency, one)


async def _bench_h1(url: str, n: int, concurrency: int) -> None:
    pool = Pool(limit=1000, timeout=600, connect_timeout=10)
    endpoint = Endpoint(url, HEADERS)

    async def one() -> bytes:
        resp = await pool.post(endpoint, REQUEST_BODY)
        try:
            return await resp.read()
        finally:
            resp.release()

    try:
        await _measure("h1", n, concurrency, one)
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    server = multiprocessing.get_context("fork").Process(
        target=_serve, args=(sock, server_cpu), daemon=True)
    server.start()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    where = (f"server on CPU {server_cpu}, client on CPU {client_cpu}" if client_cpu is not None
             else "one CPU shared by server and client")
    print(f"{args.requests} POSTs, {args.concurrency} concurrent, {len(ANSWER)}-byte answers "
          f"(server in a subprocess; {where})")

    async def run() -> None:
        for _ in range(args.rounds):
            await _bench_aiohttp(url, args.requests, args.concurrency)
            await _bench_h1(url, args.requests, args.concurrency)

    try:
        uvloop.run(run())
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
