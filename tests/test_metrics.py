"""/metrics and the access log: what the request path records, across workers too."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from harness import ADMIN_KEY, gateway_settings, running_gateway
from ledger_support import usage_record
from prometheus_client.parser import text_string_to_metric_families

from proxy.access_log import LOGGER
from proxy.app import build_app
from proxy.gateway import GATEWAY
from proxy.ledger.record import UsageRecord
from proxy.metrics import Metrics
from proxy.metrics.multiprocess import MULTIPROC_ENV, prepare_multiprocess_dir
from proxy.stats import LedgerStats

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "Say hello"}]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of an exposition."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= ls)


def record(**kw: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "key_id": "key-7f3a", "prompt_tokens": 12, "completion_tokens": 24,
        "cached_tokens": 4, "cost_nusd": 2_500_000_000, "latency_ms": 120.0,
        "user_id": "alice@example.com",
    }
    return usage_record(**(base | kw))


class StandInLedger:
    """A ledger that only reports stats (the metrics read nothing else)."""

    def __init__(self, **counts: Any) -> None:
        self.counts = LedgerStats(spools=True, **counts)

    def stats(self) -> LedgerStats:
        return self.counts


@pytest.fixture
def metrics(tmp_path: Path) -> Metrics:
    app = build_app(gateway_settings(tmp_path))
    return app[GATEWAY].metrics


async def test_request_done_counts_requests_tokens_cost_and_latency_by_model(
    metrics: Metrics,
) -> None:
    metrics.request_done("chat", record(), upstream_s=0.1)
    metrics.request_done("chat", record(status=502, cost_nusd=0, prompt_tokens=0,
                                        completion_tokens=0, cached_tokens=0), upstream_s=0.1)
    text = (await metrics.scrape()).decode()
    by_model = {"model": "simulated/chat", "provider": "simulated"}
    assert total(text, "proxy_requests_total", route="chat", status="200", **by_model) == 1
    assert total(text, "proxy_requests_total", status="502") == 1
    assert total(text, "proxy_tokens_total", type="prompt", **by_model) == 12
    assert total(text, "proxy_tokens_total", type="completion", **by_model) == 24
    assert total(text, "proxy_tokens_total", type="cached", **by_model) == 4
    assert total(text, "proxy_cost_usd_total", **by_model) == pytest.approx(2.5)
    assert total(text, "proxy_request_duration_seconds_count", stream="false") == 2
    # 120 ms lands in the 250 ms bucket, not in the 100 ms one
    assert total(text, "proxy_request_duration_seconds_bucket", le="0.1") == 0
    assert total(text, "proxy_request_duration_seconds_bucket", le="0.25") == 2


async def test_a_value_on_a_bound_counts_in_that_bucket_and_each_scrape_adds_only_the_new(
    metrics: Metrics,
) -> None:
    metrics.request_done("chat", record(latency_ms=250.0), upstream_s=0.0)  # exactly le=0.25
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_request_duration_seconds_bucket", le="0.1") == 0
    assert total(text, "proxy_request_duration_seconds_bucket", le="0.25") == 1
    metrics.request_done("chat", record(latency_ms=250.0), upstream_s=0.0)
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_requests_total", status="200") == 2
    assert total(text, "proxy_request_duration_seconds_bucket", le="0.25") == 2
    assert total(text, "proxy_request_duration_seconds_sum") == pytest.approx(0.5)
    assert total(text, "proxy_tokens_total", type="prompt") == 24
    assert total(text, "proxy_cost_usd_total") == pytest.approx(5.0)


def test_a_histogram_child_without_the_parts_fold_uses_is_observed_at_once() -> None:
    # Folding reaches into prometheus_client's Histogram child; a release that renames
    # those attributes must cost the deferral, not the observations.
    from proxy.metrics.recording import _Observations

    class Child:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    child = Child()
    observations = _Observations.of(child)
    observations.observe(0.25)
    assert child.seen == [0.25]  # at once
    observations.fold()
    assert child.seen == [0.25]  # and only once


async def test_overhead_is_request_time_minus_upstream_time(metrics: Metrics) -> None:
    metrics.request_done("chat", record(latency_ms=100.4), upstream_s=0.1)  # 0.4 ms own
    # a stream: time to first token 50.3 ms, of which upstream 50 ms; the long tail is not ours
    metrics.request_done("chat", record(stream=True, latency_ms=9000.0, ttft_ms=50.3),
                         upstream_s=0.05)
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_overhead_seconds_bucket", le="0.00025") == 0
    assert total(text, "proxy_overhead_seconds_bucket", le="0.0005") == 2
    assert total(text, "proxy_overhead_seconds_sum") == pytest.approx(0.0007, abs=1e-6)
    assert total(text, "proxy_time_to_first_token_seconds_count") == 1


async def test_labels_never_carry_key_ids_user_ids_or_unknown_models(metrics: Metrics) -> None:
    metrics.request_done("chat", record(), upstream_s=0.0)
    metrics.request_done("chat", record(model="made-up/model-x", provider="nowhere"),
                         upstream_s=0.0)
    text = (await metrics.scrape()).decode()
    assert "key-7f3a" not in text and "alice" not in text
    assert "made-up" not in text and "nowhere" not in text
    assert total(text, "proxy_requests_total", model="other", provider="other") == 1


async def test_attempt_log_counts_upstream_errors_retries_and_fallbacks(metrics: Metrics) -> None:
    a = SimpleNamespace(id="openai/gpt-4o-mini", provider="openai")
    b = SimpleNamespace(id="simulated/chat", provider="simulated")
    fail = SimpleNamespace
    # openai failed twice (503, then retried: timeout), then simulated answered;
    # anthropic was skipped with an open circuit.
    log = SimpleNamespace(
        attempts=3, model=b, skipped=[SimpleNamespace(id="x", provider="anthropic")],
        failures=[fail(model=a, reason="503"), fail(model=a, reason="timeout")],
    )
    metrics.attempts_done(log)
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_upstream_errors_total", provider="openai") == 2
    assert total(text, "proxy_retries_total", provider="openai", reason="503") == 1
    assert total(text, "proxy_fallbacks_total", provider="openai", reason="timeout") == 1
    assert total(text, "proxy_fallbacks_total", provider="anthropic", reason="circuit_open") == 1
    # every attempt failed: the last failure is followed by nothing
    metrics.attempts_done(SimpleNamespace(attempts=1, model=a, skipped=[],
                                          failures=[fail(model=a, reason="connect")]))
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_upstream_errors_total", reason="connect") == 1
    assert total(text, "proxy_fallbacks_total", reason="connect") == 0
    assert total(text, "proxy_retries_total", reason="connect") == 0


async def test_ledger_and_circuit_state_are_read_at_scrape_time(tmp_path: Path) -> None:
    gw: Any = build_app(gateway_settings(tmp_path))[GATEWAY]
    metrics = gw.metrics
    routing: Any = SimpleNamespace(breakers=SimpleNamespace(states=lambda: [
        ("openai", "openai/gpt-4o", "open"), ("openai", "openai/gpt-4o-mini", "closed"),
        ("anthropic", "anthropic/claude-3-5-haiku", "half_open")]))
    gw.routing = routing
    gw.ledger = StandInLedger(queue_depth=7, records_written=100, records_spooled=5,
                              records_replayed=0, last_flush_seconds=0.25, database_errors=2)
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_ledger_queue_depth") == 7
    assert total(text, "proxy_ledger_records_written_total") == 100
    assert total(text, "proxy_ledger_records_spooled_total") == 5
    assert total(text, "proxy_ledger_last_flush_seconds") == 0.25
    assert total(text, "proxy_database_errors_total", component="ledger") == 2
    assert total(text, "proxy_circuit_state", provider="openai") == 2
    assert total(text, "proxy_circuit_state", provider="anthropic") == 1
    assert total(text, "proxy_circuit_state", provider="simulated") == 0
    gw.ledger.counts = replace(gw.ledger.counts, records_written=130, records_replayed=5)
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_ledger_records_written_total") == 130
    assert total(text, "proxy_ledger_records_replayed_total") == 5
    # a new ledger object counts from zero again: its counts add, nothing is subtracted
    gw.ledger = StandInLedger(records_written=3)
    text = (await metrics.scrape()).decode()
    assert total(text, "proxy_ledger_records_written_total") == 133


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    handler = _Lines()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


async def test_access_log_is_one_json_line_with_ids_counts_and_timings_only(
    metrics: Metrics, access_lines: list[str]
) -> None:
    metrics.request_done("chat", record(trace_id="t-1", tags=["secret-tag"],
                                        extra={"team": "x"}, headers={"team": "y"},
                                        ttft_ms=40.0, stream=True, attempts=2),
                         upstream_s=0.035)
    assert len(access_lines) == 1 and "\n" not in access_lines[0]
    line = json.loads(access_lines[0])
    assert line["request_id"] == "req-1" and line["key_id"] == "key-7f3a"
    assert (line["model"], line["provider"], line["status"]) == ("simulated/chat", "simulated", 200)
    assert (line["prompt_tokens"], line["completion_tokens"], line["cached_tokens"]) == (12, 24, 4)
    assert line["cost_usd"] == 2.5 and line["latency_ms"] == 120.0 and line["ttft_ms"] == 40.0
    assert line["upstream_ms"] == 35.0 and line["cache"] == "miss" and line["attempts"] == 2
    assert line["trace_id"] == "t-1"
    assert line["ts"].endswith("Z")  # RFC 3339, UTC
    assert abs(datetime.fromisoformat(line["ts"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert "alice" not in access_lines[0] and "secret-tag" not in access_lines[0]
    assert "team" not in access_lines[0]


async def test_access_log_off_writes_nothing(tmp_path: Path, access_lines: list[str]) -> None:
    settings = gateway_settings(tmp_path, "access_log = false\n")
    build_app(settings)[GATEWAY].metrics.request_done("chat", record(), upstream_s=0.0)
    assert access_lines == []


async def test_scrape_is_prometheus_text_without_auth(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw, aiohttp.ClientSession() as http:
        resp = await http.get(gw.url + "/metrics", headers={"x-request-id": "scrape-1"})
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert resp.headers["x-request-id"] == "scrape-1"
        text = await resp.text()
    assert total(text, "proxy_info", region="global") == 1
    assert total(text, "proxy_cache_requests_total", route="chat", result="hit") == 0


async def test_traffic_through_the_app_is_counted_and_logged(
    tmp_path: Path, access_lines: list[str]
) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw, aiohttp.ClientSession() as http:
        for stream in (False, False, True):
            body = {"model": "simulated/chat", "messages": USER, "stream": stream}
            resp = await http.post(gw.url + "/v1/chat/completions", json=body, headers=gw.headers)
            assert resp.status == 200
            await resp.read()
        text = await (await http.get(gw.url + "/metrics")).text()
    simulated = {"model": "simulated/chat", "provider": "simulated"}
    assert total(text, "proxy_requests_total", route="chat", status="200", **simulated) == 3
    assert total(text, "proxy_time_to_first_token_seconds_count", **simulated) == 1
    assert total(text, "proxy_tokens_total", type="completion", **simulated) == 3 * 24
    assert total(text, "proxy_requests_in_flight") == 0 and total(text, "proxy_open_streams") == 0
    assert len(access_lines) == 3
    assert ADMIN_KEY not in "".join(access_lines) and "Say hello" not in "".join(access_lines)


def test_multiprocess_dir_is_emptied_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = tmp_path / "mp"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    assert prepare_multiprocess_dir() == (str(given), False)
    assert list(given.iterdir()) == []
    monkeypatch.delenv(MULTIPROC_ENV)
    path, made = prepare_multiprocess_dir()
    assert made and os.listdir(path) == []
    os.rmdir(path)


_WORKER = textwrap.dedent("""
    import asyncio, sys
    from datetime import UTC, datetime
    from proxy.app import build_app
    from proxy.config import load_settings
    from proxy.gateway import GATEWAY
    from proxy.ledger.record import UsageRecord
    from proxy.stats import LedgerStats

    settings = load_settings(None, env={"PROXY_DATA_DIR": sys.argv[1], "PROXY_ADMIN_KEY": "sk-x",
                                        "PROXY_DATABASE_URL": "sqlite:///" + sys.argv[1] + "/p.db"})
    gateway = build_app(settings)[GATEWAY]
    metrics = gateway.metrics
    for i in range(int(sys.argv[2])):
        metrics.request_done("chat", UsageRecord(
            request_id=str(i), ts=datetime.now(UTC), key_id="k", model_requested="simulated/chat",
            model="simulated/chat", provider="simulated", region="global", status=200,
            completion_tokens=10, cost_nusd=1000, latency_ms=5.0), upstream_s=0.004)
    class StandInLedger:
        def stats(self):
            return LedgerStats(spools=True, queue_depth=3)

    gateway.ledger = StandInLedger()
    asyncio.run(metrics.scrape())  # a scrape samples the ledger into this worker's files
