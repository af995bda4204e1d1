"""The retry schedule: 0.5 s → 1 s → 2 s → 4 s, ±10 % jitter, and Retry-After."""

from __future__ import annotations

import math
import random

import pytest

from proxy.errors import UpstreamError
from proxy.routing.backoff import MAX_RETRY_AFTER_S, delay, retry_wait


@pytest.mark.parametrize(("index", "base"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)])
def test_delay_doubles_to_four_seconds_within_ten_percent_jitter(index: int, base: float) -> None:
    rng = random.Random(7)
    waits = [delay(index, rng) for _ in range(2000)]
    assert all(base * 0.9 <= w <= base * 1.1 for w in waits)
    # the jitter actually spreads: both halves of the band are used
    assert min(waits) < base * 0.95 and max(waits) > base * 1.05


def test_retry_after_honoured_when_shorter_than_the_time_left() -> None:
    err = UpstreamError("slow down", status=429, upstream_status=429, retry_after=3.0)
    assert retry_wait(err, remaining_s=10.0, retry_index=0, rng=random.Random(1)) == 3.0


def test_retry_after_past_the_deadline_means_move_on() -> None:
    err = UpstreamError("slow down", status=429, upstream_status=429, retry_after=30.0)
    assert retry_wait(err, remaining_s=10.0, retry_index=0, rng=random.Random(1)) is None


def test_retry_after_without_deadline_is_capped() -> None:
    rng = random.Random(1)
    short = UpstreamError("x", upstream_status=503, retry_after=MAX_RETRY_AFTER_S - 1)
    long = UpstreamError("x", upstream_status=503, retry_after=MAX_RETRY_AFTER_S + 1)
    assert retry_wait(short, math.inf, 0, rng) == MAX_RETRY_AFTER_S - 1
    assert retry_wait(long, math.inf, 0, rng) is None


def test_backoff_that_would_outlast_the_deadline_means_move_on() -> None:
    err = UpstreamError("boom", upstream_status=503)
    assert retry_wait(err, remaining_s=0.3, retry_index=0, rng=random.Random(1)) is None
    wait = retry_wait(err, remaining_s=5.0, retry_index=1, rng=random.Random(1))
    assert wait is not None and 0.9 <= wait <= 1.1
