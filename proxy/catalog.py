"""Models, prices and regions; cost in integer nano-USD.

Prices are configured in USD per million tokens. Inside, each price is an integer number
of nano-USD per million tokens, so one request's cost is an exact integer division and
sums of costs (counters, ledger, rollups) never drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from .config import ModelConfig, ProviderConfig, Settings

NANO: Final = 1_000_000_000  # nano-USD per USD
_PER_MILLION: Final = 1_000_000
# The most tokens one call is believed to count when the catalog gives no context window:
# far above any model's, and small enough that cost, counters and ledger columns (64-bit)
# can never overflow.
MAX_CALL_TOKENS: Final = 2**31 - 1


def usd_to_nano(usd: float) -> int:
    return round(usd * NANO)


def nano_to_usd(nano: int) -> float:
    return nano / NANO


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of one call, in the gateway's own terms.

    `prompt_tokens` includes cached and cache-write tokens, as OpenAI reports it; the
    cost splits them out again.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # prompt tokens written to it (Anthropic)
    estimated: bool = False  # counted by the gateway, not reported by the provider

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    provider: str
    upstream: str
    kind: str
    owned_by: str
    context_window: int
    max_output_tokens: int
    # nano-USD per million tokens
    input_nano: int
    output_nano: int
    cached_input_nano: int
    cache_write_nano: int
    input_price: float
    output_price: float
    publisher: str | None = None  # vertex only: `google` or `anthropic`; None: by upstream id

    def cost(self, usage: Usage) -> int:
        """Cost in nano-USD, rounded half up once per request."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        fresh = usage.prompt_tokens - cached - written
        total = (
            fresh * self.input_nano
            + cached * self.cached_input_nano
            + written * self.cache_write_nano
            + usage.completion_tokens * self.output_nano
        )
        return (total + _PER_MILLION // 2) // _PER_MILLION

    def plausible(self, usage: Usage, max_tokens: int | None, inputs: int = 1) -> bool:
        """Whether usage a provider reported can be true of one call: no count negative, the
        prompt within the context window (per input, for embeddings), the cached and
        cache-write parts within the prompt, the completion within the request's output
        cap (`max_tokens`; without one, the window, as the catalog's output limit may be
        set low). Anything else is treated as unreported: the gateway estimates it."""
        window = self.context_window or MAX_CALL_TOKENS
        if self.kind == "embedding":
            out_cap = 0
        elif max_tokens:
            out_cap = max_tokens
        else:  # comparisons, not max(): this runs two or three times a request
            out_cap = (window if window >= self.max_output_tokens
                       else self.max_output_tokens)
        prompt = usage.prompt_tokens
        return (0 <= prompt <= (window * inputs if inputs > 1 else window)
                and 0 <= usage.completion_tokens <= out_cap
                and 0 <= usage.cached_tokens <= prompt
                and 0 <= usage.cache_write_tokens <= prompt)

    def worst_case_cost(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """What to reserve before the call: the most it can cost.

        `prompt_tokens` is the gateway's estimate (about 4 characters a token); real
        tokenizers count more for code and many languages, so 1.5 times it is reserved.
        """
        out = max_tokens if max_tokens and max_tokens > 0 else self.max_output_tokens
        prompt = prompt_tokens + prompt_tokens // 2
        total = prompt * max(self.input_nano, self.cache_write_nano) + out * self.output_nano
        return (total + _PER_MILLION - 1) // _PER_MILLION


def _model(cfg: ModelConfig) -> Model:
    def nano(price: float | None, fallback: float) -> int:
        return usd_to_nano(fallback if price is None else price)

    return Model(
        id=cfg.id,
        provider=cfg.provider,
        upstream=cfg.upstream,
        kind=cfg.kind,
        owned_by=cfg.provider,
        context_window=cfg.context_window,
        max_output_tokens=cfg.max_output_tokens,
        input_nano=nano(cfg.input_price, 0),
        output_nano=nano(cfg.output_price, 0),
        cached_input_nano=nano(cfg.cached_input_price, cfg.input_price),
        cache_write_nano=nano(cfg.cache_write_price, cfg.input_price),
        input_price=cfg.input_price,
        output_price=cfg.output_price,
        publisher=cfg.publisher,
    )


class ModelNotFound(Exception):
    def __init__(self, model_id: str, message: str) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.message = message


class Catalog:
    """The models this instance may serve, given its region."""

    __slots__ = ("_all", "_served", "providers", "region")

    def __init__(self, settings: Settings) -> None:
        self.region = settings.region
        self.providers: dict[str, ProviderConfig] = dict(settings.providers)
        self._all = {m.id: _model(m) for m in settings.models}
        # Aliases (config `aliases`, checked unique at load) resolve to their model.
        for cfg in settings.models:
            for alias in cfg.aliases:
                self._all.setdefault(alias, self._all[cfg.id])
        self._served = {
            mid: m
            for mid, m in self._all.items()
            if settings.region in self.providers[m.provider].regions
        }

    def get(self, model_id: str) -> Model:
        model = self._served.get(model_id)
        if model is not None:
            return model
        if model_id in self._all:
            raise ModelNotFound(
                model_id,
                f"The model `{model_id}` is not available in region `{self.region}`: "
                "its provider is not allowed there.",
            )
        raise ModelNotFound(model_id, f"The model `{model_id}` does not exist in the catalog.")

    def served(self) -> list[Model]:
        """Each served model once (aliases are other names for these)."""
        return [m for mid, m in self._served.items() if mid == m.id]
