"""Every use of a library's private API in the gateway, fenced: one module a seam.

Each was taken for a measured gain on the hot path, and each module says what it uses, the
versions it was read in, and what happens when the library changes (`Fence`):

- `aiohttp_edge.py`: the listener's header deadline, connection cap and quiet parse errors
  (a subclass of aiohttp's `RequestHandler`); no fallback: the gateway refuses to start;
- `aiohttp_stream.py`: an SSE response's headers sent with its first bytes, and chunks
  written to the client's transport beside aiohttp's writer; no fallback;
- `prometheus.py`: histogram observations added in batches before a scrape; falls back to
  one `observe` a value;
- `redis.py`: the lean Redis connection's address from redis-py's pool (falls back to
  redis-py's pipelines) and redis-py's exception for each error reply (no private API: a
  copy of its table).

`check` runs every probe at the gateway's start (`app.py`): a fence without a fallback that
fails raises `CompatError`; a fallback taken, or a library version outside the range a
fence was read in, is logged as a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from . import aiohttp_edge, aiohttp_stream, prometheus, redis
from .fence import CompatError, Fence, run

__all__ = ["FENCES", "CompatError", "Fence", "check"]

FENCES: Final = (aiohttp_edge.FENCE, aiohttp_stream.FENCE, prometheus.FENCE, redis.FENCE)


def check(fences: Sequence[Fence] = FENCES) -> list[str]:
    """Probe every fence; raises `CompatError` naming each one that cannot run on the
    installed libraries; returns the warnings (also logged)."""
    warnings: list[str] = []
    errors: list[str] = []
    for fence in fences:
        try:
            warnings += run(fence)
        except CompatError as e:
            errors.append(str(e))
    if errors:
        raise CompatError("; ".join(errors))
    return warnings
