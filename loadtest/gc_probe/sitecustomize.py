"""Garbage-collector experiments on an unchanged gateway (bench.py / stream_scale.py --gc ...).

Put on PYTHONPATH of the gateway process only (stack.Gateway does that): Python imports this
at start. Environment:
  BENCH_GC_THRESHOLD  "700,10,10"-style gc.set_threshold arguments
  BENCH_GC_FREEZE     "1": gc.collect() + gc.freeze() right after the listening socket opens,
                      so startup objects (modules, config, catalog, app) leave the collector's view
  BENCH_GC_LOG        "1": log every collection longer than 5 ms, and totals at exit, to stderr
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time

if os.environ.get("BENCH_GC_THRESHOLD"):
    gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))

if os.environ.get("BENCH_GC_FREEZE") == "1":
    from aiohttp import web

    _start = web.TCPSite.start

    async def _start_then_freeze(self: web.TCPSite) -> None:
        await _start(self)
        gc.collect()
        gc.freeze()
        sys.stderr.write(f"gc_probe: froze {gc.get_freeze_count()} objects\n")

    web.TCPSite.start = _start_then_freeze  # type: ignore[method-assign]

if os.environ.get("BENCH_GC_LOG") == "1":
    _t0 = [0.0]
    _totals: dict[int, list[float]] = {}

    def _timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _t0[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _t0[0]) * 1000
        t = _totals.setdefault(info["generation"], [0, 0.0, 0.0])
        t[0] += 1
        t[1] += ms
        t[2] = max(t[2], ms)
        if ms > 5:
            sys.stderr.write(f"gc_probe: gen{info['generation']} pause {ms:.1f} ms\n")

    gc.callbacks.append(_timer)
    atexit.register(lambda: sys.stderr.write(
        "gc_probe: totals " + ", ".join(f"gen{g}: {int(n)} runs, {s:.0f} ms, max {m:.1f} ms"
                                        for g, (n, s, m) in sorted(_totals.items())) + "\n"))

if os.environ.get("BENCH_STALL_LOG"):
    # Event-loop stall watchdog: a loop callback bumps a heartbeat every millisecond; a
    # thread checks it, and when the heartbeat is older than the threshold it records the
    # main thread's stack as it is at that moment (what is holding the loop), once a stall.
    import threading
    import traceback

    _limit_s = float(os.environ["BENCH_STALL_LOG"]) / 1000
    _beat = [time.perf_counter()]
    _main = threading.main_thread().ident

    def _heartbeat() -> None:
        import asyncio

        loop = asyncio.get_running_loop()

        def tick() -> None:
            _beat[0] = time.perf_counter()
            loop.call_later(0.001, tick)

        tick()

    def _watch() -> None:
        reported = 0.0
        while True:
            time.sleep(0.001)
            late = time.perf_counter() - _beat[0]
            if late > _limit_s and _beat[0] != reported:
                reported = _beat[0]
                frame = sys._current_frames().get(_main or 0)
                stack = "".join(traceback.format_stack(frame, limit=12)) if frame else "?"
                sys.stderr.write(f"stall_probe: loop late {late * 1000:.1f} ms at\n{stack}"
                                 "stall_probe: end\n")

    from aiohttp import web

    _site_start = web.TCPSite.start

    async def _start_then_watch(self: web.TCPSite) -> None:
        await _site_start(self)
        _heartbeat()
        threading.Thread(target=_watch, daemon=True, name="stall-probe").start()

    web.TCPSite.start = _start_then_watch  # type: ignore[method-assign]
