"""Instructions per request of the gateway (everything on), counted by callgrind, for A/B tests.

Why: this 2-core VM shares a contended host (a pure-Python spin loop runs 5M-8M iterations/s
from one second to the next), so wall-clock figures (bench.py) swing +-30 % between runs and a
2 % optimization cannot be judged; `perf` has no hardware counters here. Callgrind counts the
instructions the gateway process executes (Ir), which does not depend on how fast the host
happens to be this second.

What: the stack bench.py measures as "this gateway, everything on" (stack.gateway_toml:
PostgreSQL ledger in a fresh database, Redis limits, a user key with a spend limit, metrics,
access log; background timers as quiet_timers_toml says), with the gateway process under
`valgrind --tool=callgrind --instr-atstart=no` (~50x slower while counting). For each
mode: warm-up with instrumentation off, `callgrind_control -i on`, a few more requests (so
the counted ones run already-translated code), `callgrind_control -z`, then N requests in
two halves, each ended by `callgrind_control -d`; the dumps' `totals:` (Ir) divided by N.
The halves must agree: that shows the counts are collected and proportional to N. Only the
gateway's own process is counted (all its threads, user space): not the kernel, Redis,
PostgreSQL or the upstream. The counted requests must not degrade the gateway (error
counters in /metrics, warnings in its log), and the paced chunks must arrive one per read.

  chat    non-streaming chat completion; nginx answers bench.py's fixed 712-byte body
  stream  bench.py's 23-event SSE stream, which nginx sends in one piece
  paced   fake_upstream.py streams, 20 tokens at 50 tokens/s (each token its own write),
          4 streams at once, starts staggered; figures per stream and per relayed token chunk;
          the client checks each token arrived in its own read, about 20 ms after the last

Commands (the gateway's venv Python, for aiohttp; ~2 min for one tree, all modes, 3 repeats;
~4 min with --compare):

    /tmp/venvtest/bin/python loadtest/instructions.py                 # this tree, all modes
    /tmp/venvtest/bin/python loadtest/instructions.py --modes chat --requests 800 --repeat 5
    git worktree add /tmp/gw-base HEAD                                 # a revision to compare
    /tmp/venvtest/bin/python loadtest/instructions.py --compare /tmp/gw-base .   # B/A per mode
    /tmp/venvtest/bin/python loadtest/instructions.py --gateway-tree /tmp/gw-base --workdir /tmp/cg
    callgrind_annotate /tmp/cg/A/cg.<pid>.<n> | head -40    # where they went (C functions)

`--compare A B` starts one gateway per tree (both stay up) and measures them alternately,
A then B, in every repeat. Each tree runs its own code (cwd = the tree, `python -m proxy
serve`) with this harness's config, so the configs are identical.

Determinism: the same code measured in three runs gave per-mode medians within 0.4-0.6 %;
repeats within a run spread 0.03-0.7 % ((max - min) / median). What is left follows the
window's wall time (timers: the access log's 100 ms write, the key registry's 5 s refresh):
about +0.1 % per extra second the host made a window take. What it took to get there:
PYTHONHASHSEED fixed for the gateway (string hashes, hence dict and set layouts, change
from run to run otherwise); a warm-up long enough for the ledger's first flushes (they
connect to PostgreSQL); and background work counted in requests instead of seconds (see
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
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
PACED_MODEL: Final = "bench-paced/gpt-4o-mini"
STARTUP_TIMEOUT_S: Final = 900.0  # imports, migrations and first requests, all under valgrind
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


# --- the gateway under callgrind -------------------------------------------------------------


class CallgrindGateway(stack.Gateway):
    """stack.Gateway with the gateway process under callgrind, run from `tree`.

    stack.Gateway builds its command from its `python` argument (which it also uses for a
    psql fallback) and runs it in this repo, so it cannot take a wrapper: this sets the same
    fields its __init__ does (stop(), _create_key() and _check_endpoints() read them) and
    builds the command here.
    """

    def __init__(self, workdir: Path, tree: Path, python: str, chat_base: str, stream_base: str,
                 paced_base: str, pg: str | None, redis_url: str | None,
                 flush_rows: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.tree, self.python, self.keep_db = workdir, tree, python, False
        self.tag = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        self.admin_key = "sk-bench-admin-" + secrets.token_hex(8)
        self.port = stack.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_name = f"proxy_bench_{self.tag}" if pg else ""
        self.database_url = (f"{pg}/{self.db_name}" if pg
                             else f"sqlite:///{workdir / 'gateway-data' / 'proxy.db'}")
        self.redis_url = redis_url
        self.namespace = f"bench-{self.tag}"
        self.features: dict[str, str] = {}
        self.key = self.admin_key
        if pg:
            stack._psql(self.database_url, f'CREATE DATABASE "{self.db_name}"', python)
        self.config = workdir / "gateway.toml"
        self.config.write_text(stack.gateway_toml(
            self.port, workdir / "gateway-data", self.database_url, redis_url, self.namespace,
            chat_base, stream_base, extra=paced_toml(paced_base) + quiet_timers_toml(flush_rows)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        env.update(PROXY_ADMIN_KEY=self.admin_key, PROXY_KEY_SECRET=secrets.token_hex(16),
                   BENCH_UPSTREAM_KEY="sk-bench-upstream",
                   # string hashes (dict/set layouts, hence some instruction counts) the
                   # same in every run
                   PYTHONHASHSEED="0")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={workdir}/cg.%p",
               python, "-m", "proxy", "serve", "--config", str(self.config)]
        # cwd = the tree: `python -m` puts the cwd first on sys.path, so its proxy/ is the
        # one imported, whatever the venv's editable install points at.
        self.proc = stack.Proc("gateway", cmd, workdir / "gateway.log", env=env, cwd=tree)
        self.callgrind = Callgrind(self.proc.pid, workdir)
        try:
            stack.wait_http(self.base + "/healthz", self.proc, timeout=STARTUP_TIMEOUT_S)
            self._create_key()
            self._check_endpoints()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.stop(timeout=120)  # draining and the ledger's last flush, under valgrind
        super().stop()


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


def scrape_health(gw: CallgrindGateway) -> dict[str, float]:
    """The error counters from /metrics, and warnings/errors in the log so far."""
    status, _, data = stack.http("GET", gw.base + "/metrics", timeout=120)
    if status != 200:
        raise HarnessError(f"/metrics answered {status}")
    totals = dict.fromkeys(HEALTH_METRICS, 0.0)
    for line in data.decode().splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    log = gw.proc.log.read_text(errors="replace")
    totals["log warnings/errors"] = sum(1 for ln in log.splitlines()
                                        if " WARNING " in ln or " ERROR " in ln
                                        or "Traceback" in ln)
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

    def __init__(self, session: aiohttp.ClientSession, gw: CallgrindGateway, mode: str) -> None:
        self.session = session
        self.url = gw.base + "/v1/chat/completions"
        model = {"chat": stack.CHAT_MODEL, "stream": stack.STREAM_MODEL,
                 "paced": PACED_MODEL}[mode]
        self.body = shapes.chat_request(model, stream=mode != "chat")
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {gw.key}"}
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
    tree: str
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


async def measure(gw: CallgrindGateway, label: str, mode: str,
                  args: argparse.Namespace) -> Sample:
    """Warm up, count N requests of `mode` in two halves, check nothing degraded."""
    n = args.paced_streams if mode == "paced" else args.requests
    concurrency = args.paced_concurrency if mode == "paced" else args.concurrency
    stagger = 1 / args.paced_tps / concurrency if mode == "paced" else 0.0
    cg = gw.callgrind
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        client = Client(session, gw, mode)
        await run_n(client.one, max(args.warmup, concurrency), concurrency, stagger)
        health0 = scrape_health(gw)
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
    health1 = scrape_health(gw)
    moved = {k: health1[k] - health0[k] for k in health0 if health1[k] != health0[k]}
    if moved:
        raise HarnessError(f"{label}/{mode}: the gateway degraded while counting: {moved} "
                           f"(see {gw.proc.log})")
    if not first or not second:
        raise HarnessError(f"{label}/{mode}: callgrind counted nothing ({first}, {second})")
    sample = Sample(label, mode, n, (first, second), wall, dumps=(dump1.name, dump2.name))
    if mode == "paced":
        r = client.reads
        sample.tokens_per_request = r.tokens / n
        sample.separate_pct = 100 * r.token_reads / r.tokens if r.tokens else 0.0
        sample.gap_p50_ms = statistics.median(r.gaps_ms) if r.gaps_ms else 0.0
    return sample


async def prime(gw: CallgrindGateway, n: int) -> None:
    """Uncounted chat requests once after start: enough for the ledger's first flushes,
    which connect to PostgreSQL (migration check, TLS negotiation): a one-time cost that
    would otherwise land in the first counted window."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await run_n(Client(session, gw, "chat").one, n, 1)
    await asyncio.sleep(1.0)


