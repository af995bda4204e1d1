"""Schemathesis hooks for the seed spec's run in tests/test_schemathesis.py.

The seed spec types a streamed answer (`text/event-stream`) as `type: string`: the whole
body. Schemathesis 4 reads an event-stream schema as the schema of each event (OpenAPI
3.2's reading), so every stream would fail against a schema the seed never meant per
event. The seed's response schemas are checked on plain answers; the served spec
(schemas/openapi.yaml) documents the per-event shape and its run covers streams.
"""

from __future__ import annotations

from typing import Any

import schemathesis
import schemathesis_hooks  # noqa: F401 - the shared rules (usage window, expiry) register too
from schemathesis import Case, HookContext


@schemathesis.hook("before_call")
def answer_in_one_body(ctx: HookContext, case: Case[Any], kwargs: dict[str, Any]) -> None:
    if case.operation.path == "/chat/completions" and isinstance(case.body, dict):
        case.body.pop("stream", None)
