"""Instructions per request, by callgrind: the gateway (everything on) and the bare forwarder.

Why: this 2-core VM shares a contended host (a pure-Python spin loop runs 5M-8M iterations/s
from one second to the next), so wall-clock figures (bench.py) swing +-30 % between runs and a
2 % optimization cannot be judged; `perf` has no hardware counters here. Callgrind counts the
instructions a process executes (Ir), which does not depend on how fast the host happens to
be this second.

What: two targets (--targets), each process under `valgrind --tool=callgrind
--instr-atstart=no` (~50x slower while counting), pinned to --core:
  gateway  the stack bench.py measures as "this gateway, everything on" (stack.Gateway:
           PostgreSQL ledger in a fresh database, Redis limits, a user key with a spend
           limit, metrics, access log; background timers as quiet_timers_toml says)
  bare     bench.py's bare aiohttp forwarder (bare_forwarder.py), the stack's ceiling; a
           second one in front of the fake upstream for paced
For each target and mode: warm-up with instrumentation off, `callgrind_control -i on`, a
few more requests (so the counted ones run already-translated code), `callgrind_control
-z`, then N requests in two halves, each ended by `callgrind_control -d`; the dumps'
`totals:` (Ir) divided by N. The halves must agree: that shows the counts are collected and
proportional to N. Only the target's own process is counted (all its threads, user space):
not the kernel, Redis, PostgreSQL or the upstream. The counted requests must not degrade
it (the gateway's error counters in /metrics, warnings in the log), and the paced chunks
must arrive one per read.

  chat    non-streaming chat completion; nginx answers bench.py's fixed 712-byte body
  stream  bench.py's 23-event SSE stream, which nginx sends in one piece
  paced   fake_upstream.py streams, 20 tokens at 50 tokens/s (each token its own write),
          4 streams at once, starts staggered; figures per stream and per relayed token chunk;
          the client checks each token arrived in its own read, about 20 ms after the last

bare/gateway, per mode, is the instruction analogue of bench.py's "gateway throughput as %
of the bare forwarder", and lower than it. There both are CPU-bound on one core, so that
figure is the ratio of CPU time per request, which includes the kernel's socket work
(accept, reads, writes and epoll on the client and upstream connections): callgrind does
not see it, and both pay about alike (the gateway adds its Redis round trips and ledger
writes). A cost K common to both pulls the ratio towards 1: (b + K) / (g + K) > b / g.
Also, an instruction is not a fixed time (the interpreter's cache misses and branches are
not the kernel's), and bench.py runs 64 connections, where one loop wake-up serves many
requests, while this counts at --concurrency (default 1). Seen together: chat 0.66 here
against 77 % there, stream 0.51 against 69 %. So the ratio shows the direction and the
relative size of a change in user-space work; it does not predict the throughput ratio.

Commands (the gateway's venv Python, for aiohttp; ~3 min for one tree, both targets, all
modes, 3 repeats; ~5 min with --compare):

    /tmp/venvtest/bin/python loadtest/instructions.py                 # bare and this tree
    /tmp/venvtest/bin/python loadtest/instructions.py --targets gateway --modes chat \
        --requests 800 --repeat 5
    git worktree add /tmp/gw-base HEAD                                 # a revision to compare
    /tmp/venvtest/bin/python loadtest/instructions.py --compare /tmp/gw-base .   # B/A per mode
    /tmp/venvtest/bin/python loadtest/instructions.py --gateway-tree /tmp/gw-base --workdir /tmp/cg
    callgrind_annotate /tmp/cg/gateway/cg.<pid>.<n> | head -40    # where they went (C functions)

`--compare A B` starts one gateway per tree (both stay up) and measures them alternately,
A then B, in every repeat. Each tree runs its own code (stack.Gateway's `tree`) with this
harness's config, so the configs are identical. The bare forwarder is this checkout's.

Determinism: the same code measured in three runs gave per-mode medians within 0.4-0.6 %;
repeats within a run spread 0.03-0.7 % ((max - min) / median). What is left follows the
window's wall time (timers: the access log's 100 ms write, the key registry's 5 s refresh):
about +0.1 % per extra second the host made a window take. What it took to get there:
PYTHONHASHSEED fixed (string hashes, hence dict and set layouts, change from run to run
otherwise); a warm-up long enough for the ledger's first flushes (they connect to
PostgreSQL); and background work counted in requests instead of seconds (see
quiet_timers_toml: the ledger flushes every 50 records, the limits' sweep and snapshot
wait an hour). With the gateway's own timers (--ledger-flush-rows 0, the config bench.py
runs) the figure is ~3.5 % higher and spreads ~1.3 %: under valgrind every request takes
~50x longer, so per-second work weighs ~50x more per request, and how much of it a window
holds depends on how long the host let the window take. The "idle" figure is what is left
on a timer, per second with no traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
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
    sys.exit("instructions.py needs aiohttp: run it with the gateway's venv python "
             f"({stack.GATEWAY_PYTHON_DEFAULT})")

MODES: Final = ("chat", "stream", "paced")
TARGETS: Final = ("bare", "gateway")
PACED_MODEL: Final = "bench-paced/gpt-4o-mini"
BARE_MODEL: Final = "gpt-4o-mini"  # bench.py's: the bare forwarder passes the body on as is
CHAT_PATH: Final = "/v1/chat/completions"
# String hashes (dict and set layouts, hence some instruction counts) the same in every run.
FIXED_HASHES: Final = {"PYTHONHASHSEED": "0"}
STARTUP_TIMEOUT_S: Final = 900.0  # imports, migrations and first requests, all under valgrind
STOP_TIMEOUT_S: Final = 120.0  # draining and the ledger's last flush, under valgrind
CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout(total=600)
# Before zeroing and before each dump: what the last requests set off (a ledger flush, the
# access log's write 100 ms later) lands inside the window that caused it.
SETTLE_S: Final = 0.3
# Counters that must not move while counting: a Redis timeout, a database error or an
# upstream failure sends the request down another (cheaper or dearer) path.
HEALTH_METRICS: Final = ("proxy_redis_errors_total", "proxy_database_errors_total",
                         "proxy_upstream_errors_total", "proxy_ledger_records_spooled_total")


class HarnessError(Exception):
    """Something other than the gateway's cost went wrong: the figure would mean nothing."""


