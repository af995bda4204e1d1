"""bench.py's ratio mode: the gateway's throughput as a share of the bare forwarder's,
measured in alternation.

    python3 loadtest/bench.py --ratio                        # 15 rounds of 3 s a mode (~4 min)
    python3 loadtest/bench.py --ratio --rounds 30 --seconds 2 --modes stream
    git worktree add /tmp/gw-base HEAD~1
    python3 loadtest/bench.py --against /tmp/gw-base         # this tree's gateway over that one's
    printf '[limits]\nlease_requests = 0\n' > /tmp/nolease.toml
    python3 loadtest/bench.py --against . --against-toml /tmp/nolease.toml   # a switch, A/B

bench.py's table measures its targets one after another, minutes apart. On a contended host
(the same spin loop ran 5–8.7 M iterations a second from one second to the next) the machine
a target gets drifts within those minutes, and the throughput ratio, the design's target,
moves with it (53 % and 85 % for chat and stream in one table run on 2026-11-26, against 77 %
and 69 % on a quiet day). Here both run at once on the server core, only one under load at a
time, and short wrk runs at c=64 alternate: bare, gateway, bare, gateway, ..., bare. Each
gateway run's ratio is its RPS over the mean of the two bare runs around it, so a drift
slower than a round cancels; the report gives the median of the rounds and their spread,
and the CPU µs a request of each side (from /proc, as bench.py). Same setup as the table:
nginx answering fixed bodies on the load core with wrk, Redis and PostgreSQL kept there too,
the gateway with everything on. In the `messages` and `responses` modes the gateway answers
`/v1/messages` or `/v1/responses` (translated to the same chat upstream) and the bare
forwarder, which speaks only chat, answers a chat request: the ratio is the dialect's cost
over plain forwarding.

`--against TREE` puts the gateway of another checkout (its own database, Redis namespace
and key, the same config) where the bare forwarder was: the ratio is then this tree's
throughput over that one's, a wall-clock A/B of a change that the host's drift would
otherwise hide (count.py --tool callgrind counts user space only; this sees the kernel's
share). `--against-toml FILE` adds config to the reference gateway only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import stack
from bench import DIALECT_MODES, Bench, Run, probe_dialect


def alternate(bench: Bench, mode: str, targets: dict[str, tuple[str, str | None, stack.Proc]],
              rounds: int, seconds: int) -> tuple[list[Run], list[Run]]:
    """bare, gateway, bare, ..., bare: `rounds` gateway runs, each between two bare runs.
    ("bare" is the reference: the bare forwarder, or with --against the other gateway.)"""
    urls, bodies = {}, {}
    for name, (base, key, proc) in targets.items():
        bare = name == "bare" and key is None
        # Messages and Responses are the gateway's alone: the bare forwarder answers chat.
        own = "chat" if bare and mode in DIALECT_MODES else mode
        path = ("/sse/v1/chat/completions" if own == "stream" and bare
                else DIALECT_MODES.get(own, "/v1/chat/completions"))
        urls[name] = base + path
        body = bodies[name] = bench.body("bare" if bare else "gateway", own)
        problem = (probe_dialect(urls[name], body.read_bytes(), key, own)
                   if own in DIALECT_MODES
                   else stack.probe(urls[name], body.read_bytes(), key, stream=own == "stream"))
        if problem:
            raise stack.BenchError(f"{name}/{mode} probe failed: {problem}")
        bench.wrk(urls[name], body, key, bench.args.connections, 2, proc)  # warm-up

    def run(name: str) -> Run:
        _, key, proc = targets[name]
        return bench.wrk(urls[name], bodies[name], key, bench.args.connections, seconds, proc)

    bare, gateway = [run("bare")], []
    for _ in range(rounds):
        gateway.append(run("gateway"))
        bare.append(run("bare"))
    return bare, gateway


def summarize(mode: str, bare: list[Run], gateway: list[Run]) -> str:
    ratios = sorted(g.rps / ((b0.rps + b1.rps) / 2)
                    for g, b0, b1 in zip(gateway, bare, bare[1:], strict=False))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    errors = sum(sum(r.errors.values()) for r in bare + gateway)

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    return (f"| {mode} | {len(ratios)} | **{100 * q[1]:.0f} %** | {100 * q[0]:.0f}–{100 * q[2]:.0f} % "
            f"| {100 * ratios[0]:.0f}–{100 * ratios[-1]:.0f} % | {med(bare, 'rps'):,.0f} "
            f"| {med(gateway, 'rps'):,.0f} | {med(bare, 'cpu_us_per_req'):.0f} "
            f"| {med(gateway, 'cpu_us_per_req'):.0f} | {errors or 'none'} |")


def run_ratio(args: argparse.Namespace) -> int:
    """`bench.py --ratio` (and `--against TREE`): the alternating runs, their report."""
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="gateway-ratio-") as tmp:
        workdir = Path(tmp)
        bench = Bench(args, workdir)
        core = bench.server_core
        nginx, upstream = stack.start_nginx(workdir, bench.load_core)
        rows: list[str] = []
        try:
            with stack.services_on(bench.load_core):
                if args.against is None:
                    bare, bare_base = stack.start_bare(workdir, args.gateway_python, core,
                                                       upstream)
                    reference: tuple[str, str | None, stack.Proc] = (bare_base, None, bare)
                    stop_reference: Callable[[], None] = bare.stop
                else:
                    ref = stack.Gateway(workdir / "against", args.gateway_python, core,
                                        upstream + "/v1", upstream + "/sse/v1", pg=args.pg,
                                        redis_url=args.redis, tree=args.against.resolve(),
                                        extra_toml=args.against_toml.read_text()
                                        if args.against_toml else "")
                    reference, stop_reference = (ref.base, ref.key, ref.proc), ref.stop
                gw = None
                try:
                    gw = stack.Gateway(workdir, args.gateway_python, core, upstream + "/v1",
                                       upstream + "/sse/v1", pg=args.pg, redis_url=args.redis)
                    targets = {"bare": reference, "gateway": (gw.base, gw.key, gw.proc)}
                    for mode in args.modes:
                        print(f"{mode}: {args.rounds} rounds of {args.seconds} s", flush=True)
                        rows.append(summarize(mode, *alternate(bench, mode, targets,
                                                               args.rounds, args.seconds)))
                        print(rows[-1], flush=True)
                finally:
                    stop_reference()
                    if gw is not None:
                        gw.stop()
        finally:
            nginx.stop()
    machine, versions = stack.machine(), stack.versions(args.gateway_python, None)
    described = ("the bare forwarder" if args.against is None
                 else f"the gateway at {args.against} (\"bare\" below)"
                 + (f" with {args.against_toml.read_text().strip()!r}" if args.against_toml else ""))
    setup = (f"{machine['cpu']}, {versions['gateway stack']}; gateway commit "
             f"{versions['gateway commit']}; {args.rounds} rounds of {args.seconds} s at "
             f"c={args.connections} a mode, {described} and this gateway alternating on the "
             f"server core")
    header = ("| mode | rounds | median | middle half | all rounds | bare RPS | gateway RPS "
              "| bare µs/req | gateway µs/req | errors |")
    report = "\n".join([
        f"# Gateway throughput as a share of the bare forwarder's, {stamp}", "", setup, "",
        header, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
    print("\n" + report)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else results / f"ratio-{stamp}.md"
    out.write_text(report)
    print(f"written: {out}")
    return 0
