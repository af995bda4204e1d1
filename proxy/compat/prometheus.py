"""The fence for the metrics' deferred histogram observations (`metrics/recording.py`).

prometheus_client has no public call that adds many observations at once: an `observe`
takes a lock and walks the buckets in Python, about 7 µs a request in all. The request
path counts into plain numbers instead, and a fold adds them to the histogram child's own
parts before a scrape: `_upper_bounds` (the bounds, the last +Inf), `_buckets` (one value
a bucket, not cumulative) and `_sum`, each bucket and the sum a value with `inc`.

Read in prometheus_client 0.20.0 and 0.26.0. The probe checks that `Histogram.observe`
still adds to those three parts with `inc` (so a fold is a batched `observe`); it creates
no metric, which in multiprocess mode would land in every worker's files. (The fold read
back through the public `collect()` is in `tests/test_compat.py`.) Fallback: where a child
lacks the parts, `histogram_bounds` says None and the metrics observe each value at once.
"""

from __future__ import annotations

from typing import Any, Final

import prometheus_client

from . import fence


def histogram_bounds(child: Any) -> list[float] | None:
    """The upper bounds of a histogram child (the last +Inf); None where this release of
    prometheus_client keeps them elsewhere: then observe at once."""
    try:
        bounds, _, _ = child._upper_bounds, child._buckets, child._sum
    except AttributeError:
        return None
    return list(bounds)


def histogram_add_bucket(child: Any, index: int, count: int) -> None:
    """Add `count` observations to the child's bucket `index` (not cumulative)."""
    child._buckets[index].inc(count)


def histogram_add_sum(child: Any, amount: float) -> None:
    child._sum.inc(amount)


def probe() -> list[str]:
    used = prometheus_client.Histogram.observe.__code__.co_names
    return [f"Histogram.{name} in observe" for name in ("_upper_bounds", "_buckets", "_sum", "inc")
            if name not in used]


FENCE: Final = fence.Fence(
    name="prometheus histograms", module="proxy/compat/prometheus.py",
    distribution="prometheus_client", checked=((0, 20), (0, 27)), probe=probe,
    fallback="histograms are observed one value at a time (about 7 µs a request more)",
)
