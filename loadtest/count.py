"""Counts per request that a noisy host cannot move: one tool, two counters.

    .venv/bin/python loadtest/count.py --tool callgrind        # instructions (user space)
    .venv/bin/python loadtest/count.py --tool strace           # system calls (the kernel's share)
    git worktree add /tmp/gw-base HEAD~1                      # a revision to compare
    .venv/bin/python loadtest/count.py --tool callgrind --compare /tmp/gw-base .   # B/A per mode
    .venv/bin/python loadtest/count.py --tool strace --concurrency 64 --requests 3000 \
        --modes chat,stream
    .venv/bin/python loadtest/count.py --tool callgrind --workdir /tmp/cg   # keep the dumps
    callgrind_annotate /tmp/cg/gateway/cg.<pid>.<n> | head -40    # where they went (C functions)

Both start the same targets (harness.py: the bare forwarder and one gateway per checkout,
everything on, background timers as quiet_timers_toml says) and send the same modes (chat,
the one-piece stream, paced streams); they differ in what they count.

## --tool callgrind: instructions per request

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

Time: ~3 min for one tree, both targets, all modes, 3 repeats; ~5 min with --compare.

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

## --tool strace: system calls per request

Why: on this VM a relayed stream chunk spends about half its time in the kernel (perf:
the client write, which on loopback also runs the client's receive path, the upstream read,
epoll), and the host's drift hides a change of a few per cent in wall-clock runs. The number
of calls does not drift: `strace -c -f` attached to the server for N requests of one mode
(the same clients, modes and gateway config as callgrind's: chat, the one-piece stream,
paced streams) counts every call of every thread, Redis and PostgreSQL round trips and the
ledger's writes included. strace slows each call, so this counts; it does not time.

Reads and writes at concurrency 1 repeat exactly from run to run; epoll wake-ups depend on
timing (whether the next bytes are already there when the loop looks), so they move by a
few tenths a request between runs, more in the paced mode's 4 streams at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack
from harness import (
    CLIENT_TIMEOUT,
    MODES,
    SETTLE_S,
    TARGETS,
    Client,
    HarnessError,
    Launch,
    Reads,
    Target,
    aiohttp,
    describe_tree,
    gateway_trees,
    run_n,
    start_targets,
    upstreams,
)

TOOLS: Final = ("callgrind", "strace")
# String hashes (dict and set layouts, hence some instruction counts) the same in every run.
FIXED_HASHES: Final = {"PYTHONHASHSEED": "0"}
STARTUP_TIMEOUT_S: Final = 900.0  # imports, migrations and first requests, all under valgrind
STOP_TIMEOUT_S: Final = 120.0  # draining and the ledger's last flush, under valgrind
ATTACH_TIMEOUT_S: Final = 10.0  # strace attaching to a running server
# Counters that must not move while counting: a Redis timeout, a database error or an
# upstream failure sends the request down another (cheaper or dearer) path.
HEALTH_METRICS: Final = ("proxy_redis_errors_total", "proxy_database_errors_total",
                         "proxy_upstream_errors_total", "proxy_ledger_records_spooled_total")


# === callgrind: instructions ====================================================================


def valgrind(workdir: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/cg.%p"]


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
    cg = Callgrind(t.proc.pid, t.workdir)  # taskset and valgrind exec in place: the pid
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
    cg = Callgrind(t.proc.pid, t.workdir)  # taskset and valgrind exec in place: the pid
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


def run_callgrind(args: argparse.Namespace, workdir: Path, trees: dict[str, Path],
                  sources: dict[str, str]) -> str:
    started = time.monotonic()
    samples: list[Sample] = []
    idle: dict[str, float] = {}
    features: dict[str, str] = {}
    launch = launch_for(args, wrapper=valgrind, env=FIXED_HASHES,
                        start_timeout_s=STARTUP_TIMEOUT_S, stop_timeout_s=STOP_TIMEOUT_S)
    with upstreams(workdir, args.gateway_python, args.paced_tps, args.paced_tokens) as (
            nginx, paced):
        t0 = time.monotonic()
        targets = start_targets(launch, args.targets, args.modes, workdir, trees, nginx, paced)
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
    return render_callgrind(args, list(trees), sources, samples, idle, features,
                            time.monotonic() - started)


def spread_pct(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / statistics.median(values) if values else 0.0



def render_callgrind(args: argparse.Namespace, trees: list[str], sources: dict[str, str],
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


# === strace: system calls ======================================================================


class Strace:
    """`strace -c -f` attached to one process until `stop()`; `stop()` returns the counts."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        for line in self.proc.stderr:  # "strace: Process N attached [with K threads]"
            if "attached" in line:
                return
            if time.monotonic() > deadline:
                break
        self.proc.kill()
        raise HarnessError(f"strace did not attach to {pid}")

    def stop(self) -> Counter[str]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return parse_summary(self.out.read_text())