def idle_rate(gw: CallgrindGateway, seconds: float = 10.0) -> float:
    """Instructions a second with no traffic: what is left on timers. 10 s: two of the key
    registry's 5 s refreshes, the biggest of them, whatever the phase."""
    cg = gw.callgrind
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


def start_gateways(trees: list[Path], workdir: Path, args: argparse.Namespace, nginx: str,
                   paced: str) -> list[CallgrindGateway]:
    """One gateway per tree, started side by side (startup under valgrind takes a while)."""
    def start(i: int, tree: Path) -> CallgrindGateway:
        return CallgrindGateway(workdir / "AB"[i], tree, args.gateway_python, nginx + "/v1",
                                nginx + "/sse/v1", paced + "/v1",
                                pg=None if args.no_pg else args.pg,
                                redis_url=None if args.no_redis else args.redis,
                                flush_rows=args.ledger_flush_rows)

    with ThreadPoolExecutor(len(trees)) as pool:
        futures = [pool.submit(start, i, tree) for i, tree in enumerate(trees)]
        started, failed = [], None
        for f in futures:
            try:
                started.append(f.result())
            except Exception as e:  # noqa: BLE001 - stop the others, then report this one
                failed = failed or e
    if failed:
        for gw in started:
            gw.stop()
        raise failed
    return started