""")


@pytest.mark.slow  # a subprocess gateway or writer
def test_values_of_several_processes_add_up_in_one_scrape(tmp_path: Path) -> None:
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    env = {**os.environ, MULTIPROC_ENV: str(mp_dir)}
    env = {k: v for k, v in env.items() if not k.startswith("PROXY_")}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(n)], env=env)
        for n in (3, 4)
    ]
    assert [p.wait(timeout=30) for p in procs] == [0, 0]
    scrape = textwrap.dedent(f"""
        from proxy.metrics.multiprocess import multiprocess_exposition
        print(multiprocess_exposition({str(mp_dir)!r}).decode())
    """)
    text = subprocess.run([sys.executable, "-c", scrape], env=env, capture_output=True,
                          text=True, timeout=30, check=True).stdout
    assert total(text, "proxy_requests_total", route="chat", status="200") == 7
    assert total(text, "proxy_tokens_total", type="completion") == 70
    assert total(text, "proxy_request_duration_seconds_count") == 7
    # the queue-depth gauge of both (dead, not yet marked) workers adds up: livesum
    assert total(text, "proxy_ledger_queue_depth") == 6


@pytest.mark.slow  # a subprocess gateway or writer
async def test_workers_2_one_scrape_adds_up_every_workers_requests(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    from test_cli import free_port

    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'redis_url = "{redis_url}"\nredis_namespace = "{redis_namespace}"\n')
    mp_dir = tmp_path / "metrics"  # given, so that the test can read each worker's file
    proc = _serve(tmp_path, ["--config", str(config), "--workers", "2", "--port", str(port)],
                  {"PROXY_ADMIN_KEY": ADMIN_KEY, MULTIPROC_ENV: str(mp_dir)})
    url = f"http://127.0.0.1:{port}"
    n = 40
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, url, proc)
            # both workers built their app (each writes its files then) and listen
            while len(list(mp_dir.glob("gauge_livesum_*.db"))) < 2:
                assert proc.poll() is None, "gateway exited"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            body = {"model": "simulated/chat", "messages": USER}
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            # fresh connections, so that the kernel spreads them over both workers
            for _ in range(n):
                async with aiohttp.ClientSession() as one:
                    resp = await one.post(url + "/v1/chat/completions", json=body, headers=headers)
                    assert resp.status == 200
            # each scrape, whichever worker answers it, sees all n
            for _ in range(6):
                async with aiohttp.ClientSession() as one:
                    text = await (await one.get(url + "/metrics")).text()
                    assert total(text, "proxy_requests_total", model="simulated/chat") == n
            per_worker = _requests_per_file(mp_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert len(per_worker) == 2 and all(per_worker), per_worker  # both workers served some
    assert sum(per_worker) == n


def _serve(cwd: Path, args: list[str], extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", *args], cwd=cwd, env={**env, **extra_env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _requests_per_file(mp_dir: Path) -> list[float]:
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = []
    for path in sorted(mp_dir.glob("counter_*.db")):
        merged = MultiProcessCollector.merge([str(path)], accumulate=False)  # type: ignore[no-untyped-call]
        counts.append(sum(s.value for m in merged for s in m.samples
                          if s.name == "proxy_requests_total"))
    return counts


async def _wait_ready(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gateway exited"
        try:
            if (await http.get(url + "/healthz")).status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("gateway did not come up")
