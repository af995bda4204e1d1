"""What the counting tools (count.py: callgrind, strace) share: the targets they start
(the bare forwarder, one gateway per checkout), the upstreams, the client and its modes.

  chat    non-streaming chat completion; nginx answers bench.py's fixed 712-byte body
  stream  bench.py's 23-event SSE stream, which nginx sends in one piece
  paced   fake_upstream.py streams, 20 tokens at 50 tokens/s (each token its own write),
          4 streams at once, starts staggered; figures per stream and per relayed token chunk
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes
import stack

try:
    import aiohttp
except ImportError:  # pragma: no cover
    sys.exit("the counting tools need aiohttp: run them with the gateway's venv python "
             f"({stack.GATEWAY_PYTHON_DEFAULT}; scripts/bench.sh makes it)")

MODES: Final = ("chat", "stream", "paced")
TARGETS: Final = ("bare", "gateway")
PACED_MODEL: Final = "bench-paced/gpt-4o-mini"
BARE_MODEL: Final = "gpt-4o-mini"  # bench.py's: the bare forwarder passes the body on as is
CHAT_PATH: Final = "/v1/chat/completions"
CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout(total=600)
# Before zeroing and before each dump: what the last requests set off (a ledger flush, the
# access log's write 100 ms later) lands inside the window that caused it.
SETTLE_S: Final = 0.3


class HarnessError(Exception):
    """Something other than the gateway's cost went wrong: the figure would mean nothing."""


@dataclass
class Target:
    """One server process to count, and how the client calls it."""

    label: str  # "bare", or the gateway's tree: "gateway" (one tree), "A", "B" (--compare)
    proc: stack.Proc
    workdir: Path  # its log (and callgrind's dumps, strace's summaries)
    base: str
    key: str | None
    models: dict[str, str]  # the modes it serves, and the model to ask for
    stop: Callable[[], None]
    gateway: stack.Gateway | None = None  # None: the bare forwarder (no /metrics, no ledger)


@dataclass(frozen=True)
class Launch:
    """How the counting tool runs each server: under a wrapper (valgrind), with what
    environment, and how long start and stop may take."""

    wrapper: Callable[[Path], list[str]] = lambda workdir: []
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0
    gateway_python: str = stack.GATEWAY_PYTHON_DEFAULT
    core: int | None = 1
    pg: str | None = stack.PG_DEFAULT
    redis_url: str | None = stack.REDIS_DEFAULT
    ledger_flush_rows: int = 50


def start_gateway(label: str, tree: Path, workdir: Path, launch: Launch, nginx: str,
                  paced: str) -> Target:
    gw = stack.Gateway(workdir, launch.gateway_python, launch.core, nginx + "/v1",
                       nginx + "/sse/v1", pg=launch.pg, redis_url=launch.redis_url,
                       extra_toml=paced_toml(paced + "/v1")
                       + quiet_timers_toml(launch.ledger_flush_rows),
                       tree=tree, wrapper=launch.wrapper(workdir), env=dict(launch.env),
                       start_timeout=launch.start_timeout_s, stop_timeout=launch.stop_timeout_s)
    models = {"chat": stack.CHAT_MODEL, "stream": stack.STREAM_MODEL, "paced": PACED_MODEL}
    return Target(label, gw.proc, workdir, gw.base, gw.key, models, gw.stop, gw)


def start_bare(workdir: Path, launch: Launch, upstream: str, modes: list[str]) -> Target:
    """A bare forwarder to `upstream` for `modes`: it has one upstream, so nginx (chat,
    stream: /sse/ is nginx's stream) and the paced fake upstream need one each."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc, base = stack.start_bare(workdir, launch.gateway_python, launch.core, upstream,
                                  wrapper=launch.wrapper(workdir), env=dict(launch.env),
                                  timeout=launch.start_timeout_s)
    return Target("bare", proc, workdir, base, None, dict.fromkeys(modes, BARE_MODEL),
                  lambda: proc.stop(timeout=launch.stop_timeout_s))


def start_targets(launch: Launch, targets: Sequence[str], modes: Sequence[str], workdir: Path,
                  trees: dict[str, Path], nginx: str, paced: str) -> list[Target]:
    """Every process to count, started side by side (startup under valgrind takes a while):
    the bare forwarder(s), then one gateway per tree, the order they are measured in."""
    starts: list[Callable[[], Target]] = []
    if "bare" in targets:
        unpaced = [m for m in modes if m != "paced"]
        if unpaced:
            starts.append(partial(start_bare, workdir / "bare", launch, nginx, unpaced))
        if "paced" in modes:
            starts.append(partial(start_bare, workdir / "bare-paced", launch, paced, ["paced"]))
    starts += [partial(start_gateway, label, tree, workdir / label, launch, nginx, paced)
               for label, tree in trees.items()]
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
        started, failed = [], None
        for f in futures:
            try:
                started.append(f.result())
            except Exception as e:  # noqa: BLE001 - stop the others, then report this one
                failed = failed or e
    if failed:
        for t in started:
            t.stop()
        raise failed
    return started


def paced_toml(base: str) -> str:
    """A provider and model for the paced fake upstream, appended to stack.gateway_toml's."""
    return "\n".join([
        "[providers.bench-paced]",
        'protocol = "openai"',
        f'base_url = "{base}"',
        'api_key_env = "BENCH_UPSTREAM_KEY"',
        "",
        "[[models]]",
        f'id = "{PACED_MODEL}"',
        'provider = "bench-paced"',
        'upstream = "gpt-4o-mini"',
        "input_price = 0.15",
        "output_price = 0.60",
        "context_window = 128000",
        "",
    ])


