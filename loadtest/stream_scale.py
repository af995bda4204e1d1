"""1,000 concurrent SSE streams on one gateway worker: does chunk timing survive?

    .venv/bin/python loadtest/stream_scale.py            # 1,000 streams at 20 tokens/s
    .venv/bin/python loadtest/stream_scale.py --streams 200 --window 10   # a quick look
    .venv/bin/python loadtest/stream_scale.py --final --window 10 --rounds 5

The fake upstream (`fake_upstream.py`, paced, `--stamp`) and this client run on the load core;
the gateway (everything on, as in bench.py) runs alone on the server core. The client keeps
`--streams` streams open at all times: each slot opens a stream, reads it to `[DONE]`, and
opens the next; slot starts are spread over one stream's length so that streams begin and end
evenly (about streams / stream-seconds new streams a second), as in production. The same load
runs twice, first straight at the upstream, then through the gateway. Only streams that start
inside the measurement window, after every slot is running, count.

Each chunk is timestamped when it arrives. The upstream stamps its chunks with the request's
arrival (`x_rx`) and the chunk's send time (`x_tx`) on the machine-wide monotonic clock, so
besides the time to first token (TTFT) the report splits it into legs:

  request leg      x_rx - sent            client (-> gateway) -> upstream
  first-chunk leg  received - x_tx        upstream (-> gateway) -> client, first token
  chunk transit    received - x_tx        for every token chunk
  gap              between consecutive token chunks of one stream (1/tokens-per-second ideally)

"Added" is the gateway run minus the direct run, per percentile. Targets: added TTFT p99 < 5 ms,
gateway RSS < 200 MB. On a contended host one window's added p99 moved from +4 to +12 ms
between runs minutes apart; `--rounds N` alternates the two phases N times with the gateway
kept up, lists each round, and judges the target on the median round.

The client is hand-made (`sse_client.py`: an asyncio.Protocol with httptools, one keep-alive
connection a slot) because it shares the load core with the upstream and must leave it headroom:
on a busy host the aiohttp client it replaced took ~55 % of that core at 1,000 streams and the
direct run's own TTFT p99 reached ~190 ms; at 200 streams it used 16 % of the core, this one 7 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes
import stack

try:
    import sse_client
except ImportError:  # pragma: no cover: httptools missing
    sys.exit("stream_scale.py needs httptools: run it with the gateway's venv python "
             f"({stack.GATEWAY_PYTHON_DEFAULT}; scripts/bench.sh makes it)")

RESULTS: Final = Path(__file__).resolve().parent / "results"
_TX: Final = re.compile(rb'"x_rx":(\d+),"x_tx":(\d+)')


@dataclass
class Phase:
    name: str
    ttft_ms: list[float] = field(default_factory=list)
    request_leg_ms: list[float] = field(default_factory=list)
    first_leg_ms: list[float] = field(default_factory=list)
    transit_ms: list[float] = field(default_factory=list)
    gap_ms: list[float] = field(default_factory=list)
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    concurrency: list[int] = field(default_factory=list)
    client_cpu_pct: float = 0.0
    upstream_cpu_pct: float = 0.0
    server_cpu_pct: float = 0.0
    server_rss_mb: float = 0.0
    server_peak_rss_mb: float = 0.0
    server_core_other_pct: float = 0.0  # server core busy time that was not the gateway's

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @classmethod
    def pooled(cls, name: str, rounds: list[Phase]) -> Phase:
        """Every round's samples together; CPU and RSS: the rounds' mean and the highest."""
        p = cls(name)
        for r in rounds:
            for attr in ("ttft_ms", "request_leg_ms", "first_leg_ms", "transit_ms", "gap_ms",
                         "concurrency"):
                getattr(p, attr).extend(getattr(r, attr))
            p.completed += r.completed
            for kind, n in r.errors.items():
                p.errors[kind] = p.errors.get(kind, 0) + n
        for attr in ("client_cpu_pct", "upstream_cpu_pct", "server_cpu_pct", "server_rss_mb",
                     "server_core_other_pct"):
            setattr(p, attr, statistics.mean(getattr(r, attr) for r in rounds))
        p.server_peak_rss_mb = max(r.server_peak_rss_mb for r in rounds)
        return p


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Timing:
    """One stream's arrival times, fed every read of its body by the client as it arrives
    (a read may hold several chunks: it counts once, as the first stamp in it)."""

    __slots__ = ("done", "first_recv", "first_tx", "gaps", "last_token", "rx", "sent",
                 "transit")

    def __init__(self, sent: int) -> None:
        self.sent = sent
        self.first_recv = self.last_token = self.rx = self.first_tx = 0
        self.done = False
        self.gaps: list[int] = []  # ns
        self.transit: list[int] = []  # ns

    def read(self, data: bytes, now: int) -> None:
        # find(), not `in`: `bytes in bytes` first tries the needle as an int and formats
        # and drops a TypeError (~1,800 instructions), twice a read at 20,000 reads a second
        if data.find(b'"content"') >= 0:
            m = _TX.search(data)
            if m:
                tx = int(m.group(2))
                if not self.rx:
                    self.rx, self.first_tx = int(m.group(1)), tx
                self.transit.append(now - tx)
            if not self.first_recv:
                self.first_recv = now
            else:
                self.gaps.append(now - self.last_token)
            self.last_token = now
        if data.find(b"data: [DONE]") >= 0:
            self.done = True


async def one_stream(client: sse_client.Client, phase: Phase, record: bool) -> None:
    t = Timing(time.monotonic_ns())
    try:
        status = await client.post(t.read)
    except sse_client.ClientError as e:
        phase.error(e.kind)
        return
    if status != 200:
        phase.error(f"status {status}")
        return
    if not t.done:
        phase.error("stream ended without [DONE]")
        return
    if not record:
        return
    phase.completed += 1
    phase.ttft_ms.append((t.first_recv - t.sent) / 1e6 if t.first_recv else 0.0)
    if t.rx:
        phase.request_leg_ms.append((t.rx - t.sent) / 1e6)
        phase.first_leg_ms.append((t.first_recv - t.first_tx) / 1e6)
    phase.gap_ms.extend(g / 1e6 for g in t.gaps)
    phase.transit_ms.extend(x / 1e6 for x in t.transit)


async def drive(url: str, key: str | None, model: str, args: argparse.Namespace,
                phase: Phase, server: stack.Proc | None, upstream: stack.Proc,
                server_core: int | None = None) -> None:
    body = shapes.chat_request(model, stream=True)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    stream_s = args.tokens / args.tps
    ramp = stream_s
    t0 = time.monotonic()
    window = (t0 + ramp + 1.0, t0 + ramp + 1.0 + args.window)
    inflight = 0
    clients = [sse_client.Client(url, body, headers, timeout_s=stream_s * 4 + 30)
               for _ in range(args.streams)]

    async def slot(i: int) -> None:
        nonlocal inflight
        await asyncio.sleep(ramp * i / args.streams)
        while True:
            start = time.monotonic()
            if start >= window[1]:
                return
            inflight += 1
            try:
                await one_stream(clients[i], phase, record=window[0] <= start < window[1])
            finally:
                inflight -= 1

    async def sample() -> None:
        while time.monotonic() < window[1]:
            await asyncio.sleep(0.5)
            if window[0] <= time.monotonic() < window[1]:
                phase.concurrency.append(inflight)

    try:
        sampler = asyncio.create_task(sample())
        slots = [asyncio.create_task(slot(i)) for i in range(args.streams)]
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        c0, up0 = os.times(), upstream.cpu_ticks()
        s0 = server.cpu_ticks() if server else 0
        core0 = stack.cpu_jiffies(server_core) if server_core is not None else (0, 0)
        w0 = time.monotonic()
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        c1, up1 = os.times(), upstream.cpu_ticks()
        s1 = server.cpu_ticks() if server else 0
        core1 = stack.cpu_jiffies(server_core) if server_core is not None else (0, 0)
        wall = time.monotonic() - w0
        if server:
            rss, hwm = server.rss_kb()
            phase.server_rss_mb, phase.server_peak_rss_mb = rss / 1024, hwm / 1024
        await asyncio.gather(*slots)
        await sampler
    finally:
        for client in clients:
            client.close()
    phase.client_cpu_pct = 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall
    phase.upstream_cpu_pct = 100 * (up1 - up0) / stack.CLK_TCK / wall
    phase.server_cpu_pct = 100 * (s1 - s0) / stack.CLK_TCK / wall if server else 0.0
    if core1[1] > core0[1]:
        busy = 100 * (core1[0] - core0[0]) / (core1[1] - core0[1])
        phase.server_core_other_pct = max(0.0, busy - phase.server_cpu_pct)


def render(args: argparse.Namespace, rounds: list[tuple[Phase, Phase]], features: dict[str, str],
           versions: dict[str, str], machine: dict[str, str]) -> str:
    direct = Phase.pooled("direct to the upstream", [d for d, _ in rounds])
    gw = Phase.pooled("through the gateway", [g for _, g in rounds])
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    gap_ideal = 1000 / args.tps
    lines = [f"# Streaming at scale, {stamp}", ""]
    if args.preliminary:
        lines += ["**Preliminary:** a shared 2-core machine with other work running.", ""]
    lines += ["| machine | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in {**machine, **versions}.items()]
    lines += [(f"| load | {args.streams} concurrent streams, {args.tokens} tokens at {args.tps:g} "
              f"tokens/s ({args.tokens / args.tps:g} s a stream), upstream first-token latency "
              f"{args.latency_ms:g} ms, {args.window} s window"
              + (f", {len(rounds)} rounds (direct, gateway, direct, ...; pooled below)"
                 if len(rounds) > 1 else "") + " |"),
              "| cores | gateway alone on core 1; fake upstream and this client on core 0 |", ""]
    if features:
        lines += ["Gateway features: " + "; ".join(f"{k}: {v}" for k, v in features.items()), ""]

    def row(name: str, d: list[float], g: list[float]) -> str:
        return (f"| {name} | {pct(d, 50):.2f} | {pct(d, 99):.2f} | {pct(g, 50):.2f} | "
                f"{pct(g, 99):.2f} | {pct(g, 50) - pct(d, 50):+.2f} | "
                f"{pct(g, 99) - pct(d, 99):+.2f} |")

    lines += [("| ms | direct p50 | direct p99 | gateway p50 | gateway p99 | added p50 | "
              "added p99 |"), "|" + " --- |" * 7,
              row("time to first token", direct.ttft_ms, gw.ttft_ms),
              row("  request leg (sent → upstream)", direct.request_leg_ms, gw.request_leg_ms),
              row("  first-chunk leg (upstream → client)", direct.first_leg_ms, gw.first_leg_ms),
              row("chunk transit (every token)", direct.transit_ms, gw.transit_ms),
              row(f"inter-chunk gap (ideal {gap_ideal:g})", direct.gap_ms, gw.gap_ms), ""]
    lines += [("| run | streams measured | concurrent (min/mean) | errors | client CPU | "
               "upstream CPU | gateway CPU | other load on the gateway's core | gateway RSS MB |"),
              "|" + " --- |" * 9]
    for p in (direct, gw):
        conc = (f"{min(p.concurrency)}/{statistics.mean(p.concurrency):.0f}"
                if p.concurrency else "-")
        errs = ", ".join(f"{k} {v}" for k, v in p.errors.items()) or "none"
        rss = (f"{p.server_rss_mb:.0f} (peak {p.server_peak_rss_mb:.0f})"
               if p.server_rss_mb else "-")
        lines.append(f"| {p.name} | {p.completed} | {conc} | {errs} | {p.client_cpu_pct:.0f}% | "
                     f"{p.upstream_cpu_pct:.0f}% | "
                     f"{(f'{p.server_cpu_pct:.0f}%' if p.server_rss_mb else '-')} | "
                     f"{p.server_core_other_pct:.0f}% | {rss} |")
    added_p99 = pct(gw.ttft_ms, 99) - pct(direct.ttft_ms, 99)
    gap_p99 = pct(gw.gap_ms, 99) - pct(direct.gap_ms, 99)
    verdict = f"{added_p99:+.2f} ms"
    if len(rounds) > 1:
        def added(d: list[float], g: list[float], p: float) -> float:
            return pct(g, p) - pct(d, p)

        lines += ["", ("| round | added TTFT p50 | added TTFT p99 | added request leg p99 | "
                       "added gap p99 | gateway CPU |"), "|" + " --- |" * 6]
        per_round = []
        for i, (d, g) in enumerate(rounds, 1):
            per_round.append(added(d.ttft_ms, g.ttft_ms, 99))
            lines.append(f"| {i} | {added(d.ttft_ms, g.ttft_ms, 50):+.2f} | {per_round[-1]:+.2f} | "
                         f"{added(d.request_leg_ms, g.request_leg_ms, 99):+.2f} | "
                         f"{added(d.gap_ms, g.gap_ms, 99):+.2f} | {g.server_cpu_pct:.0f}% |")
        added_p99 = statistics.median(per_round)
        verdict = (f"{added_p99:+.2f} ms, the median of {len(rounds)} rounds "
                   f"({min(per_round):+.2f} to {max(per_round):+.2f}; pooled {verdict})")
    lines += ["", "Targets:", "",
              (f"- added TTFT p99 {verdict} (target < 5 ms): "
              f"{'met' if added_p99 < 5 else 'NOT met'}"),
              (f"- gateway RSS {gw.server_rss_mb:.0f} MB, peak {gw.server_peak_rss_mb:.0f} MB "
              f"(target < 200 MB): {'met' if gw.server_peak_rss_mb < 200 else 'NOT met'}"),
              f"- added inter-chunk gap p99 {gap_p99:+.2f} ms",
              "- errors: " + ("none" if not direct.errors and not gw.errors else "see table"),
              ("- load generator check: client and upstream share core 0; their CPU above must "
              "stay well under 100% together, or the client, not the gateway, set the timing.")]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--tps", type=float, default=20.0, help="tokens per second per stream")
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream (default 100: 5 s)")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="upstream time to first token (default 0: TTFT is all path)")
    p.add_argument("--window", type=int, default=20, help="measurement window, seconds")
    p.add_argument("--rounds", type=int, default=1,
                   help="direct and gateway phases, alternating; the gateway stays up and the "
                        "verdict is the median of the rounds' added p99 (default 1)")
    p.add_argument("--gateway-python", default=stack.GATEWAY_PYTHON_DEFAULT)
    p.add_argument("--pg", default=stack.PG_DEFAULT)
    p.add_argument("--no-pg", action="store_true")
    p.add_argument("--redis", default=stack.REDIS_DEFAULT)
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--no-key-limit", action="store_true",
                   help="the user key has no spend limit: nothing to enforce, no admission "
                        "round trip to Redis (default: USD 1,000,000, as in bench.py)")
    p.add_argument("--services-floating", dest="services_on_load_core", action="store_false",
                   help="leave Redis and PostgreSQL wherever the scheduler runs them "
                        "(default: kept on the load core, off the gateway's)")
    p.add_argument("--gateway-extra-toml")
    p.add_argument("--gc-threshold", help="experiment: gc.set_threshold in the gateway, e.g. "
                   "50000,20,100 (loadtest/gc_probe; proxy/ is not changed)")
    p.add_argument("--gc-freeze", action="store_true",
                   help="experiment: gc.collect()+gc.freeze() in the gateway once it listens")
    p.add_argument("--gc-log", action="store_true",
                   help="report the gateway's collections (count, total and longest pause)")
    p.add_argument("--stall-log", type=float, metavar="MS",
                   help="log the gateway's stack whenever its event loop is MS late "
                        "(loadtest/gc_probe); see the gateway log in --workdir")
    p.add_argument("--upstream-connections", type=int, default=1000,
                   help="the gateway's per-provider connection pool (its default: 1000)")
    p.add_argument("--load-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--final", dest="preliminary", action="store_false")
    p.add_argument("--workdir", help="keep configs and logs here (default: a temp dir, removed)")
    p.add_argument("--out")
    return p.parse_args(argv)


async def both_phases(args: argparse.Namespace, workdir: Path, base: str,
                      upstream: stack.Proc, server_core: int | None,
                      rounds: list[tuple[Phase, Phase]], features: dict[str, str]) -> None:
    """The same load straight at the upstream, then through the gateway (started after the
    first direct phase, then kept up), `args.rounds` times."""
    direct = Phase("direct to the upstream")
    print(f"direct: {args.streams} streams ...", flush=True)
    await drive(base + "/v1/chat/completions", None, "gpt-4o-mini", args, direct, None,
                upstream, server_core)
    extra = Path(args.gateway_extra_toml).read_text() if args.gateway_extra_toml else ""
    gw = await asyncio.to_thread(
        stack.Gateway, workdir, args.gateway_python, server_core, base + "/v1", base + "/v1",
        pg=None if args.no_pg else args.pg, redis_url=None if args.no_redis else args.redis,
        extra_toml=extra, gc_env=stack.gc_env(args.gc_threshold, args.gc_freeze, args.gc_log,
                                          args.stall_log),
        max_connections=args.upstream_connections,
        key_limit_usd=None if args.no_key_limit else 1_000_000)
    try:
        for i in range(args.rounds):
            if i:
                direct = Phase("direct to the upstream")
                print(f"direct: {args.streams} streams (round {i + 1}) ...", flush=True)
                await drive(base + "/v1/chat/completions", None, "gpt-4o-mini", args, direct,
                            None, upstream, server_core)
            via = Phase("through the gateway")
            print(f"gateway: {args.streams} streams ...", flush=True)
            await drive(gw.base + "/v1/chat/completions", gw.key, stack.STREAM_MODEL, args, via,
                        gw.proc, upstream, server_core)
            rounds.append((direct, via))
        features.update(gw.features)
        logged = gw.errors_logged()
        if logged:
            features["error lines logged"] = f"{len(logged)} (first: {logged[0][-120:]})"
    finally:
        await asyncio.to_thread(gw.stop)
        gc_totals = gw.gc_report()
        if gc_totals:
            features["garbage collector (whole run)"] = gc_totals


async def amain(args: argparse.Namespace, workdir: Path) -> int:
    load_core = args.load_core if (os.cpu_count() or 1) > 1 else None
    server_core = args.server_core if load_core is not None else None
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    machine, versions = stack.machine(), stack.versions(args.gateway_python, None)
    upstream, base = stack.start_fake_upstream(
        workdir, args.gateway_python, load_core, "--tokens-per-second", str(args.tps),
        "--stream-tokens", str(args.tokens), "--latency-ms", str(args.latency_ms), "--stamp")
    rounds: list[tuple[Phase, Phase]] = []
    features: dict[str, str] = {}
    with stack.services_on(load_core if args.services_on_load_core else None) as moved:
        if moved:
            features["backing services"] = moved
        try:
            await both_phases(args, workdir, base, upstream, server_core, rounds, features)
        finally:
            upstream.stop()
    report = render(args, rounds, features, versions, machine)
    print("\n" + report)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = Path(args.out) if args.out else RESULTS / f"stream-scale-{stamp}.md"
    out.write_text(report)
    print(f"written: {out}")
    return 1 if any(d.errors or g.errors for d, g in rounds) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return asyncio.run(amain(args, Path(args.workdir).resolve()))
    with tempfile.TemporaryDirectory(prefix="stream-scale-") as tmp:
        return asyncio.run(amain(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
