"""From the `model` a client names to the ordered list of models to try."""

from __future__ import annotations

from .catalog import Catalog, Model, ModelNotFound
from .config import PolicyConfig
from .errors import ModelNotFoundError


class Route:
    """The models to try, in order, and how hard to try each."""

    __slots__ = ("models", "retries", "deadline_s", "policy")

    def __init__(
        self, models: list[Model], retries: int = 0, deadline_s: float = 0.0, policy: str | None = None
    ) -> None:
        self.models = models
        self.retries = retries
        self.deadline_s = deadline_s
        self.policy = policy


class Router:
    def __init__(self, catalog: Catalog, policies: dict[str, PolicyConfig]) -> None:
        self.catalog = catalog
        self.policies = policies

    def resolve(self, model_id: str, fallbacks: list[str] | None = None, kind: str = "chat") -> Route:
        if model_id.startswith("policy/"):
            name = model_id[7:]
            policy = self.policies.get(name)
            if policy is None:
                raise ModelNotFoundError(f"The policy `{name}` does not exist.", param="model")
            models = [self._model(m, kind) for m in policy.models]
            return Route(models, policy.retries, policy.deadline_s, name)
        models = [self._model(model_id, kind)]
        for extra in fallbacks or ():
            if extra != model_id:
                models.append(self._model(extra, kind))
        return Route(models)

    def _model(self, model_id: str, kind: str) -> Model:
        try:
            model = self.catalog.get(model_id)
        except ModelNotFound as e:
            raise ModelNotFoundError(e.message, param="model") from None
        if model.kind != kind:
            raise ModelNotFoundError(
                f"The model `{model_id}` is an {model.kind} model and cannot serve this endpoint.",
                param="model",
            )
        return model
