"""How long to wait before retrying the same model, or whether to move on instead.

The schedule is 0.5 s, 1 s, 2 s, then 4 s for every later retry, each with ±10 % jitter
so that many requests failing together do not retry in lockstep. A provider's
`Retry-After` replaces the schedule when it fits in the time left; when it does not,
waiting is pointless and the caller moves on to the next model at once.
"""

from __future__ import annotations

import math
import random
from typing import Final

from ..errors import UpstreamError

BASE_S: Final = 0.5
CAP_S: Final = 4.0
JITTER: Final = 0.10
# Without a routing deadline, a Retry-After longer than this is not worth holding the
# client for: another model (or the client's own retry) is the better bet.
MAX_RETRY_AFTER_S: Final = 60.0


def delay(retry_index: int, rng: random.Random) -> float:
    """The wait before retry number `retry_index` (0 for the first retry) of one model."""
    base = min(CAP_S, BASE_S * 2.0 ** min(retry_index, 16))
    return base * (1.0 + rng.uniform(-JITTER, JITTER))


def retry_wait(
    error: UpstreamError, remaining_s: float, retry_index: int, rng: random.Random
) -> float | None:
    """Seconds to wait before retrying the same model, or None to move on now.

    `remaining_s` is the time left before the routing deadline (`math.inf` when there is
    none). A retry is only worth it if the wait ends before the deadline.
    """
    if error.retry_after is not None:
        wait = max(0.0, error.retry_after)
        limit = remaining_s if math.isfinite(remaining_s) else MAX_RETRY_AFTER_S
        return wait if wait < limit else None
    wait = delay(retry_index, rng)
    return wait if wait < remaining_s else None