def parse_summary(text: str) -> Counter[str]:
    """Calls by name from strace -c's table (`% time seconds usecs/call calls [errors] name`)."""
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) in (5, 6) and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] += int(parts[3])
    return calls


async def count_calls(t: Target, mode: str, args: argparse.Namespace, out: Path) -> Counter[str]:
    """Calls per request of `mode`, by name: N requests after a warm-up."""
    n = args.paced_streams if mode == "paced" else args.requests
    concurrency = 4 if mode == "paced" else args.concurrency
    stagger = 1 / 50 / concurrency if mode == "paced" else 0.0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=CLIENT_TIMEOUT) as session:
        client = Client(session, t, mode)
        await run_n(client.one, args.warmup, concurrency, stagger)
        await asyncio.sleep(SETTLE_S)
        strace = Strace(t.proc.pid, out)
        try:
            await run_n(client.one, n, concurrency, stagger)
            await asyncio.sleep(SETTLE_S)
        finally:
            calls = strace.stop()
    if not calls:
        raise HarnessError(f"{t.label}/{mode}: strace counted nothing ({out})")
    return Counter({name: c / n for name, c in calls.items()})


def render_strace(results: list[tuple[str, str, Counter[str]]], sources: dict[str, str],
           args: argparse.Namespace) -> str:
    # every call made at least 0.5 times a request by some target, most frequent first
    totals: Counter[str] = Counter()
    for _, _, calls in results:
        totals.update({name: c for name, c in calls.items() if c >= 0.5})
    names = [name for name, _ in totals.most_common()]
    lines = [f"# System calls per request (strace -c -f), {time.strftime('%Y-%m-%d %H:%M')}", "",
             *(f"- {label}: {src}" for label, src in sources.items()), "",
             (f"chat and stream: {args.requests} requests, {args.concurrency} at a time; paced: "
              f"{args.paced_streams} streams of 20 tokens at 50 tokens/s, 4 at once"), "",
             "| target | mode | all | " + " | ".join(names) + " | other |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: |"]
    for label, mode, calls in results:
        total = sum(calls.values())
        other = total - sum(calls.get(n, 0.0) for n in names)
        lines.append(f"| {label} | {mode} | **{total:.1f}** | "
                     + " | ".join(f"{calls.get(n, 0.0):.1f}" for n in names)
                     + f" | {other:.1f} |")
    return "\n".join(lines) + "\n"


def run_strace(args: argparse.Namespace, workdir: Path, trees: dict[str, Path],
               sources: dict[str, str]) -> str:
    results: list[tuple[str, str, Counter[str]]] = []
    with upstreams(workdir, args.gateway_python, args.paced_tps, args.paced_tokens) as (
            nginx, paced):
        targets = start_targets(launch_for(args), args.targets, args.modes, workdir, trees,
                                nginx, paced)
        try:
            for t in targets:
                for mode in (m for m in args.modes if m in t.models):
                    calls = asyncio.run(count_calls(t, mode, args, t.workdir / f"strace-{mode}"))
                    results.append((t.label, mode, calls))
                    print(f"  {t.label:7} {mode:6} {sum(calls.values()):6.1f} calls/request",
                          flush=True)
        finally:
            for t in targets:
                t.stop()
    return render_strace(results, sources, args)


