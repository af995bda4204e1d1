"""Circuit breaking per (provider, model): 5 failures, 30 s doubling to 300 s, one probe."""

from __future__ import annotations

from proxy.catalog import _model
from proxy.config import ModelConfig
from proxy.routing.circuit import CircuitBreakers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(cb: CircuitBreakers, n: int, provider: str = "p", model: str = "m") -> None:
    for _ in range(n):
        cb.record_failure(provider, model)


def test_five_consecutive_failures_eject() -> None:
    cb = CircuitBreakers(clock=Clock())
    fail(cb, 4)
    assert cb.state("p", "m") == "closed" and cb.allow("p", "m")
    fail(cb, 1)
    assert cb.state("p", "m") == "open"
    assert not cb.allow("p", "m")


def test_a_success_resets_the_consecutive_count() -> None:
    cb = CircuitBreakers(clock=Clock())
    fail(cb, 4)
    cb.record_success("p", "m")
    fail(cb, 4)
    assert cb.state("p", "m") == "closed"


def test_ejected_at_29_9_s_and_probed_at_30_1_s() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    fail(cb, 5)
    clock.now += 29.9
    assert not cb.available("p", "m") and not cb.allow("p", "m")
    clock.now += 0.2
    assert cb.state("p", "m") == "half_open"
    assert cb.allow("p", "m")  # the probe
    assert not cb.allow("p", "m")  # only one at a time
    cb.record_success("p", "m")
    assert cb.state("p", "m") == "closed"
    assert cb.allow("p", "m") and cb.allow("p", "m")


def test_failed_probes_double_the_ejection_up_to_300_s() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    fail(cb, 5)
    for expected in (30.0, 60.0, 120.0, 240.0, 300.0, 300.0):
        opened = clock.now
        clock.now = opened + expected - 0.1
        assert not cb.allow("p", "m"), expected
        clock.now = opened + expected + 0.1
        assert cb.allow("p", "m"), expected  # probe granted
        cb.record_failure("p", "m")  # and it fails: ejected again, for twice as long
        assert cb.state("p", "m") == "open"


def test_new_ejection_after_recovery_doubles_and_healthy_time_forgets() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    fail(cb, 5)  # 30 s
    clock.now += 31
    assert cb.allow("p", "m")
    cb.record_success("p", "m")
    fail(cb, 5)  # ejected again soon after: 60 s
    assert cb.reopens_at("p", "m") == clock.now + 60
    clock.now += 61
    assert cb.allow("p", "m")
    cb.record_success("p", "m")
    clock.now += 120  # four healthy base intervals forget both doublings
    fail(cb, 5)
    assert cb.reopens_at("p", "m") == clock.now + 30


def test_released_probe_lets_the_next_request_probe() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    fail(cb, 5)
    clock.now += 31
    assert cb.allow("p", "m")
    cb.release("p", "m")  # e.g. the client went away before an answer
    assert cb.allow("p", "m")


def test_lost_probe_is_given_up_after_the_probe_timeout() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock, probe_timeout_s=10)
    fail(cb, 5)
    clock.now += 31
    assert cb.allow("p", "m")
    clock.now += 9
    assert not cb.allow("p", "m")
    clock.now += 2
    assert cb.allow("p", "m")


def test_failures_while_open_do_not_extend_the_ejection() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    fail(cb, 5)
    until = cb.reopens_at("p", "m")
    clock.now += 10
    fail(cb, 3)  # last-resort attempts at the ejected pair
    assert cb.reopens_at("p", "m") == until


def test_pairs_are_independent_per_provider_and_model() -> None:
    cb = CircuitBreakers(clock=Clock())
    fail(cb, 5, "a", "m")
    assert cb.state("a", "m") == "open"
    assert cb.state("b", "m") == "closed"
    assert cb.state("a", "other") == "closed"


def test_states_lists_every_pair_for_the_metrics_collector() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    fail(cb, 5, "a", "x")
    fail(cb, 1, "b", "y")
    fail(cb, 5, "c", "z")
    clock.now += 29
    assert sorted(cb.states()) == [("a", "x", "open"), ("b", "y", "closed"), ("c", "z", "open")]
    clock.now += 2
    assert ("a", "x", "half_open") in cb.states()


def test_order_puts_ejected_models_last_soonest_reopening_first() -> None:
    clock = Clock()
    cb = CircuitBreakers(clock=clock)
    a, b, c, d = (_model(ModelConfig(id=i, provider="p", upstream=i)) for i in "abcd")
    fail(cb, 5, "p", "a")  # reopens at +30
    clock.now += 10
    fail(cb, 5, "p", "c")  # reopens at +40
    clock.now += 10
    fail(cb, 5, "p", "d")  # reopens at +50
    clock.now += 5
    assert [m.id for m in cb.order([d, c, b, a])] == ["b", "a", "c", "d"]
    clock.now += 10  # +35: a is ready for its probe, so it counts as available
    assert [m.id for m in cb.order([d, c, a, b])] == ["a", "b", "c", "d"]
