"""From the `model` a client names to the models that may serve it, and how to try them.

`Router.resolve` answers with a `Route`: the candidate models in their configured order,
the strategy that orders them per request (`fallback`, `loadbalance`, `latency`), the
loadbalance weights, the retries per step and the routing deadline. Ordering a route for
one request (stickiness, latency ranking, circuit state) is `proxy.routing.plan`'s job.

- `model = "policy/<name>"`: the policy's models. Members whose provider is not allowed in
  this instance's region are dropped (an EU instance may share its policies with a global
  one); the policy is refused with 404 only when none is left.
- any other `model`: that model, then the request's own `models: [...]` list as fallbacks
  (OpenRouter's convention), without duplicates; each must exist and be served here.
"""

from __future__ import annotations

from typing import Final

from ..catalog import Catalog, Model, ModelNotFound
from ..config import PolicyConfig, Strategy
from ..errors import ModelNotFoundError

POLICY_PREFIX: Final = "policy/"


class Route:
    """The candidate models, in configured order, and how hard to try each.

    `weights` is aligned with `models` (loadbalance only; None means equal weights).
    `deadline_s <= 0` means no routing deadline: only the per-provider timeouts bound it.
    """

    __slots__ = ("deadline_s", "models", "policy", "retries", "strategy", "weights")

    def __init__(
        self,
        models: list[Model],
        retries: int = 0,
        deadline_s: float = 0.0,
        policy: str | None = None,
        strategy: Strategy = "fallback",
        weights: tuple[float, ...] | None = None,
    ) -> None:
        if weights is not None and len(weights) != len(models):
            raise ValueError("a route needs one weight per model")
        self.models = models
        self.retries = retries
        self.deadline_s = deadline_s
        self.policy = policy
        self.strategy: Strategy = strategy
        self.weights = weights


class Router:
    def __init__(self, catalog: Catalog, policies: dict[str, PolicyConfig]) -> None:
        self.catalog = catalog
        self.policies = policies

    def resolve(
        self, model_id: str, fallbacks: list[str] | None = None, kind: str = "chat"
    ) -> Route:
        if model_id.startswith(POLICY_PREFIX):
            return self._policy(model_id[len(POLICY_PREFIX):], kind)
        models = [self._model(model_id, kind)]
        seen = {model_id}
        for extra in fallbacks or ():
            if extra not in seen:
                seen.add(extra)
                models.append(self._model(extra, kind))
        return Route(models)

    def _policy(self, name: str, kind: str) -> Route:
        policy = self.policies.get(name)
        if policy is None:
            raise ModelNotFoundError(f"The policy `{name}` does not exist.", param="model")
        models: list[Model] = []
        weights: list[float] = []
        first_problem = ""
        for i, mid in enumerate(policy.models):
            try:
                models.append(self._model(mid, kind))
            except ModelNotFoundError as e:
                first_problem = first_problem or e.message
                continue
            if policy.weights is not None:
                weights.append(policy.weights[i])
        if not models:
            raise ModelNotFoundError(
                f"The policy `{name}` has no model available here: {first_problem}", param="model"
            )
        return Route(
            models,
            retries=policy.retries,
            deadline_s=policy.deadline_s,
            policy=name,
            strategy=policy.strategy,
            weights=tuple(weights) if policy.weights is not None else None,
        )

    def _model(self, model_id: str, kind: str) -> Model:
        try:
            model = self.catalog.get(model_id)
        except ModelNotFound as e:
            raise ModelNotFoundError(e.message, param="model") from None
        if model.kind != kind:
            raise ModelNotFoundError(
                f"The model `{model_id}` serves {model.kind} requests, not this endpoint.",
                param="model",
            )
        return model
