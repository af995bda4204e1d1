"""deploy/: configs, dashboards, alert rules and manifests agree with the gateway."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from harness import ADMIN_KEY, gateway_settings, running_gateway
from ledger_support import usage_record
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import load_settings
from proxy.ledger.postgres import PostgresSink
from proxy.ledger.record import UsageRecord
from proxy.migrate import migrate

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
USER = [{"role": "user", "content": "Say hello"}]
# Counted only when the event happens; the test traffic cannot cause a retry until the
# request path runs the routing engine's attempt loop. Their family must still be exported.
EVENT_ONLY = {"proxy_retries_total"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(apt-get install prometheus)")


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(exprs: list[str]) -> set[str]:
    """The gateway's series a PromQL expression reads (`up` is Prometheus's own)."""
    names: set[str] = set()
    for expr in exprs:
        names.update(re.findall(r"\bproxy_[a-z0-9_]+", _strip_strings(expr)))
    return names


def dashboard_exprs(path: Path) -> list[str]:
    board = json.loads(path.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if "expr" in t]
    for var in board["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_every_metric_a_dashboard_or_alert_uses_is_exported_after_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = metric_names(dashboard_exprs(DASHBOARDS / "operations.json") + alert_exprs())
    assert len(used) > 15
    monkeypatch.setenv("DOWN_KEY", "sk-unused")
    toml = f"""
[providers.down]
protocol = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key_env = "DOWN_KEY"
connect_timeout_s = 1

