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

_SITE = re.compile(r"\((?:.*/)?(site-packages|lib/python3\.\d+)/")


def _short(frame: str) -> str:
    """`handler (/x/site-packages/aiohttp/web_protocol.py)` -> `handler (aiohttp/web_protocol.py)`."""
    frame = _SITE.sub("(", frame)
    return re.sub(r"\(/.*?/work/main/", "(", frame)


def _frames(stack: str) -> list[str]:
    return [_short(f) for f in stack.split(";")
            if not f.startswith(("process ", "thread ")) and f]


def summarize(path: Path, top: int = 25) -> str:
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
    out = [f"{path.name}: {samples} samples", "", "own %  | frame"]
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
    ns = p.parse_args()
    print(summarize(ns.profile, ns.top))


if __name__ == "__main__":
    main()
