"""Routing: which models to try for a request, in what order, how often, and their health.

Pieces (each usable and tested alone):

- `resolve.Router.resolve(model, fallbacks) -> Route`: from the `model` a client names to
  the candidate models, their strategy, weights, retries and deadline (config only).
- `plan.plan(route, sticky=, breakers=, latency=, rng=) -> list[Step]`: the try order
  for the route's strategy (fallback, loadbalance, latency), ejected models last.
- `attempts.run_attempts(steps, attempt, log, deadline_s=, ...) -> T`: the attempt loop
  (retries with backoff, Retry-After, fallthrough, deadline, circuit bookkeeping).
- `circuit.CircuitBreakers`: per (provider, model) outlier ejection; `states()` for metrics.
- `latency.LatencyTracker`: moving averages of TTFT and tokens/s per model.
- `backoff.delay` / `backoff.retry_wait`: the retry schedule.
- `engine.Routing`: one per process, holding the circuits and latency state, with `plan`,
  `run`, `observe` and `stream_failed`. This is what the chat handler calls.

In the chat handler (one `Routing` on the gateway as `gw.routing`):

    route = gw.router.resolve(req.model_id, req.fallbacks)
    steps = gw.routing.plan(route, req.meta)
    log = AttemptLog()

    async def attempt(model: Model) -> Completion:        # non-streamed
        return await gw.provider(model.provider).chat(call_for(model))

    completion = await gw.routing.run(steps, attempt, log, deadline_s=route.deadline_s)
    gw.routing.observe(log, completion_tokens, stream=False)
    # log.model served; log.attempts and log.failures go to the usage record.

For a stream the attempt opens the stream and waits for its first event (returning the
open stream); piping the rest happens after `run` returns, without retries. Then
`gw.routing.observe(log, tokens, stream=True)` when it ended well, or
`gw.routing.stream_failed(log, error)` when it broke mid-way.
"""

from .attempts import Action, AttemptLog, Failure, run_attempts
from .circuit import CircuitBreakers
from .engine import Routing
from .latency import LatencyTracker
from .plan import Step, plan, sticky_key, weighted_order
from .resolve import Route, Router

__all__ = [
    "Action",
    "AttemptLog",
    "CircuitBreakers",
    "Failure",
    "LatencyTracker",
    "Route",
    "Router",
    "Routing",
    "Step",
    "plan",
    "run_attempts",
    "sticky_key",
    "weighted_order",
]