# --- the targets under callgrind ---------------------------------------------------------------


def valgrind(workdir: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/cg.%p"]


@dataclass
class Target:
    """One process under callgrind, and how the client calls it."""

    label: str  # "bare", or the gateway's tree: "gateway" (one tree), "A", "B" (--compare)
    proc: stack.Proc
    workdir: Path  # its callgrind dumps and log
    base: str
    key: str | None
    models: dict[str, str]  # the modes it serves, and the model to ask for
    stop: Callable[[], None]
    gateway: stack.Gateway | None = None  # None: the bare forwarder (no /metrics, no ledger)
    callgrind: Callgrind = field(init=False)

    def __post_init__(self) -> None:
        # taskset and valgrind exec in place: the pid is the counted process
        self.callgrind = Callgrind(self.proc.pid, self.workdir)


def start_gateway(label: str, tree: Path, workdir: Path, args: argparse.Namespace, nginx: str,
                  paced: str) -> Target:
    gw = stack.Gateway(workdir, args.gateway_python, args.core, nginx + "/v1", nginx + "/sse/v1",
                       pg=None if args.no_pg else args.pg,
                       redis_url=None if args.no_redis else args.redis,
                       extra_toml=paced_toml(paced + "/v1")
                       + quiet_timers_toml(args.ledger_flush_rows),
                       tree=tree, wrapper=valgrind(workdir), env=FIXED_HASHES,
                       start_timeout=STARTUP_TIMEOUT_S, stop_timeout=STOP_TIMEOUT_S)
    models = {"chat": stack.CHAT_MODEL, "stream": stack.STREAM_MODEL, "paced": PACED_MODEL}
    return Target(label, gw.proc, workdir, gw.base, gw.key, models, gw.stop, gw)


def start_bare(workdir: Path, args: argparse.Namespace, upstream: str,
               modes: list[str]) -> Target:
    """A bare forwarder to `upstream` for `modes`: it has one upstream, so nginx (chat,
    stream: /sse/ is nginx's stream) and the paced fake upstream need one each."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc, base = stack.start_bare(workdir, args.gateway_python, args.core, upstream,
                                  wrapper=valgrind(workdir), env=FIXED_HASHES,
                                  timeout=STARTUP_TIMEOUT_S)
    return Target("bare", proc, workdir, base, None, dict.fromkeys(modes, BARE_MODEL),
                  lambda: proc.stop(timeout=STOP_TIMEOUT_S))


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


class Callgrind:
    """callgrind_control on one process, and its dump files."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self.pid, self.out_dir = pid, out_dir

    def _control(self, *args: str) -> None:
        out = subprocess.run(["callgrind_control", *args, str(self.pid)], capture_output=True,
                             text=True, timeout=300, check=False)
        if out.returncode != 0 or "OK" not in out.stdout:
            raise HarnessError(f"callgrind_control {' '.join(args)} {self.pid}: "
                               f"{out.stdout.strip()} {out.stderr.strip()}")

    def instrument(self, on: bool) -> None:
        self._control("-i", "on" if on else "off")

    def zero(self) -> None:
        self._control("-z")

    def _dumps(self) -> set[Path]:
        return set(self.out_dir.glob(f"cg.{self.pid}.*"))

    def dump(self) -> tuple[int, Path]:
        """Dump the counts since the last zero or dump (a dump zeroes them): (Ir, file)."""
        before = self._dumps()
        self._control("-d")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in self._dumps() - before:
                m = re.search(r"^totals:\s+(\d+)", path.read_text(errors="replace"),
                              re.MULTILINE)
                if m:  # `totals:` is the last line: the file is complete
                    return int(m.group(1)), path
            time.sleep(0.1)
        raise HarnessError(f"no callgrind dump appeared in {self.out_dir}")


def scrape_health(t: Target) -> dict[str, float]:
    """The gateway's error counters from /metrics, and warnings/errors in the log so far
    (the bare forwarder logs only aiohttp's "Error handling request" and tracebacks)."""
    totals: dict[str, float] = {}
    if t.gateway:
        status, _, data = stack.http("GET", t.base + "/metrics", timeout=120)
        if status != 200:
            raise HarnessError(f"/metrics answered {status}")
        totals = dict.fromkeys(HEALTH_METRICS, 0.0)
        for line in data.decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    log = t.proc.log.read_text(errors="replace")
    totals["log warnings/errors"] = sum(1 for ln in log.splitlines()
                                        if " WARNING " in ln or " ERROR " in ln
                                        or "Traceback" in ln or "Error handling" in ln)
    return totals


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


@dataclass
class Sample:
    target: str  # Target.label
    mode: str
    requests: int
    halves: tuple[int, int]  # Ir of each half
    wall_s: float
    tokens_per_request: float = 0.0  # paced: token chunks the client got per stream
    separate_pct: float = 0.0  # paced: token reads / tokens (100: every token its own read)
    gap_p50_ms: float = 0.0
    dumps: tuple[str, str] = ("", "")

    @property
    def per_request(self) -> float:
        return sum(self.halves) / self.requests

    @property
    def halves_diff_pct(self) -> float:
        a, b = self.halves
        return 100 * abs(a - b) / ((a + b) / 2) if a + b else float("nan")


async def measure(t: Target, mode: str, args: argparse.Namespace) -> Sample:
    """Warm up, count N requests of `mode` in two halves, check nothing degraded."""
    n = args.paced_streams if mode == "paced" else args.requests
    concurrency = args.paced_concurrency if mode == "paced" else args.concurrency
    stagger = 1 / args.paced_tps / concurrency if mode == "paced" else 0.0
    cg = t.callgrind
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        client = Client(session, t, mode)
        await run_n(client.one, max(args.warmup, concurrency), concurrency, stagger)
        health0 = scrape_health(t)
        cg.instrument(True)
        # Code run for the first time since instrumentation went on is translated again;
        # these requests do that outside the counted window.
        await run_n(client.one, max(3, concurrency), concurrency, stagger)
        client.reads = Reads()
        await asyncio.sleep(SETTLE_S)
        cg.zero()
        t0 = time.monotonic()
        await run_n(client.one, n // 2, concurrency, stagger)
        await asyncio.sleep(SETTLE_S)
        first, dump1 = cg.dump()
        await run_n(client.one, n - n // 2, concurrency, stagger)
        await asyncio.sleep(SETTLE_S)
        second, dump2 = cg.dump()
        wall = time.monotonic() - t0
        cg.instrument(False)
    health1 = scrape_health(t)
    moved = {k: health1[k] - health0[k] for k in health0 if health1[k] != health0[k]}
    if moved:
        raise HarnessError(f"{t.label}/{mode}: it degraded while counting: {moved} "
                           f"(see {t.proc.log})")
    if not first or not second:
        raise HarnessError(f"{t.label}/{mode}: callgrind counted nothing ({first}, {second})")
    sample = Sample(t.label, mode, n, (first, second), wall, dumps=(dump1.name, dump2.name))
    if mode == "paced":
        r = client.reads
        sample.tokens_per_request = r.tokens / n
        sample.separate_pct = 100 * r.token_reads / r.tokens if r.tokens else 0.0
        sample.gap_p50_ms = statistics.median(r.gaps_ms) if r.gaps_ms else 0.0
    return sample


async def prime(t: Target, n: int) -> None:
    """Uncounted chat requests once after start: enough for the ledger's first flushes,
    which connect to PostgreSQL (migration check, TLS negotiation): a one-time cost that
    would otherwise land in the first counted window."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await run_n(Client(session, t, "chat").one, n, 1)
    await asyncio.sleep(1.0)


def idle_rate(t: Target, seconds: float = 10.0) -> float:
    """Instructions a second with no traffic: what is left on timers. 10 s: two of the key
    registry's 5 s refreshes, the biggest of them, whatever the phase."""
    cg = t.callgrind
    cg.instrument(True)
    time.sleep(0.5)
    cg.zero()
    t0 = time.monotonic()
    time.sleep(seconds)
    ir, _ = cg.dump()
    wall = time.monotonic() - t0
    cg.instrument(False)
    return ir / wall


# --- the run ----------------------------------------------------------------------------------


def describe_tree(tree: Path) -> str:
    """`<path> @ <commit>[+dirty]` (read-only git)."""
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "proxy"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{tree} @ {commit}" + (" (proxy/ has uncommitted changes)" if dirty else "")


def start_targets(args: argparse.Namespace, workdir: Path, trees: dict[str, Path], nginx: str,
                  paced: str) -> list[Target]:
    """Every process to count, started side by side (startup under valgrind takes a while):
    the bare forwarder(s), then one gateway per tree, the order they are measured in."""
    starts: list[Callable[[], Target]] = []
    if "bare" in args.targets:
        unpaced = [m for m in args.modes if m != "paced"]
        if unpaced:
            starts.append(partial(start_bare, workdir / "bare", args, nginx, unpaced))
        if "paced" in args.modes:
            starts.append(partial(start_bare, workdir / "bare-paced", args, paced, ["paced"]))
    starts += [partial(start_gateway, label, tree, workdir / label, args, nginx, paced)
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


def gateway_trees(args: argparse.Namespace) -> dict[str, Path]:
    """The checkouts whose gateways run, by label: "gateway", or "A" and "B" (--compare)."""
    trees = ({} if "gateway" not in args.targets
             else dict(zip("AB", map(Path, args.compare), strict=True)) if args.compare
             else {"gateway": Path(args.gateway_tree)})
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


def run(args: argparse.Namespace, workdir: Path) -> int:
    trees = gateway_trees(args)
    for tree in trees.values():
        if not (tree / "proxy" / "__main__.py").exists():
            raise HarnessError(f"{tree} has no proxy/__main__.py: not a checkout of the gateway")
    started = time.monotonic()
    print(f"instructions: targets {', '.join(args.targets)}; modes {', '.join(args.modes)}; "
          f"{args.requests} requests (paced: {args.paced_streams} streams); "
          f"{args.repeat} repeat(s); core {args.core}; workdir {workdir}", flush=True)
    # described before the run: the tree may change (commits, edits) while it runs
    sources = {"bare": f"loadtest/bare_forwarder.py of {stack.REPO}",
               **{label: describe_tree(tree) for label, tree in trees.items()}}
    for label in trees:
        print(f"  {label}: {sources[label]}", flush=True)
    samples: list[Sample] = []
    idle: dict[str, float] = {}
    features: dict[str, str] = {}
    with upstreams(workdir, args.gateway_python, args.paced_tps, args.paced_tokens) as (
            nginx, paced):
        t0 = time.monotonic()
        targets = start_targets(args, workdir, trees, nginx, paced)
        print(f"  {len(targets)} process(es) up under valgrind in {time.monotonic() - t0:.0f} s",
              flush=True)
        gateways = [t.gateway for t in targets if t.gateway]
        features = dict(gateways[0].features) if gateways else {}
        try:
            for t in targets:
                if t.gateway:
                    asyncio.run(prime(t, 2 * max(args.ledger_flush_rows, 100)))
                if t.label not in idle:  # the bare forwarder in front of nginx stands for both
                    idle[t.label] = idle_rate(t)
            for r in range(args.repeat):
                for t in targets:
                    for mode in (m for m in args.modes if m in t.models):
                        s = asyncio.run(measure(t, mode, args))
                        samples.append(s)
                        print(f"  [{r + 1}/{args.repeat}] {t.label:7} {mode:6} "
                              f"{s.per_request:14,.0f} Ir/request  halves differ "
                              f"{s.halves_diff_pct:.2f}%  {s.wall_s:5.1f} s  "
                              f"({', '.join(s.dumps)})"
                              + (f"  {s.tokens_per_request:.0f} tokens/stream, "
                                 f"{s.separate_pct:.0f}% in their own read, gap p50 "
                                 f"{s.gap_p50_ms:.1f} ms" if mode == "paced" else ""),
                              flush=True)
        finally:
            for t in targets:
                t.stop()
    print("\n" + render(args, list(trees), sources, samples, idle, features,
                         time.monotonic() - started))
    return 0


# --- the report -------------------------------------------------------------------------------


def spread_pct(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / statistics.median(values) if values else 0.0


def render(args: argparse.Namespace, trees: list[str], sources: dict[str, str],
           samples: list[Sample], idle: dict[str, float], features: dict[str, str],
           elapsed: float) -> str:
    """`trees`: the gateways' labels; `sources`: what each label ran."""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"## Instructions per request (callgrind Ir), {stamp}", ""]
    labels = (["bare"] if "bare" in args.targets else []) + trees
    for label in labels:
        lines.append(f"- {label}: {sources[label]}; idle background "
                     f"{idle.get(label, 0) / 1e6:.2f} M Ir/s")
    if features:
        lines.append("- gateway config: " + "; ".join(f"{k}: {v}" for k, v in features.items()))
    if trees and args.ledger_flush_rows:
        lines.append(f"- ledger flush every {args.ledger_flush_rows} records, limits' sweep and "
                     "snapshot hourly (--ledger-flush-rows 0: the gateway's timers)")
    lines += [(f"- {args.repeat} repeat(s); median over repeats; spread = (max - min) / "
               f"median; whole run {elapsed / 60:.1f} min"), "",
              ("| target | mode | requests | M Ir/request | M Ir/token chunk | spread | "
               "halves differ (max) | counted wall s |"),
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    medians: dict[tuple[str, str], float] = {}
    for label in labels:
        for mode in args.modes:
            ss = [s for s in samples if s.target == label and s.mode == mode]
            if not ss:
                continue
            per = [s.per_request for s in ss]
            med = medians[(label, mode)] = statistics.median(per)
            chunk = (f"{med / statistics.median(s.tokens_per_request for s in ss) / 1e6:.4f}"
                     if mode == "paced" else "")
            lines.append(f"| {label} | {mode} | {ss[0].requests} | {med / 1e6:.4f} | {chunk} | "
                         f"{spread_pct(per):.2f}% | {max(s.halves_diff_pct for s in ss):.2f}% | "
                         f"{statistics.median(s.wall_s for s in ss):.1f} |")

    def ratios(a: str, b: str) -> list[str]:
        """`b/a` per mode where both were measured."""
        out = ["", f"| mode | {a} M Ir/request | {b} M Ir/request | {b}/{a} |",
               "| --- | --- | --- | --- |"]
        for mode in args.modes:
            x, y = medians.get((a, mode)), medians.get((b, mode))
            if x and y:
                out.append(f"| {mode} | {x / 1e6:.4f} | {y / 1e6:.4f} | {y / x:.4f} |")
        return out if len(out) > 3 else []

    bare_rows = [row for label in trees if "bare" in labels for row in ratios(label, "bare")]
    if bare_rows:
        lines += [*bare_rows, "", ("bare/gateway counts user-space instructions only: "
                                   "bench.py's throughput ratio is higher (see the docstring)")]
    if len(trees) == 2:
        lines += ratios("A", "B")
    uneven = [f"{s.target}/{s.mode}" for s in samples if s.halves_diff_pct > 1.0]
    if uneven:
        lines += ["", (f"**Check:** the two halves differ by more than 1 % in {', '.join(uneven)}:"
                       " something other than the requests was counted (see the dumps)")]
    paced = [s for s in samples if s.mode == "paced"]
    if paced:
        lines += ["", (f"paced: {args.paced_tokens} tokens at {args.paced_tps:g} tokens/s, "
                       f"{args.paced_concurrency} streams at once; per token chunk = per stream "
                       f"/ token chunks received ({paced[0].tokens_per_request:.0f}); "
                       f"at least {min(s.separate_pct for s in paced):.0f}% of the token "
                       f"chunks came in their own read, median gap "
                       f"{statistics.median(s.gap_p50_ms for s in paced):.1f} ms "
                       f"(pace {1000 / args.paced_tps:g} ms)")]
        if min(s.separate_pct for s in paced) < 95:
            lines += [("**Check:** token chunks coalesced: the target did not keep up with "
                       "the pace under valgrind; lower --paced-concurrency or --paced-tps")]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"subset of {','.join(TARGETS)} (default both)")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument("--requests", type=int, default=400,
                   help="counted requests per mode and repeat, chat and stream (default 400)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per target and mode")
    p.add_argument("--concurrency", type=int, default=1, help="chat and stream (default 1)")
    p.add_argument("--warmup", type=int, default=20,
                   help="uncounted requests per mode before counting (default 20)")
    p.add_argument("--paced-streams", type=int, default=100,
                   help="counted streams (default 100)")
    p.add_argument("--paced-concurrency", type=int, default=4)
    p.add_argument("--paced-tokens", type=int, default=20)
    p.add_argument("--paced-tps", type=float, default=50.0, help="tokens per second")
    p.add_argument("--gateway-tree", default=str(stack.REPO),
                   help="the checkout whose gateway runs (default: this repo)")
    p.add_argument("--compare", nargs=2, metavar=("PATH_A", "PATH_B"),
                   help="two checkouts, measured alternately; prints B/A per mode")
    p.add_argument("--gateway-python", default=stack.GATEWAY_PYTHON_DEFAULT
                   if os.path.exists(stack.GATEWAY_PYTHON_DEFAULT) else sys.executable)
    p.add_argument("--pg", default=stack.PG_DEFAULT)
    p.add_argument("--no-pg", action="store_true", help="ledger in SQLite instead")
    p.add_argument("--redis", default=stack.REDIS_DEFAULT)
    p.add_argument("--no-redis", action="store_true", help="in-process limits instead")
    p.add_argument("--ledger-flush-rows", type=int, default=50,
                   help="flush the ledger every this many records, not every 200 ms, and the "
                        "limits' sweep and snapshot hourly, so every window holds the same "
                        "background work (default 50; 0: the gateway's timers, as bench.py)")
    p.add_argument("--core", type=int, default=1 if (os.cpu_count() or 1) > 1 else -1,
                   help="the core the counted processes run on (default 1; -1: not pinned)")
    p.add_argument("--workdir", help="keep configs, logs and callgrind dumps here "
                   "(default: a temp dir, removed)")
    a = p.parse_args(argv)
    a.modes = [m for m in a.modes.split(",") if m]
    a.targets = [t for t in a.targets.split(",") if t]
    for given, known in ((a.modes, MODES), (a.targets, TARGETS)):
        for x in given:
            if x not in known:
                p.error(f"{x!r}: not one of {', '.join(known)}")
    if not a.modes or not a.targets:
        p.error("--modes and --targets: at least one each")
    if a.compare and "gateway" not in a.targets:
        p.error("--compare measures gateways: --targets must include gateway")
    a.core = None if a.core < 0 else a.core
    rows = a.ledger_flush_rows
    for n in (a.requests, a.paced_streams):
        if n < 2 or rows and n % (2 * rows):
            p.error(f"--requests and --paced-streams: multiples of 2 x --ledger-flush-rows "
                    f"({2 * rows}), so each half holds the same ledger flushes")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.workdir:
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            return run(args, Path(args.workdir).resolve())
        with tempfile.TemporaryDirectory(prefix="gateway-instructions-") as tmp:
            return run(args, Path(tmp))
    except (HarnessError, stack.BenchError) as e:
        print(f"instructions: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
