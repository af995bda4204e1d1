"""What a failed Redis call means for the limits: an outage, or a refusal.

An outage (Redis unreachable, or unable to take writes for now) sends the limits to the
in-process stand-in (`redis_outage.py`). A refusal is Redis answering a script with an
error: Redis is up and would refuse the same call again, so the limits stay on Redis and
the call is given up (`ScriptRefused`).
"""

from __future__ import annotations

from typing import Final

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

# What a failed Redis call raises, outage or refusal.
# uvloop raises RuntimeError when a write hits a transport that a Redis restart closed.
REDIS_FAILURES: Final = (RedisError, OSError, RuntimeError)
# Error replies that mean Redis cannot take writes for now (a replica after a failover,
# out of memory, a cluster resharding), and are outages; any other error reply is Redis
# refusing what we sent it. "BUSY" (another script running too long) has no class of its own.
_UNAVAILABLE: Final = (ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError)


def is_refusal(error: BaseException) -> bool:
    """Redis is up and refused the call: a bug in a script or its arguments."""
    return (isinstance(error, ResponseError) and not isinstance(error, _UNAVAILABLE)
            and not str(error).startswith("BUSY"))


class ScriptRefused(Exception):
    """Redis answered a script with an error (already counted and logged)."""

    def __init__(self, script: str) -> None:
        super().__init__(script)
        self.script = script
