"""Moving averages of TTFT and tokens/s per model; cold models are tried first."""

from __future__ import annotations

import pytest

from proxy.catalog import Model, _model
from proxy.config import ModelConfig
from proxy.routing.latency import LatencyTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def models(*ids: str) -> list[Model]:
    return [_model(ModelConfig(id=i, provider="p", upstream=i)) for i in ids]


def warm(t: LatencyTracker, model_id: str, ttft: float, tps: float, n: int = 3) -> None:
    for _ in range(n):
        t.observe(model_id, ttft, 101, ttft + 100 / tps)


def test_first_sample_is_taken_as_is_then_averaged() -> None:
    t = LatencyTracker(clock=Clock(), min_samples=1)
    t.observe("a", 0.5, 101, 0.5 + 100 / 50)
    ttft, tps, n = t.snapshot()["a"]
    assert ttft == pytest.approx(0.5) and tps == pytest.approx(50) and n == 1
    t.observe("a", 1.5, 101, 1.5 + 100 / 100)
    ttft, tps, _ = t.snapshot()["a"]
    assert ttft == pytest.approx(0.5 + 0.2 * 1.0)
    assert tps == pytest.approx(50 + 0.2 * 50)


def test_rank_fastest_first_by_ttft_and_throughput() -> None:
    t = LatencyTracker(clock=Clock(), ref_tokens=256)
    warm(t, "slow-start", ttft=2.0, tps=200)  # 2 + 1.28 = 3.28 s
    warm(t, "slow-gen", ttft=0.2, tps=20)  # 0.2 + 12.8 = 13 s
    warm(t, "fast", ttft=0.3, tps=100)  # 0.3 + 2.56 = 2.86 s
    ranked = t.rank(models("slow-gen", "slow-start", "fast"))
    assert [m.id for m in ranked] == ["fast", "slow-start", "slow-gen"]


def test_a_model_with_too_few_samples_is_tried_first() -> None:
    t = LatencyTracker(clock=Clock(), min_samples=3)
    warm(t, "fast", ttft=0.1, tps=500)
    warm(t, "new", ttft=5.0, tps=5, n=2)  # slow, but not yet measured enough
    assert [m.id for m in t.rank(models("fast", "new", "unseen"))] == ["new", "unseen", "fast"]
    warm(t, "new", ttft=5.0, tps=5, n=1)
    assert [m.id for m in t.rank(models("fast", "new"))] == ["fast", "new"]


def test_stale_data_makes_a_model_cold_again() -> None:
    clock = Clock()
    t = LatencyTracker(clock=clock, stale_s=300)
    warm(t, "a", ttft=9.0, tps=5)
    warm(t, "b", ttft=0.1, tps=500)
    clock.now = 200
    warm(t, "b", ttft=0.1, tps=500)
    clock.now = 301  # a's last data is over 300 s old, b's is not
    assert [m.id for m in t.rank(models("b", "a"))] == ["a", "b"]
    t.observe("a", 0.2, 10, 0.3)  # a fresh start: the old average is gone
    assert t.snapshot()["a"][2] == 1


def test_the_ranking_follows_a_model_that_slows_down() -> None:
    t = LatencyTracker(clock=Clock())
    warm(t, "a", ttft=0.2, tps=100)
    warm(t, "b", ttft=0.4, tps=100)
    assert t.rank(models("a", "b"))[0].id == "a"
    warm(t, "a", ttft=3.0, tps=100, n=5)
    assert t.rank(models("a", "b"))[0].id == "b"


def test_non_streamed_answers_rank_by_time_per_token() -> None:
    t = LatencyTracker(clock=Clock())
    for _ in range(3):
        t.observe("a", None, 100, 2.0)  # 50 tokens/s overall
        t.observe("b", None, 100, 4.0)
    assert [m.id for m in t.rank(models("b", "a"))] == ["a", "b"]


def test_non_streamed_answer_is_split_with_the_known_rate() -> None:
    t = LatencyTracker(clock=Clock(), min_samples=1)
    t.observe("a", 0.5, 101, 0.5 + 100 / 100)  # 100 tokens/s known from a stream
    t.observe("a", None, 101, 3.0)  # 1 s of generation at 100/s: the other 2 s were TTFT
    ttft, tps, n = t.snapshot()["a"]
    assert ttft == pytest.approx(0.5 + 0.2 * (2.0 - 0.5))
    assert tps == pytest.approx(100) and n == 2


def test_short_generation_does_not_move_the_rate() -> None:
    t = LatencyTracker(clock=Clock(), min_samples=1)
    t.observe("a", 0.5, 1, 0.5)  # a one-token answer: no generation phase
    assert t.snapshot()["a"][1] is None
