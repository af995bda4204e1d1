"""Each policy's try order: fallback, loadbalance (weighted, sticky), latency, circuits."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from proxy.catalog import Catalog, Model, _model
from proxy.config import ModelConfig, PolicyConfig, load_settings
from proxy.errors import ModelNotFoundError
from proxy.routing.resolve import Route, Router
from proxy.routing import CircuitBreakers, LatencyTracker, Routing, Step, plan, sticky_key
from proxy.routing.plan import weighted_order
from proxy.wire import RequestyMeta


def models(*ids: str, provider: str = "p") -> list[Model]:
    return [_model(ModelConfig(id=i, provider=provider, upstream=i)) for i in ids]


def ids(steps: list[Step]) -> list[str]:
    return [s.model.id for s in steps]


def test_fallback_keeps_the_configured_order_with_retries_per_step() -> None:
    route = Route(models("a", "b", "c"), retries=2, strategy="fallback")
    steps = plan(route)
    assert ids(steps) == ["a", "b", "c"]
    assert [s.retries for s in steps] == [2, 2, 2]


def test_loadbalance_first_choice_follows_the_weights() -> None:
    route = Route(models("a", "b", "c"), strategy="loadbalance", weights=(6.0, 3.0, 1.0))
    rng = random.Random(42)
    firsts = Counter(plan(route, rng=rng)[0].model.id for _ in range(20_000))
    assert firsts["a"] / 20_000 == pytest.approx(0.6, abs=0.015)
    assert firsts["b"] / 20_000 == pytest.approx(0.3, abs=0.015)
    assert firsts["c"] / 20_000 == pytest.approx(0.1, abs=0.015)


def test_loadbalance_lists_every_other_model_as_a_fallback() -> None:
    route = Route(models("a", "b", "c"), strategy="loadbalance", weights=(1.0, 1.0, 1.0))
    for seed in range(20):
        assert sorted(ids(plan(route, rng=random.Random(seed)))) == ["a", "b", "c"]


def test_loadbalance_zero_weight_is_a_fallback_only() -> None:
    route = Route(models("a", "b", "z"), strategy="loadbalance", weights=(1.0, 1.0, 0.0))
    for seed in range(200):
        assert ids(plan(route, rng=random.Random(seed)))[-1] == "z"
    sticky = [ids(plan(route, sticky=f"user-{i}"))[-1] for i in range(200)]
    assert set(sticky) == {"z"}


def test_loadbalance_sticky_id_keeps_the_same_model() -> None:
    route = Route(models("a", "b", "c"), strategy="loadbalance", weights=(1.0, 1.0, 1.0))
    for i in range(50):
        orders = {
            tuple(ids(plan(route, sticky=f"trace-{i}", rng=random.Random(s)))) for s in range(5)
        }
        assert len(orders) == 1  # the random source plays no part


def test_loadbalance_sticky_ids_spread_by_weight() -> None:
    route = Route(models("a", "b"), strategy="loadbalance", weights=(3.0, 1.0))
    firsts = Counter(plan(route, sticky=f"user-{i}")[0].model.id for i in range(20_000))
    assert firsts["a"] / 20_000 == pytest.approx(0.75, abs=0.015)


def test_sticky_hash_moves_only_the_ids_of_a_removed_model() -> None:
    three = models("a", "b", "c")
    rng = random.Random()

    def first(ms: list[Model], i: int) -> str:
        return weighted_order(ms, None, f"u{i}", rng)[0].id

    before = {i: first(three, i) for i in range(3000)}
    after = {i: first(three[:2], i) for i in range(3000)}
    assert all(after[i] == before[i] for i in before if before[i] != "c")


def test_sticky_key_prefers_trace_id_then_user_id() -> None:
    assert sticky_key(RequestyMeta(trace_id="t", user_id="u")) == "t"
    assert sticky_key(RequestyMeta(user_id="u")) == "u"
    assert sticky_key(RequestyMeta()) is None


def test_ejected_sticky_choice_hands_over_to_its_next_choice() -> None:
    ms = models("a", "b", "c")
    route = Route(ms, strategy="loadbalance")
    usual = ids(plan(route, sticky="trace-7"))
    cb = CircuitBreakers(clock=lambda: 0.0)
    for _ in range(5):
        cb.record_failure("p", usual[0])
    assert ids(plan(route, sticky="trace-7", breakers=cb)) == usual[1:] + usual[:1]


def test_latency_strategy_orders_by_the_tracker() -> None:
    t = LatencyTracker(clock=lambda: 0.0, min_samples=1)
    t.observe("a", 2.0, 101, 3.0)
    t.observe("b", 0.1, 101, 1.1)
    route = Route(models("a", "b", "c"), strategy="latency")
    assert ids(plan(route, latency=t)) == ["c", "b", "a"]  # c is unmeasured: explored first


def test_fallback_puts_ejected_models_last() -> None:
    cb = CircuitBreakers(clock=lambda: 0.0)
    for _ in range(5):
        cb.record_failure("p", "a")
    assert ids(plan(Route(models("a", "b", "c")), breakers=cb)) == ["b", "c", "a"]


def test_routing_facade_plans_with_its_own_state() -> None:
    r = Routing(rng=random.Random(1))
    route = Route(models("a", "b"), strategy="loadbalance")
    meta = RequestyMeta(user_id="alice")
    assert ids(r.plan(route, meta)) == ids(plan(route, sticky="alice"))


# --- Router.resolve: the route a request names ---------------------------------------


def router(policies: dict[str, PolicyConfig], env: dict[str, str] | None = None) -> Router:
    settings = load_settings(env=env or {})
    return Router(Catalog(settings), policies)


def served_chat_ids(region: str = "global") -> list[str]:
    cat = Catalog(load_settings(env={"PROXY_REGION": region}))
    return [m.id for m in cat.served() if m.kind == "chat"]


def test_policy_route_carries_strategy_weights_retries_and_deadline() -> None:
    a, b = served_chat_ids()[:2]
    pol = PolicyConfig(strategy="loadbalance", models=(a, b), weights=(2.0, 1.0), retries=3,
                       deadline_s=30.0)
    route = router({"lb": pol}).resolve("policy/lb")
    assert [m.id for m in route.models] == [a, b]
    assert (route.strategy, route.weights, route.retries, route.deadline_s, route.policy) == (
        "loadbalance", (2.0, 1.0), 3, 30.0, "lb")


def test_request_fallbacks_follow_the_model_without_duplicates() -> None:
    a, b, c = served_chat_ids()[:3]
    route = router({}).resolve(a, [b, a, c, b])
    assert [m.id for m in route.models] == [a, b, c]
    assert route.strategy == "fallback" and route.retries == 0


def test_unknown_fallback_is_refused() -> None:
    a = served_chat_ids()[0]
    with pytest.raises(ModelNotFoundError):
        router({}).resolve(a, ["nope/none"])


def test_policy_drops_members_outside_the_region_and_keeps_weights_aligned() -> None:
    settings = load_settings(env={"PROXY_REGION": "eu"})
    cat = Catalog(settings)
    outside = [
        m.id for m in settings.models
        if cat.region not in settings.providers[m.provider].regions and m.kind == "chat"
    ]
    inside = served_chat_ids("eu")
    if not outside or not inside:
        pytest.skip("the default catalog has no model outside the EU region")
    pol = PolicyConfig(strategy="loadbalance", models=(outside[0], inside[0]), weights=(5.0, 1.0))
    route = Router(cat, {"p": pol}).resolve("policy/p")
    assert [m.id for m in route.models] == [inside[0]] and route.weights == (1.0,)
    only_outside = PolicyConfig(strategy="fallback", models=(outside[0],))
    with pytest.raises(ModelNotFoundError, match="no model available"):
        Router(cat, {"q": only_outside}).resolve("policy/q")


def test_the_config_examples_in_docs_routing_md_load(tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "routing.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) >= 5
    config = tmp_path / "routing.toml"
    config.write_text("\n".join(blocks))
    settings = load_settings(str(config), env={})
    r = Router(Catalog(settings), dict(settings.policies))
    for name in ("cheap-first", "split", "fast"):
        assert r.resolve(f"policy/{name}").policy == name
    assert settings.cache.models == ("openai/gpt-4o-mini",)
