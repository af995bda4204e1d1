"""A connection flood past the file-descriptor limit: `python -m proxy serve` with a low
`RLIMIT_NOFILE` refuses what is over its cap and keeps descriptors for its database."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from polling import wait_for
from harness import ADMIN_KEY
from test_cli import free_port

# Gateway worker processes or subprocesses: skipped by the quick run (-m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOFILE = 320  # the automatic cap is then (320 - 256) // 2 = 32 connections
FLOOD = 600  # more connections than the process has descriptors


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture
def served(tmp_path: Path, fresh_pg: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env = {**environ, "PROXY_DATABASE_URL": fresh_pg, "PROXY_ADMIN_KEY": ADMIN_KEY,
           "PROXY_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    config = tmp_path / "edge.toml"
    config.write_text("[edge]\nheader_timeout_s = 1.0\n")  # the held ones end soon
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--config", str(config)],
        cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_low_nofile,
    )
    try:
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
            return False
        writer.close()
        return True

    await wait_for(listening, 30, "the gateway did not start")


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return int(head.split()[1]), await asyncio.wait_for(reader.readexactly(length), 10)


async def test_connection_flood_past_the_fd_limit_leaves_the_database_reachable(
    served: tuple[int, subprocess.Popen[str]],
) -> None:
    port, proc = served
    await _wait_listening(port, proc)
    # An operator's connection, open before the flood (kept alive).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await _get(reader, writer, "/healthz"))[0] == 200

    flood = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                   for _ in range(FLOOD)))

    async def answer(r: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(r.read(), 5)
        except TimeoutError:
            return b"(held open)"

    answers = await asyncio.gather(*(answer(r) for r, _ in flood))
    # A fresh connection to PostgreSQL still finds a descriptor (readiness opens one).
    status, body = await _get(reader, writer, "/readyz")
    checks = msgspec.json.decode(body)["checks"]
    assert checks["database"]["status"] == "ok", checks
    assert status == 200
    # Over the cap each one was answered 503 and closed at once; the rest (which sent
    # nothing) were closed at the header timeout: none was left holding a descriptor.
    refused = sum(1 for a in answers if a.startswith(b"HTTP/1.1 503"))
    assert refused >= FLOOD - 40
    assert answers.count(b"(held open)") == 0
    for _, w in flood:
        w.close()
    writer.close()