[[models]]
id = "down/chat"
provider = "down"
upstream = "chat"
"""
    async with running_gateway(gateway_settings(tmp_path, toml)) as gw, \
            aiohttp.ClientSession() as http:
        bodies: list[dict[str, Any]] = [
            {"model": "simulated/chat", "messages": USER},
            {"model": "simulated/chat", "messages": USER, "stream": True},
            {"model": "down/chat", "models": ["simulated/chat"], "messages": USER},  # fallback
            {"model": "down/chat", "messages": USER},  # 502
        ]
        for body in bodies:
            resp = await http.post(gw.url + "/v1/chat/completions", json=body, headers=gw.headers)
            await resp.read()
        resp = await http.post(gw.url + "/v1/embeddings", headers=gw.headers,
                               json={"model": "simulated/embed", "input": "hello"})
        assert resp.status == 200
        text = await (await http.get(gw.url + "/metrics")).text()
    families = list(text_string_to_metric_families(text))
    exported = {s.name for f in families for s in f.samples}
    declared = {f.name + suffix for f in families
                for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    assert used <= declared, f"used but never declared: {sorted(used - declared)}"
    missing = used - exported - EVENT_ONLY  # the request path feeds the request metrics
    assert not missing, f"used but not exported after traffic: {sorted(missing)}"


@needs_promtool
def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(PROMETHEUS / "alerts.yml")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=30, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
def test_scrape_config_passes_promtool_check() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "config", str(PROMETHEUS / "prometheus.yml")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_alerts_cover_errors_latency_ttft_ledger_circuits_and_spend() -> None:
    exprs = " ".join(alert_exprs())
    for name in ("proxy_requests_total", "proxy_request_duration_seconds_bucket",
                 "proxy_time_to_first_token_seconds_bucket", "proxy_ledger_queue_depth",
                 "proxy_ledger_records_spooled_total", "proxy_circuit_state",
                 "proxy_cost_usd_total"):
        assert name in exprs


async def test_eu_config_serves_only_eu_models(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    env = {
        "PROXY_ADMIN_KEY": ADMIN_KEY,
        "PROXY_DATA_DIR": str(tmp_path / "data"),
        "PROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'proxy.db'}",
        "PROXY_REDIS_URL": redis_url,
    }
    settings = load_settings(str(DEPLOY / "eu.toml"), env=env,
                             overrides={"redis_namespace": redis_namespace})
    assert settings.region == "eu"
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        listed = await (await http.get(gw.url + "/v1/models", headers=gw.headers)).json()
        ids = {m["id"] for m in listed["data"]}
        assert "simulated/chat" in ids and "mistral/mistral-small-latest" in ids
        for model_id in ids:
            provider = model_id.split("/", 1)[0]
            assert "eu" in settings.providers[provider].regions, model_id
        assert not any(i.startswith(("openai/", "anthropic/")) for i in ids)
        resp = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers,
                               json={"model": "openai/gpt-4o-mini", "messages": USER})
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert error["code"] == "model_not_found" and "region `eu`" in error["message"]
        resp = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers,
                               json={"model": "simulated/chat", "messages": USER})
        assert resp.status == 200


def test_global_config_loads_with_its_default_model_served() -> None:
    settings = load_settings(str(DEPLOY / "global.toml"), env={})
    assert settings.region == "global"
    assert settings.redis_url and settings.database_url.startswith("postgresql://")
    from proxy.catalog import Catalog

    assert Catalog(settings).get(settings.default_model).provider == "openai"


def _k8s(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "k8s" / name).read_text())
    return doc


def test_k8s_configmap_is_deploy_global_toml() -> None:
    config = _k8s("configmap.yaml")["data"]["gateway.toml"]
    assert config == (DEPLOY / "global.toml").read_text()


def test_k8s_pods_drain_streams_before_being_killed_and_probe_the_right_paths() -> None:
    shutdown_grace = tomllib.loads((DEPLOY / "global.toml").read_text())["shutdown_grace_s"]
    pod = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown_grace
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert container["envFrom"][0]["secretRef"]["name"] == "proxy-secrets"
    assert pod["volumes"][0]["configMap"]["name"] == "proxy-config"
    assert pod["securityContext"]["runAsNonRoot"] is True
    kinds = {_k8s(f)["kind"] for f in ("service.yaml", "pdb.yaml", "hpa.yaml")}
    assert kinds == {"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert all((DEPLOY / "k8s" / f).exists() for f in listed)


def test_compose_runs_both_instances_with_their_own_stores_and_monitoring() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway-global", "gateway-eu", "prometheus", "grafana"} <= set(services)
    for region in ("global", "eu"):
        gateway = services[f"gateway-{region}"]
        assert f"./{region}.toml:/etc/proxy/gateway.toml:ro" in gateway["volumes"]
        assert f"postgres-{region}" in gateway["environment"]["PROXY_DATABASE_URL"]
        assert set(gateway["depends_on"]) == {f"postgres-{region}", f"redis-{region}"}
        settings = tomllib.loads((DEPLOY / f"{region}.toml").read_text())
        assert f"redis-{region}" in settings["redis_url"]
        grace = int(gateway["stop_grace_period"].rstrip("s"))
        assert grace > settings["shutdown_grace_s"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.MULTILINE)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text




def grafana_sql(sql: str, start: datetime, end: datetime) -> str:
    """Expand the Grafana PostgreSQL macros the FinOps dashboard uses."""
    expanded = re.sub(r"\$__timeFilter\(([^)]+)\)",
                      rf"\1 BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", sql)
    assert "$" not in expanded, f"a macro the test does not expand: {expanded}"
    return expanded


async def test_finops_dashboard_sql_runs_against_a_ledger_database(fresh_pg: str) -> None:
    await migrate(fresh_pg)
    now = datetime.now(UTC)

    def rec(i: int, key: str, model: str, cost: int, **kw: Any) -> UsageRecord:
        return usage_record(request_id=f"r{i}", ts=now - timedelta(days=i % 3), key_id=key,
                            model=model, provider=model.split("/")[0], prompt_tokens=100,
                            completion_tokens=50, cost_nusd=cost, latency_ms=10.0, **kw)

    records = [
        rec(1, "key-a", "openai/gpt-4o-mini", 3_000_000_000),
        rec(2, "key-a", "simulated/chat", 1_000_000_000),
        rec(3, "key-b", "simulated/chat", 500_000_000),
        rec(4, "key-b", "simulated/chat", 0, cache_hit=True, savings_nusd=500_000_000),
        rec(5, "key-b", "openai/gpt-4o-mini", 0, status=502),
    ]
    sink = PostgresSink(fresh_pg)
    try:
        assert await sink.write(records) == len(records)
    finally:
        await sink.close()
    conn = await asyncpg.connect(fresh_pg)
    try:
        await conn.execute("INSERT INTO api_keys (id, name, key_hash, key_prefix) "
                           "VALUES ('key-a', 'team-a', 'h', 'sk-px-a')")
        board = json.loads((DASHBOARDS / "finops.json").read_text())
        results = {}
        for panel in board["panels"]:
            for target in panel["targets"]:
                sql = grafana_sql(target["rawSql"], now - timedelta(days=30),
                                  now + timedelta(hours=1))
                rows = await conn.fetch(sql)
                assert rows, panel["title"]
                results[panel["title"]] = rows
    finally:
        await conn.close()
    assert float(results["Spend"][0]["spend"]) == pytest.approx(4.5)
    assert results["Requests"][0]["requests"] == 5
    assert float(results["Saved by the response cache"][0]["savings"]) == pytest.approx(0.5)
    assert float(results["Requests served from the cache"][0]["share"]) == pytest.approx(0.2)
    top = results["Top keys by spend"]
    assert [(r["key"], r["name"]) for r in top] == [("key-a", "team-a"), ("key-b", "")]
    assert float(top[0]["spend (USD)"]) == pytest.approx(4.0)
    by_key = {r["metric"] for r in results["Spend per day by key"]}
    assert by_key == {"team-a", "key-b"}  # named keys by name
    by_model = {r["model"]: r for r in results["Spend by model and provider"]}
    assert float(by_model["openai/gpt-4o-mini"]["error %"]) == pytest.approx(50.0)
    per_day = results["Spend per day by model"]
    assert sum(float(r["spend"]) for r in per_day) == pytest.approx(4.5)
    assert {r["time"].hour for r in per_day} == {0}  # one point per UTC day