# === the command ===============================================================================


def launch_for(args: argparse.Namespace, **how: Any) -> Launch:
    return Launch(gateway_python=args.gateway_python, core=args.core,
                  pg=None if args.no_pg else args.pg,
                  redis_url=None if args.no_redis else args.redis,
                  ledger_flush_rows=args.ledger_flush_rows, **how)


def run(args: argparse.Namespace, workdir: Path) -> int:
    trees = gateway_trees(args.targets, args.compare, args.gateway_tree)
    for tree in trees.values():
        if not (tree / "proxy" / "__main__.py").exists():
            raise HarnessError(f"{tree} has no proxy/__main__.py: not a checkout of the gateway")
    print(f"count --tool {args.tool}: targets {', '.join(args.targets)}; modes "
          f"{', '.join(args.modes)}; {args.requests} requests (paced: {args.paced_streams} "
          f"streams); {args.repeat} repeat(s); core {args.core}; workdir {workdir}", flush=True)
    # described before the run: the tree may change (commits, edits) while it runs
    sources = {"bare": f"loadtest/bare_forwarder.py of {stack.REPO}",
               **{label: describe_tree(tree) for label, tree in trees.items()}}
    for label in trees:
        print(f"  {label}: {sources[label]}", flush=True)
    runner = run_callgrind if args.tool == "callgrind" else run_strace
    print("\n" + runner(args, workdir, trees, sources))
    return 0


# Per tool: (requests, paced streams, repeats). Under valgrind a request is ~50x slower.
DEFAULTS: Final = {"callgrind": (400, 100, 3), "strace": (200, 40, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", choices=TOOLS, required=True,
                   help="callgrind: instructions (user space); strace: system calls")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"subset of {','.join(TARGETS)} (default both)")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument("--requests", type=int,
                   help="counted requests per mode and repeat, chat and stream "
                        "(default: callgrind 400, strace 200)")
    p.add_argument("--repeat", type=int,
                   help="measurements per target and mode (default: callgrind 3, strace 1)")
    p.add_argument("--concurrency", type=int, default=1, help="chat and stream (default 1)")
    p.add_argument("--warmup", type=int, default=20,
                   help="uncounted requests per mode before counting (default 20)")
    p.add_argument("--paced-streams", type=int,
                   help="counted streams (default: callgrind 100, strace 40)")
    p.add_argument("--paced-concurrency", type=int, default=4)
    p.add_argument("--paced-tokens", type=int, default=20)
    p.add_argument("--paced-tps", type=float, default=50.0, help="tokens per second")
    p.add_argument("--gateway-tree", default=str(stack.REPO),
                   help="the checkout whose gateway runs (default: this repo)")
    p.add_argument("--compare", nargs=2, metavar=("PATH_A", "PATH_B"),
                   help="two checkouts, measured alternately; prints B/A per mode")
    p.add_argument("--gateway-python", default=stack.GATEWAY_PYTHON_DEFAULT)
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
    p.add_argument("--workdir", help="keep configs, logs, dumps and summaries here "
                   "(default: a temp dir, removed)")
    a = p.parse_args(argv)
    requests, streams, repeat = DEFAULTS[a.tool]
    a.requests = a.requests or requests
    a.paced_streams = a.paced_streams or streams
    a.repeat = a.repeat or repeat
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
    if a.tool == "callgrind":
        for n in (a.requests, a.paced_streams):
            if n < 2 or (rows and n % (2 * rows)):
                p.error(f"--requests and --paced-streams: multiples of 2 x --ledger-flush-rows "
                        f"({2 * rows}), so each half holds the same ledger flushes")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.workdir:
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            return run(args, Path(args.workdir).resolve())
        with tempfile.TemporaryDirectory(prefix=f"gateway-count-{args.tool}-") as tmp:
            return run(args, Path(tmp))
    except (HarnessError, stack.BenchError) as e:
        print(f"count: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
