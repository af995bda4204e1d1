"""The client-visible side of limits: OpenAI's rate-limit headers and the two 429s."""

from __future__ import annotations

import math

from ..catalog import nano_to_usd
from ..errors import QuotaExceeded, RateLimited
from ..principal import Principal


def duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


class RateState:
    """A bucket's state after a check: what the headers report."""

    __slots__ = ("limit", "remaining", "reset_s")

    def __init__(self, limit: int, remaining: float, reset_s: float) -> None:
        self.limit = limit
        self.remaining = remaining
        self.reset_s = reset_s


def bucket_state(limit: int, level: float) -> RateState:
    """A per-minute token bucket at `level`: time until full at limit/60 per second."""
    return RateState(limit, level, max(0.0, (limit - level) * 60.0 / limit))


def rate_headers(requests: RateState | None, tokens: RateState | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for suffix, state in (("requests", requests), ("tokens", tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, math.floor(state.remaining)))
            headers[f"x-ratelimit-reset-{suffix}"] = duration(state.reset_s)
    return headers


def rate_limited(which: str, retry_s: float, headers: dict[str, str]) -> RateLimited:
    retry_s = max(retry_s, 0.001)
    unit = "requests" if which == "requests" else "tokens"
    return RateLimited(
        f"Rate limit reached for this key: too many {unit} per minute. "
        f"Try again in {duration(retry_s)}.",
        headers={
            **headers,
            "retry-after": str(max(1, math.ceil(retry_s))),
            "retry-after-ms": str(max(1, math.ceil(retry_s * 1000))),
        },
    )


def quota_exceeded(principal: Principal, period: str) -> QuotaExceeded:
    limit = nano_to_usd(principal.limit_nusd or 0)
    span = "in total" if principal.period == "total" else f"for {period} (UTC month)"
    return QuotaExceeded(
        f"This key has reached its spending limit of ${limit:g} {span}; "
        "an admin can raise it (PATCH /v1/api-keys/<id>/limit).",
        # OpenAI's SDKs retry a 429 unless told not to: waiting does not restore a budget.
        headers={"x-should-retry": "false"},
    )
