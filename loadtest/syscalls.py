"""System calls per request, by strace: the kernel's share of a request, counted.

    /tmp/venvtest/bin/python loadtest/syscalls.py                   # bare and this tree
    git worktree add /tmp/gw-base HEAD~1
    /tmp/venvtest/bin/python loadtest/syscalls.py --compare /tmp/gw-base .

Why: on this VM a relayed stream chunk spends about half its time in the kernel (perf:
the client write, which on loopback also runs the client's receive path, the upstream read,
epoll), and the host's drift hides a change of a few per cent in wall-clock runs. The number
of calls does not drift: `strace -c -f` attached to the server for N requests of one mode
(the same clients, modes and gateway config as instructions.py: chat, the one-piece stream,
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
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Final

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack
from instructions import (
    BARE_MODEL,
    CLIENT_TIMEOUT,
    PACED_MODEL,
    SETTLE_S,
    Client,
    HarnessError,
    Target,
    describe_tree,
    gateway_trees,
    paced_toml,
    quiet_timers_toml,
    run_n,
    upstreams,
)

MODES: Final = ("chat", "stream", "paced")
ATTACH_TIMEOUT_S: Final = 10.0


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


def start_targets(args: argparse.Namespace, workdir: Path, trees: dict[str, Path], nginx: str,
                  paced: str) -> list[Target]:
    targets: list[Target] = []
    try:
        if "bare" in args.targets:
            for name, upstream, modes in (("bare", nginx, ["chat", "stream"]),
                                          ("bare-paced", paced, ["paced"])):
                modes = [m for m in modes if m in args.modes]
                if modes:
                    (workdir / name).mkdir()
                    proc, base = stack.start_bare(workdir / name, args.gateway_python, args.core,
                                                  upstream)
                    targets.append(Target("bare", proc, workdir / name, base, None,
                                          dict.fromkeys(modes, BARE_MODEL), proc.stop))
        for label, tree in trees.items():
            gw = stack.Gateway(workdir / label, args.gateway_python, args.core, nginx + "/v1",
                               nginx + "/sse/v1", pg=args.pg, redis_url=args.redis,
                               extra_toml=paced_toml(paced + "/v1") + quiet_timers_toml(50),
                               tree=tree)
            models = {"chat": stack.CHAT_MODEL, "stream": stack.STREAM_MODEL,
                      "paced": PACED_MODEL}
            targets.append(Target(label, gw.proc, workdir / label, gw.base, gw.key, models,
                                   gw.stop, gw))
    except BaseException:
        for t in targets:
            t.stop()
        raise
    return targets


async def count(t: Target, mode: str, args: argparse.Namespace, out: Path) -> Counter[str]:
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


def render(results: list[tuple[str, str, Counter[str]]], sources: dict[str, str],
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


def run(args: argparse.Namespace, workdir: Path) -> int:
    trees = gateway_trees(args)
    sources = {"bare": f"loadtest/bare_forwarder.py of {stack.REPO}",
               **{label: describe_tree(tree) for label, tree in trees.items()}}
    results: list[tuple[str, str, Counter[str]]] = []
    with upstreams(workdir, args.gateway_python, 50, 20) as (nginx, paced):
        targets = start_targets(args, workdir, trees, nginx, paced)
        try:
            for t in targets:
                for mode in (m for m in args.modes if m in t.models):
                    calls = asyncio.run(count(t, mode, args, t.workdir / f"strace-{mode}"))
                    results.append((t.label, mode, calls))
                    print(f"  {t.label:7} {mode:6} {sum(calls.values()):6.1f} calls/request",
                          flush=True)
        finally:
            for t in targets:
                t.stop()
    print("\n" + render(results, sources, args))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="bare,gateway")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--requests", type=int, default=200, help="chat and stream (default 200)")
    p.add_argument("--paced-streams", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=1,
                   help="chat and stream requests at once (default 1; wake-ups shared above)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--gateway-tree", default=str(stack.REPO))
    p.add_argument("--compare", nargs=2, metavar=("PATH_A", "PATH_B"))
    p.add_argument("--gateway-python", default=stack.GATEWAY_PYTHON_DEFAULT)
    p.add_argument("--pg", default=stack.PG_DEFAULT)
    p.add_argument("--redis", default=stack.REDIS_DEFAULT)
    p.add_argument("--core", type=int, default=1 if (os.cpu_count() or 1) > 1 else -1,
                   help="the core the servers run on (default 1; -1: not pinned)")
    a = p.parse_args(argv)
    a.core = None if a.core < 0 else a.core
    a.modes = [m for m in a.modes.split(",") if m]
    a.targets = [t for t in a.targets.split(",") if t]
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-syscalls-") as tmp:
            return run(args, Path(tmp))
    except (HarnessError, stack.BenchError) as e:
        print(f"syscalls: FAILED: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
