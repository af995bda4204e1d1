"""schemas/openapi.yaml describes what the gateway serves: the seed spec, extended, not broken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml
from harness import gateway_settings, running_gateway

from proxy.app import build_app

ROOT = Path(__file__).resolve().parent.parent
# The seed spec, copied into the repository so a clean clone tests against it; the shared
# contract beside a checkout (on dev machines and CI) must still be the same file.
SEED = ROOT / "schemas" / "requesty-openapi.yml"
SHARED_SEED = ROOT.parent / "shared" / "contract" / "requesty-openapi.yml"


def served_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())
    return spec


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
    if SHARED_SEED.exists():
        assert SEED.read_bytes() == SHARED_SEED.read_bytes(), "schemas/ holds a stale seed copy"
    seed = yaml.safe_load(SEED.read_text())
    served = served_spec()
    for path, item in seed["paths"].items():
        for method in item:
            assert method in served["paths"][path], (method, path)
    for name, schema in seed["components"]["schemas"].items():
        for prop in schema.get("properties", {}):
            assert prop in served["components"]["schemas"][name]["properties"], (name, prop)


def test_the_spec_and_the_server_agree_that_messages_may_not_be_empty() -> None:
    schema = served_spec()["components"]["schemas"]["CreateChatCompletionRequest"]
    assert schema["properties"]["messages"]["minItems"] == 1


async def test_messages_empty_is_refused_as_the_spec_says(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        resp = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers,
                               json={"model": "simulated/chat", "messages": []})
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "messages"


async def test_a_key_without_limit_or_expiry_leaves_them_out_as_the_seed_spec_types_them(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    seed_key = yaml.safe_load(SEED.read_text())["components"]["schemas"]["ApiKey"]["properties"]
    assert "nullable" not in seed_key["limit"] and "nullable" not in seed_key["expiry"]
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        made = await (await http.post(gw.url + "/v1/api-keys", headers=gw.headers,
                                      json={"name": "plain"})).json()
        listed = await (await http.get(gw.url + "/v1/api-keys", headers=gw.headers)).json()
        unlimited = await (await http.patch(gw.url + f"/v1/api-keys/{made['id']}/limit",
                                            headers=gw.headers, json={"limit": None})).json()
        for view in (made, *listed["data"], unlimited):
            assert "limit" not in view and "expiry" not in view, view
        limited = await (await http.patch(gw.url + f"/v1/api-keys/{made['id']}/limit",
                                          headers=gw.headers, json={"limit": 5})).json()
        assert limited["limit"] == 5
