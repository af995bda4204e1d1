"""Streamed throughput of the cloud protocols (Azure, Bedrock) against the bare forwarder.

    PYTHONPATH=. python loadtest/bench_cloud.py [--rounds 5] [--seconds 3]

The same stack as `bench.py` (`stack.Gateway`: PostgreSQL ledger, Redis limits, a user key;
the server under test alone on the server core, wrk and the upstream on the load core),
with one upstream that answers the reference stream (`shapes.STREAM_TOKENS` text chunks,
a finish, usage) in each protocol's wire format, whole, from precomputed bytes:

  POST /v1/chat/completions                      OpenAI SSE (the bare forwarder, `openai`)
  POST /openai/deployments/{d}/chat/completions  Azure SSE, its filter preamble first
  POST /model/{id}/converse-stream               Bedrock eventstream frames (unsigned check)

Rounds alternate the targets (bare, then the gateway to each protocol), wrk at c=64 for
`--seconds`; the report gives each target's median requests/s, its share of the bare
forwarder's, and CPU a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import shapes
import stack

LUA: Final = HERE / "wrk" / "post.lua"
CLOUD_TOML: Final = """
[providers.cloud-azure]
protocol = "azure"
base_url = "{up}"
api_version = "2024-10-21"
api_key_env = "BENCH_UPSTREAM_KEY"

[providers.cloud-bedrock]
protocol = "bedrock"
base_url = "{up}"
aws_region = "eu-central-1"

[[models]]
id = "cloud-azure/gpt-4o-mini"
provider = "cloud-azure"
upstream = "gpt-4o-mini"
input_price = 0.15
output_price = 0.60
context_window = 128000

[[models]]
id = "cloud-bedrock/claude"
provider = "cloud-bedrock"
upstream = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"
input_price = 3.30
output_price = 16.50
context_window = 200000
max_output_tokens = 16384
"""
TARGETS: Final = {
    "bare": "gpt-4o-mini",
    "gateway openai": stack.STREAM_MODEL,
    "gateway azure": "cloud-azure/gpt-4o-mini",
    "gateway bedrock": "cloud-bedrock/claude",
}


# -- the upstream: precomputed answers on a bare asyncio protocol --------------------------


def _answers() -> dict[str, bytes]:
    from fakes import Reply, azure_server, bedrock_server, openai_server

    reply = Reply(chunks=[f" {w}" for w in shapes.words(shapes.STREAM_TOKENS)],
                  prompt_tokens=shapes.PROMPT_TOKENS, completion_tokens=shapes.STREAM_TOKENS)
    req: dict[str, Any] = {"model": "gpt-4o-mini", "stream_options": {"include_usage": True}}

    def answer(ctype: str, body: bytes) -> bytes:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "x-amzn-RequestId: bench\r\n\r\n")
        return head.encode() + body

    sse = "text/event-stream"
    return {
        "openai": answer(sse, b"".join(openai_server.chunks(reply, req, 1))),
        "azure": answer(sse, b"".join(azure_server.chunks(reply, req, 1))),
        "bedrock": answer(bedrock_server.EVENTSTREAM, b"".join(bedrock_server.frames(reply, req, 1))),
    }


class _Upstream(asyncio.Protocol):
    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            size = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + size:
                return
            self.buf = self.buf[end + 4 + size:]
            path = head.split(" ", 2)[1]
            kind = ("bedrock" if "/converse-stream" in path
                    else "azure" if path.startswith("/openai/") else "openai")
            self.transport.write(self.answers[kind])  # type: ignore[attr-defined]


def serve_upstream(port: int) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    answers = _answers()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: _Upstream(answers), "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the runs --------------------------------------------------------------------------------


def wrk(url: str, body: Path, key: str | None, seconds: int, connections: int, core: int,
        watched: stack.Proc) -> tuple[float, float, int]:
    env = dict(os.environ, WRK_BODY=str(body), WRK_KEY=key or "")
    cmd = stack.pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                        "-s", str(LUA), url], core)
    ticks0 = watched.cpu_ticks()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60,
                         check=False)
    ticks1 = watched.cpu_ticks()
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.MULTILINE)
    if not m:
        raise stack.BenchError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    s = json.loads(m.group(1))
    rps = s["requests"] / (s["duration_us"] / 1e6)
    cpu_us = (ticks1 - ticks0) / stack.CLK_TCK * 1e6 / max(1, s["requests"])
    return rps, cpu_us, s["status"] + s["read"] + s["timeout"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--load-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    args = p.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp:
        work = Path(tmp)
        port = stack.free_port()
        up = f"http://127.0.0.1:{port}"
        upstream = stack.Proc("upstream", stack.pinned(
            [args.python, str(Path(__file__).resolve()), "--serve-upstream", str(port)],
            args.load_core), work / "upstream.log",
            env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        gw: stack.Gateway | None = None
        bare: stack.Proc | None = None
        try:
            stack.wait_http(up + "/v1/models", upstream)
            bare, bare_url = stack.start_bare(work, args.python, args.server_core, up)
            gw = stack.Gateway(work / "gw", args.python, args.server_core, up + "/v1",
                               up + "/v1", extra_toml=CLOUD_TOML.format(up=up),
                               env={"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                                    "AWS_SECRET_ACCESS_KEY": "bench-secret"})
            bodies = {}
            for target, model in TARGETS.items():
                bodies[target] = work / f"{target.replace(' ', '-')}.json"
                bodies[target].write_bytes(shapes.chat_request(model, stream=True))
            results: dict[str, list[tuple[float, float, int]]] = {t: [] for t in TARGETS}
            for _ in range(args.rounds):
                for target in TARGETS:
                    if target == "bare":
                        url, key, proc = bare_url + "/v1/chat/completions", None, bare
                    else:
                        url, key, proc = gw.base + "/v1/chat/completions", gw.key, gw.proc
                    results[target].append(wrk(url, bodies[target], key, args.seconds,
                                               args.connections, args.load_core, proc))
            base = statistics.median(r[0] for r in results["bare"])
            print(f"stream, c={args.connections}, {args.rounds} rounds of {args.seconds} s; "
                  f"{shapes.STREAM_TOKENS} text chunks a stream")
            print("| target | requests/s (median) | of bare | CPU a request | errors |")
            print("| --- | --- | --- | --- | --- |")
            for target, runs in results.items():
                rps = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                print(f"| {target} | {rps:,.0f} | {100 * rps / base:.0f} % | {cpu:.0f} µs | "
                      f"{sum(r[2] for r in runs)} |")
        finally:
            if gw is not None:
                gw.stop()
            if bare is not None:
                bare.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