def run(args: argparse.Namespace, workdir: Path) -> int:
    trees = [Path(t).resolve() for t in (args.compare or [args.gateway_tree])]
    labels = ["A", "B"][:len(trees)]
    for tree in trees:
        if not (tree / "proxy" / "__main__.py").exists():
            raise HarnessError(f"{tree} has no proxy/__main__.py: not a checkout of the gateway")
    started = time.monotonic()
    print(f"instructions: modes {', '.join(args.modes)}; {args.requests} requests (paced: "
          f"{args.paced_streams} streams); {args.repeat} repeat(s); workdir {workdir}",
          flush=True)
    for label, tree in zip(labels, trees, strict=True):
        print(f"  {label}: {describe_tree(tree)}", flush=True)
    nginx_proc, nginx = stack.start_nginx(workdir, None)
    upstream_proc, paced = stack.start_fake_upstream(
        workdir, args.gateway_python, None, "--tokens-per-second", str(args.paced_tps),
        "--stream-tokens", str(args.paced_tokens))
    samples: list[Sample] = []
    idle: dict[str, float] = {}
    features: dict[str, str] = {}
    try:
        t0 = time.monotonic()
        gateways = start_gateways(trees, workdir, args, nginx, paced)
        print(f"  gateway(s) up under valgrind in {time.monotonic() - t0:.0f} s", flush=True)
        features = {"database": f"PostgreSQL, fresh database {gateways[0].db_name}"
                    if gateways[0].db_name else "SQLite",
                    "redis": gateways[0].redis_url or "none (in-process limits)",
                    **gateways[0].features}
        try:
            for label, gw in zip(labels, gateways, strict=True):
                asyncio.run(prime(gw, 2 * max(args.ledger_flush_rows, 100)))
                idle[label] = idle_rate(gw)
            for r in range(args.repeat):
                for label, gw in zip(labels, gateways, strict=True):
                    for mode in args.modes:
                        s = asyncio.run(measure(gw, label, mode, args))
                        samples.append(s)
                        print(f"  [{r + 1}/{args.repeat}] {label} {mode:6} "
                              f"{s.per_request:14,.0f} Ir/request  halves differ "
                              f"{s.halves_diff_pct:.2f}%  {s.wall_s:5.1f} s  "
                              f"({', '.join(s.dumps)})"
                              + (f"  {s.tokens_per_request:.0f} tokens/stream, "
                                 f"{s.separate_pct:.0f}% in their own read, gap p50 "
                                 f"{s.gap_p50_ms:.1f} ms" if mode == "paced" else ""),
                              flush=True)
        finally:
            for gw in gateways:
                gw.stop()
    finally:
        upstream_proc.stop()
        nginx_proc.stop()
    print("\n" + render(args, labels, trees, samples, idle, features,
                         time.monotonic() - started))
    return 0


