"""Top frames of a py-spy raw (collapsed-stack) profile, by own time and by total time.

    python loadtest/profile_summary.py loadtest/results/profile-<stamp>-chat.txt [--top 25]

Each input line is `frame;frame;...;leaf COUNT` (`py-spy record --format raw`). "Own" is
the share of samples with the frame at the leaf; "total" the share with the frame anywhere
on the stack (counted once per sample). The process and thread frames py-spy prepends are
dropped.

Coroutines resumed by the C task step are often sampled without the frames that awaited
them, so "total" is a lower bound for outer frames; "own" is exact.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Final

_SITE = re.compile(r"\((?:.*/)?(site-packages|lib/python3\.\d+)/")


def _short(frame: str) -> str:
    """`f (/x/site-packages/aiohttp/web_protocol.py)` -> `f (aiohttp/web_protocol.py)`."""
    frame = _SITE.sub("(", frame)
    return re.sub(r"\(/.*?/work/main/", "(", frame)


def _frames(stack: str) -> list[str]:
    return [_short(f) for f in stack.split(";")
            if not f.startswith(("process ", "thread ")) and f]


# Where a sample's CPU goes, first matching rule wins (checked against the whole stack), so
# the shares add up to 100 %. Specific before general: the upstream call runs inside routing.
BUCKETS: Final = (
    ("garbage collector", ("gc_collect_main", "gc_collect")),
    ("getpid() in asyncio's running-loop check (CPython 3.11)", ("getpid (",)),
    ("access log", ("AccessLog.", "access_log.py")),
    ("metrics", ("proxy/metrics/", "prometheus_client/")),
    ("ledger writer (background)", ("proxy/ledger/",)),
    ("limits (admit, settle)", ("proxy/limits/",)),
    ("auth", ("proxy/auth.py", "proxy/keys/", "Authenticator")),
    ("response cache", ("proxy/cache/",)),
    ("request id", ("_request_id (",)),
    ("upstream HTTP client (aiohttp client)", ("ClientSession.", "client_reqrep.py",
                                               "client_proto.py", "connector.py",
                                               "(aiohttp/client.py)")),
    ("provider adapter (body, decode)", ("proxy/providers/",)),
    ("request decode and validation", ("ChatRequest", "proxy/wire.py", "read_body (")),
    ("routing", ("proxy/routing/", "proxy/router.py")),
    ("stream relay: one socket write per SSE event",
     ("pipe (proxy/api/relay.py);StreamResponse.write",
      "_pipe (proxy/api/chat.py);StreamResponse.write")),
    ("response building", ("proxy/api/relay.py", "usage_with_cost", "served_by")),
    ("aiohttp server (parse, dispatch, write)", ("aiohttp/web_", "aiohttp/http_", "_http_parser",
                                                 "aiohttp/streams.py")),
    ("the gateway's handlers, own code", ("(proxy/api/", "(proxy/app.py)", "(proxy/gateway.py)",
                                          "(proxy/catalog.py)", "(proxy/tokens.py)")),
    ("event loop: socket reads (uvloop)", ("uv__read (",)),
)


def buckets(path: Path, us_per_request: float | None = None) -> str:
    """The exclusive breakdown by BUCKETS (with µs a request when the CPU cost is known)."""
    counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        for name, needles in BUCKETS:
            if any(s in stack for s in needles):
                counts[name] += n
                break
        else:
            counts["event loop, sockets, other"] += n
    if not samples:
        return "no samples"
    head = "share  | µs/req | where" if us_per_request else "share  | where"
    out = [head]
    for name, n in counts.most_common():
        share = n / samples
        us = f" | {share * us_per_request:6.1f}" if us_per_request else ""
        out.append(f"{100 * share:5.1f}%{us} | {name}")
    return "\n".join(out)


def summarize(path: Path, top: int = 25, us_per_request: float | None = None) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return f"{path.name}: no samples"
    out = [f"{path.name}: {samples} samples", "", buckets(path, us_per_request), "",
           "own %  | frame"]
    out += [f"{100 * n / samples:5.1f}  | {f}" for f, n in own.most_common(top)]
    out += ["", "total % | frame"]
    out += [f"{100 * n / samples:6.1f}  | {f}" for f, n in total.most_common(top)]
    ours = [(f, n) for f, n in total.most_common() if "(proxy/" in f]
    if ours:
        out += ["", "total % | the gateway's own functions (proxy/)"]
        out += [f"{100 * n / samples:6.1f}  | {f}" for f, n in ours[:top]]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--us-per-request", type=float, help="CPU µs a request, from bench.py")
    ns = p.parse_args()
    print(summarize(ns.profile, ns.top, ns.us_per_request))


if __name__ == "__main__":
    main()
