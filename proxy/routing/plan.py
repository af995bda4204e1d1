"""One request's try order: `plan(route, ...) -> list[Step]`.

- fallback: the route's models as configured (a plain model and its `models: [...]`
  fallbacks are a fallback route too).
- loadbalance: one model drawn by weight, the others after it as fallbacks, themselves in
  weighted-random order. With a sticky id (`requesty.trace_id`, else `requesty.user_id`)
  the draw is weighted rendezvous hashing (HRW) of the id instead of random: the same id
  keeps the same model in every process and instance, and changing one model's weight or
  ejecting it only moves the ids that must move. A zero weight makes a model a fallback
  only.
- latency: `LatencyTracker.rank` (cold models first, then fastest measured).

Then, whatever the strategy, models whose circuit is open go last (`CircuitBreakers.order`),
so an ejected sticky choice hands its ids to their next HRW choice.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Final, NamedTuple

from ..catalog import Model
from .resolve import Route
from ..wire import RequestyMeta
from .circuit import CircuitBreakers
from .latency import LatencyTracker

_TWO_64: Final = float(2**64)


class Step(NamedTuple):
    """Try `model` once, and again up to `retries` more times on errors worth retrying."""

    model: Model
    retries: int


def sticky_key(meta: RequestyMeta) -> str | None:
    """The id that pins a request to one model under loadbalance, if the request has one."""
    return meta.trace_id or meta.user_id or None


def _unit_hash(key: str, model_id: str) -> float:
    """A stable number in (0, 1) for (key, model): the same in every process and release."""
    digest = hashlib.blake2b(f"{key}\x00{model_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO_64


def weighted_order(
    models: Sequence[Model],
    weights: Sequence[float] | None,
    key: str | None,
    rng: random.Random,
) -> list[Model]:
    """Models ordered by weighted draw without replacement; hashed on `key` when given.

    Each model scores -w / ln(u), u uniform in (0, 1) (from the hash or from `rng`), and
    the highest score goes first: the first place goes to model i with probability
    w_i / sum(w), and with a hashed u that choice is stable per key (weighted HRW).
    """
    if weights is None or not any(w > 0 for w in weights):
        weights = [1.0] * len(models)
    scored: list[tuple[float, int, Model]] = []
    for i, (m, w) in enumerate(zip(models, weights, strict=True)):
        if w <= 0:
            score = -math.inf  # fallback only, in configured order after the weighted ones
        else:
            u = _unit_hash(key, m.id) if key is not None else 1.0 - rng.random()
            score = -w / math.log(u) if u < 1.0 else math.inf
        scored.append((score, -i, m))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [m for _, _, m in scored]


def plan(
    route: Route,
    *,
    sticky: str | None = None,
    breakers: CircuitBreakers | None = None,
    latency: LatencyTracker | None = None,
    rng: random.Random | None = None,
) -> list[Step]:
    """The steps to try for one request, in order (never empty: a route has a model)."""
    models: list[Model]
    if route.strategy == "loadbalance":
        models = weighted_order(route.models, route.weights, sticky, rng or random.Random())
    elif route.strategy == "latency" and latency is not None:
        models = latency.rank(route.models)
    else:
        models = list(route.models)
    if breakers is not None:
        models = breakers.order(models)
    return [Step(m, route.retries) for m in models]
