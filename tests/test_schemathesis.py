"""The served API and its spec agree: schemathesis over schemas/openapi.yaml finds nothing.

Schemathesis (its CLI, in a subprocess, so this test's event loop keeps serving the real
gateway) generates requests from the spec with a fixed seed and a small number of
examples per operation, and checks each answer: no 5xx, every status, header, content
type and body documented, every schema-valid request accepted. It runs once with an
admin key and once with a user key with a spend limit and rate limits (its key-management
calls must get the documented 403/404, its answers the documented limit headers and 429s).
The seed spec (schemas/requesty-openapi.yml, a copy of the shared contract's) gets its
response-schema check.

To explore further than the suite does, raise the examples and change the seed:
`ST_MAX_EXAMPLES=200 ST_SEED=7 pytest tests/test_schemathesis.py`.
tests/schemathesis_hooks.py names the rules the spec can only state in words, and drops
only the 400s that enforce them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
from harness import ADMIN_KEY, Gateway, gateway_settings, running_gateway

# Gateway worker processes or subprocesses: skipped by the quick run (-m "not slow").
pytestmark = pytest.mark.slow

TESTS: Final = Path(__file__).resolve().parent
SERVED_SPEC: Final = TESTS.parent / "schemas" / "openapi.yaml"
SEED_SPEC: Final = TESTS.parent / "schemas" / "requesty-openapi.yml"
CHECKS: Final = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,positive_data_acceptance"
)
SEED: Final = int(os.environ.get("ST_SEED", "20261205"))
MAX_EXAMPLES: Final = int(os.environ.get("ST_MAX_EXAMPLES", "20"))
RUN_TIMEOUT_S: Final = 300.0

# Only the simulated provider answers, so no request depends on a network; the spec's
# default model (`openai/gpt-4o-mini`) is one of its models, so generated requests that
# keep the default get a real answer rather than a 404.
CATALOG: Final = """
include_default_catalog = false
default_model = "openai/gpt-4o-mini"

[providers.simulated]
protocol = "simulated"

[[models]]
id = "openai/gpt-4o-mini"
provider = "simulated"
upstream = "gpt-4o-mini"
input_price = 0.15
output_price = 0.60

[[models]]
id = "simulated/embed"
provider = "simulated"
upstream = "sim-embed"
kind = "embedding"
input_price = 0.02
output_price = 0.0
"""


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(gateway_settings(tmp_path, CATALOG)) as g:
        yield g


async def schemathesis(
    spec: Path, gw: Gateway, key: str, checks: str, hooks: str, workdir: Path
) -> tuple[int, str]:
    """Run `st run` over `spec` against the gateway; its exit code and its report."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": hooks,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(TESTS), os.environ.get("PYTHONPATH")))),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", str(spec),
        "--url", gw.url + "/v1",
        "--header", f"Authorization: Bearer {key}",
        "--checks", checks,
        "--phases", "examples,coverage,fuzzing",
        "--seed", str(SEED),
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
        cwd=workdir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_schemathesis_finds_nothing_in_the_served_spec_with_an_admin_key(
    gw: Gateway, tmp_path: Path
) -> None:
    code, report = await schemathesis(SERVED_SPEC, gw, ADMIN_KEY, CHECKS, "schemathesis_hooks",
                                      tmp_path)
    assert code == 0, report


async def test_schemathesis_finds_nothing_in_the_served_spec_with_a_user_key(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Limits on, so answers carry the rate-limit headers and some run into a 429.
    resp = await http.post(gw.url + "/v1/api-keys", headers=gw.headers, json={
        "name": "schemathesis", "limit": 0.0005, "rpm": 100_000, "tpm": 10_000_000})
    assert resp.status == 200, await resp.text()
    user_key = (await resp.json())["key"]
    code, report = await schemathesis(SERVED_SPEC, gw, user_key, CHECKS, "schemathesis_hooks",
                                      tmp_path)
    assert code == 0, report


async def test_answers_match_the_seed_specs_response_schemas(gw: Gateway, tmp_path: Path) -> None:
    code, report = await schemathesis(SEED_SPEC, gw, ADMIN_KEY,
                                      "response_schema_conformance,not_a_server_error",
                                      "schemathesis_seed_hooks", tmp_path)
    assert code == 0, report