# --- the report -------------------------------------------------------------------------------


def spread_pct(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / statistics.median(values) if values else 0.0


def render(args: argparse.Namespace, labels: list[str], trees: list[Path],
           samples: list[Sample], idle: dict[str, float], features: dict[str, str],
           elapsed: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"## Gateway instructions per request (callgrind Ir), {stamp}", ""]
    for label, tree in zip(labels, trees, strict=True):
        lines.append(f"- {label}: {describe_tree(tree)}; idle background "
                     f"{idle.get(label, 0) / 1e6:.2f} M Ir/s")
    lines.append("- gateway: " + "; ".join(f"{k}: {v}" for k, v in features.items()))
    if args.ledger_flush_rows:
        lines.append(f"- ledger flush every {args.ledger_flush_rows} records, limits' sweep and "
                     "snapshot hourly (--ledger-flush-rows 0: the gateway's timers)")
    lines += [(f"- {args.repeat} repeat(s); median over repeats; spread = (max - min) / "
               f"median; whole run {elapsed / 60:.1f} min"), "",
              ("| tree | mode | requests | M Ir/request | M Ir/token chunk | spread | "
               "halves differ (max) | counted wall s |"),
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    medians: dict[tuple[str, str], float] = {}
    for label in labels:
        for mode in args.modes:
            ss = [s for s in samples if s.tree == label and s.mode == mode]
            if not ss:
                continue
            per = [s.per_request for s in ss]
            med = medians[(label, mode)] = statistics.median(per)
            chunk = (f"{med / statistics.median(s.tokens_per_request for s in ss) / 1e6:.4f}"
                     if mode == "paced" else "")
            lines.append(f"| {label} | {mode} | {ss[0].requests} | {med / 1e6:.4f} | {chunk} | "
                         f"{spread_pct(per):.2f}% | {max(s.halves_diff_pct for s in ss):.2f}% | "
                         f"{statistics.median(s.wall_s for s in ss):.1f} |")
    if len(labels) == 2:
        lines += ["", "| mode | A M Ir/request | B M Ir/request | B/A |",
                  "| --- | --- | --- | --- |"]
        for mode in args.modes:
            a, b = medians.get(("A", mode)), medians.get(("B", mode))
            if a and b:
                lines.append(f"| {mode} | {a / 1e6:.4f} | {b / 1e6:.4f} | {b / a:.4f} |")
    uneven = [f"{s.tree}/{s.mode}" for s in samples if s.halves_diff_pct > 1.0]
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
            lines += [("**Check:** token chunks coalesced: the gateway did not keep up with "
                       "the pace under valgrind; lower --paced-concurrency or --paced-tps")]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument("--requests", type=int, default=400,
                   help="counted requests per mode and repeat, chat and stream (default 400)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per tree and mode")
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
    p.add_argument("--workdir", help="keep configs, logs and callgrind dumps here "
                   "(default: a temp dir, removed)")
    a = p.parse_args(argv)
    a.modes = [m for m in a.modes.split(",") if m]
    for m in a.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
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
