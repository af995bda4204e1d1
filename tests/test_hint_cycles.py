"""Modules that needed each other only for a type hint no longer import each other under
`TYPE_CHECKING`: every annotation resolves at run time, whichever module is imported first."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from proxy.auth import Authenticator
from proxy.providers.h1.response import Response


def test_the_authenticators_key_registry_hint_resolves_at_run_time() -> None:
    hints = typing.get_type_hints(Authenticator.__init__)
    assert hints["keys"].__args__[0].__name__ == "KeyRegistry"


def test_a_responses_pool_hint_resolves_at_run_time() -> None:
    hints = typing.get_type_hints(Response.__init__)
    pool = hints["pool"]
    assert {"put", "max_body_bytes"} <= set(dir(pool))


@pytest.mark.parametrize("first, second", [("proxy.keys", "proxy.auth"),
                                           ("proxy.auth", "proxy.keys"),
                                           ("proxy.providers.h1.response",
                                            "proxy.providers.h1.pool")])
def test_either_import_order_works(first: str, second: str) -> None:
    code = f"import {first}, {second}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
