"""Every metric the docs, the README and the shipped dashboards and alerts name is exported
by /metrics: a renamed or dropped metric fails here, not in an operator's empty graph."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from harness import gateway_settings, running_gateway
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bproxy_[a-z_]*[a-z]")
# Sample names a family of each type exports besides its own name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": (), "info": (), "summary": ("_sum", "_count")}


def documented() -> dict[str, list[str]]:
    """{metric name: the files naming it} over README.md, docs/ and deploy/."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted(p for p in (ROOT / "deploy").rglob("*")
                     if p.is_file() and p.suffix in {".yml", ".yaml", ".json", ".md"})]
    names: dict[str, list[str]] = {}
    for path in files:
        if not path.exists():
            continue
        for name in set(NAME.findall(path.read_text())):
            names.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return names


def exported(text: str) -> set[str]:
    """Every name a scrape answers to: families, their samples, and the sample names each
    family type implies (a counter or histogram with no series yet still exports them)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(f"{family.name}{s}" for s in SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


def test_documentation_names_metrics() -> None:
    names = documented()
    assert "proxy_requests_total" in names and "proxy_ledger_queue_depth" in names


async def test_every_documented_metric_is_exported(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw, aiohttp.ClientSession() as http:
        body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}
        resp = await http.post(gw.url + "/v1/chat/completions", json=body, headers=gw.headers)
        assert resp.status == 200
        await resp.read()
        text = await (await http.get(gw.url + "/metrics")).text()
    have = exported(text)
    missing = {name: where for name, where in documented().items() if name not in have}
    assert missing == {}
