"""Per-model speed, as moving averages, for the `latency` strategy.

Each successful answer is one observation: time to first token and tokens per second of
the generation after it. Both are exponentially weighted moving averages (`alpha` = 0.2:
about the last ten answers matter), so a model that slows down drops in the ranking
within a few requests.

A model is ranked by the time it would take to answer `ref_tokens` tokens:
`ttft + ref_tokens / tokens_per_second`. A model with fewer than `min_samples` recent
observations (none within `stale_s`) is "cold": it is tried first, optimistically, so a
new or recovered model gets measured instead of being starved by one that merely has
data. Cold models keep their configured order; failures are not observed here (the
circuit breakers and the fallback order deal with them).

What to pass to `observe`: for a stream, the time from the start of the successful
attempt to its first event (`ttft_s`), and to its last (`duration_s`). A non-streamed
answer has no visible first token: pass `ttft_s=None` and the attempt's duration. It is
split with the model's current tokens/s (time to first token = duration - tokens / rate);
before any rate is known it is taken as all generation (a rate of tokens / duration), so
non-streamed traffic alone still ranks models by how long they take per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from ..catalog import Model

ALPHA: Final = 0.2
MIN_SAMPLES: Final = 3
STALE_S: Final = 300.0
REF_TOKENS: Final = 256
# Below this a generation phase is too short to give a meaningful rate.
_MIN_GENERATION_S: Final = 0.05

M = TypeVar("M", bound=Model)


class _Stats:
    __slots__ = ("last", "samples", "tps", "ttft")

    def __init__(self) -> None:
        self.ttft = 0.0
        self.tps: float | None = None
        self.samples = 0
        self.last = 0.0


def _ewma(old: float, new: float, n: int) -> float:
    # The first sample is taken as is; averaging it with a made-up prior would bias it.
    return new if n == 0 else old + ALPHA * (new - old)


class LatencyTracker:
    __slots__ = ("_clock", "_stats", "min_samples", "ref_tokens", "stale_s")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_samples: int = MIN_SAMPLES,
        stale_s: float = STALE_S,
        ref_tokens: int = REF_TOKENS,
    ) -> None:
        self._stats: dict[str, _Stats] = {}
        self._clock = clock
        self.min_samples = min_samples
        self.stale_s = stale_s
        self.ref_tokens = ref_tokens

    def observe(self, model_id: str, ttft_s: float | None, tokens: int, duration_s: float) -> None:
        """One successful answer: `tokens` tokens in `duration_s`, the first after `ttft_s`
        (None for a non-streamed answer)."""
        now = self._clock()
        s = self._stats.get(model_id)
        if s is None or now - s.last > self.stale_s:
            s = self._stats[model_id] = _Stats()  # old numbers say nothing about now
        rate: float | None = None
        if ttft_s is None:
            if s.tps:
                ttft_s = max(0.0, duration_s - max(0, tokens - 1) / s.tps)
            else:
                ttft_s = 0.0
                if tokens > 0 and duration_s > 0:
                    rate = tokens / duration_s
        else:
            generation = duration_s - ttft_s
            if tokens > 1 and generation >= _MIN_GENERATION_S:
                rate = (tokens - 1) / generation  # the first token came with the TTFT
        s.ttft = _ewma(s.ttft, max(0.0, ttft_s), s.samples)
        if rate is not None:
            s.tps = rate if s.tps is None else s.tps + ALPHA * (rate - s.tps)
        s.samples += 1
        s.last = now

    def expected_s(self, model_id: str) -> float | None:
        """Expected seconds to answer `ref_tokens` tokens, or None while the model is cold."""
        s = self._stats.get(model_id)
        if s is None or s.samples < self.min_samples or self._clock() - s.last > self.stale_s:
            return None
        return s.ttft + (self.ref_tokens / s.tps if s.tps else 0.0)

    def rank(self, models: Iterable[M]) -> list[M]:
        """Cold models first (configured order), then the measured ones, fastest first."""
        cold: list[M] = []
        warm: list[tuple[float, int, M]] = []
        for i, m in enumerate(models):
            expected = self.expected_s(m.id)
            if expected is None:
                cold.append(m)
            else:
                warm.append((expected, i, m))
        warm.sort(key=lambda t: (t[0], t[1]))
        return cold + [m for _, _, m in warm]

    def snapshot(self) -> dict[str, tuple[float, float | None, int]]:
        """model id → (TTFT EWMA s, tokens/s EWMA, samples), for metrics and debugging."""
        return {mid: (s.ttft, s.tps, s.samples) for mid, s in self._stats.items()}