def quiet_timers_toml(flush_rows: int) -> str:
    """Background work counted in requests, not in wall-clock seconds ("" with flush_rows 0).

    Under valgrind a request takes ~50x longer, so work the gateway does every so many
    seconds weighs ~50x more per request than in production, and how much of it a window
    holds depends on how long the window took. Measured: a ledger flush (a journal segment, a
    transaction with COPY) costs about as much as a request, and the limits' 5 s spend
    snapshot (an executemany into PostgreSQL) about 1.5 requests; on their timers they moved
    the per-request figure by 1-2 %. So the ledger flushes every `flush_rows` records (a
    window of a multiple of it always holds the same flushes; 50 records is what a 200 ms
    flush carries at 250 requests/s), and the limits' sweep and snapshot wait an hour.
    What stays on a timer (not configurable): the key registry's 5 s refresh, which re-reads
    and re-applies the unchanged key (~1 M instructions with what follows), the access log's
    100 ms write and the pools' 30 s sweeps; the "idle" figure shows their rate at rest.
    """
    if not flush_rows:
        return ""
    return "\n".join(["", "[ledger]", f"flush_rows = {flush_rows}", "flush_interval_ms = 3600000",
                      "", "[limits]", "sweep_interval_s = 3600.0", "snapshot_interval_s = 3600.0",
                      ""])


# --- the client -----------------------------------------------------------------------------


@dataclass
class Reads:
    """What the client saw of the streams of one window."""

    token_reads: int = 0  # reads that carried token chunks
    tokens: int = 0  # token chunks (events with "content")
    gaps_ms: list[float] = field(default_factory=list)  # between token reads of a stream

    def merge(self, other: Reads) -> None:
        self.token_reads += other.token_reads
        self.tokens += other.tokens
        self.gaps_ms += other.gaps_ms


class Client:
    """Requests of one mode on one keep-alive session: `one()` sends one and checks it."""

    def __init__(self, session: aiohttp.ClientSession, t: Target, mode: str) -> None:
        self.session = session
        # nginx serves the stream under /sse/; the gateway routes by model
        sse = mode == "stream" and not t.gateway
        self.url = t.base + ("/sse" if sse else "") + CHAT_PATH
        self.body = shapes.chat_request(t.models[mode], stream=mode != "chat")
        self.headers = {"Content-Type": "application/json"}
        if t.key:
            self.headers["Authorization"] = f"Bearer {t.key}"
        self.stream = mode != "chat"
        self.reads = Reads()

    async def one(self) -> None:
        async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
            if not self.stream:
                data = await resp.read()
                if resp.status != 200 or b'"chat.completion"' not in data:
                    raise HarnessError(f"chat: status {resp.status}: {data[:200]!r}")
                return
            if resp.status != 200:
                raise HarnessError(f"stream: status {resp.status}: {(await resp.read())[:200]!r}")
            seen, last, tail = Reads(), 0.0, b""
            async for data in resp.content.iter_any():
                now = time.monotonic()
                n = data.count(b'"content"')
                if n:
                    seen.token_reads += 1
                    seen.tokens += n
                    if last:
                        seen.gaps_ms.append((now - last) * 1000)
                    last = now
                tail = (tail + data)[-64:]
            if not tail.rstrip().endswith(b"data: [DONE]"):
                raise HarnessError(f"stream ended without [DONE]: ...{tail!r}")
            self.reads.merge(seen)


async def run_n(one: Callable[[], Awaitable[None]], n: int, concurrency: int,
                stagger_s: float = 0.0) -> None:
    """`n` calls of `one`, `concurrency` at a time; worker k starts k * stagger_s late so
    paced streams do not all tick at the same instant (one loop wake-up for all of them)."""
    left = n

    async def worker(k: int) -> None:
        nonlocal left
        await asyncio.sleep(k * stagger_s)
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(worker(k) for k in range(min(concurrency, n))))


# --- one measurement ------------------------------------------------------------------------



# --- trees and upstreams -----------------------------------------------------------------------


def describe_tree(tree: Path) -> str:
    """`<path> @ <commit>[+dirty]` (read-only git)."""
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "proxy"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{tree} @ {commit}" + (" (proxy/ has uncommitted changes)" if dirty else "")


def gateway_trees(targets: Sequence[str], compare: Sequence[str] | None,
                  gateway_tree: str) -> dict[str, Path]:
    """The checkouts whose gateways run, by label: "gateway", or "A" and "B" (--compare)."""
    trees = ({} if "gateway" not in targets
             else dict(zip("AB", map(Path, compare), strict=True)) if compare
             else {"gateway": Path(gateway_tree)})
    return {label: tree.resolve() for label, tree in trees.items()}


@contextmanager
def upstreams(workdir: Path, python: str, tps: float, tokens: int) -> Iterator[tuple[str, str]]:
    """nginx (chat, the one-piece stream) and the paced fake upstream, unpinned: their bases."""
    nginx_proc, nginx = stack.start_nginx(workdir, None)
    try:
        upstream_proc, paced = stack.start_fake_upstream(
            workdir, python, None, "--tokens-per-second", str(tps), "--stream-tokens", str(tokens))
        try:
            yield nginx, paced
        finally:
            upstream_proc.stop()
    finally:
        nginx_proc.stop()
