"""schemas/openapi.yaml describes what the gateway serves: the seed spec, extended, not broken."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from harness import gateway_settings

from proxy.app import build_app

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT.parent / "shared" / "contract" / "requesty-openapi.yml"


def served_spec() -> dict:
    return yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())


def test_every_v1_route_is_in_the_spec(tmp_path: Path) -> None:
    app = build_app(gateway_settings(tmp_path))
    routes = {
        (r.method.lower(), r.resource.canonical.removeprefix("/v1"))
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/v1/")
        and r.method != "HEAD"  # aiohttp adds HEAD to every GET
    }
    spec = served_spec()
    documented = {
        (method, path)
        for path, item in spec["paths"].items() for method in item
    }
    assert routes <= documented, routes - documented


def test_key_fields_the_api_accepts_are_documented() -> None:
    props = served_spec()["components"]["schemas"]["CreateApiKeyRequest"]["properties"]
    for name in ("name", "limit", "limit_period", "labels", "expiry", "role", "rpm", "tpm",
                 "owner", "cache"):
        assert name in props, name


def test_the_seed_spec_is_extended_not_broken() -> None:
    if not SEED.exists():
        pytest.skip("the shared contract is not beside this checkout (it is on CI and dev machines)")
    seed = yaml.safe_load(SEED.read_text())
    served = served_spec()
    for path, item in seed["paths"].items():
        for method in item:
            assert method in served["paths"][path], (method, path)
    for name, schema in seed["components"]["schemas"].items():
        for prop in schema.get("properties", {}):
            assert prop in served["components"]["schemas"][name]["properties"], (name, prop)
