"""Shared fixtures: a fresh PostgreSQL database per test session, a Redis namespace per test.

Both services are real (CONTRACT: tests never mock the database); `.ci/run` starts them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis
from fakes import FakeAnthropic, FakeOpenAI
from dialect_support import dialect_toml
from harness import Gateway, gateway_settings, running_gateway

PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _db_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def _temporary_database() -> Iterator[str]:
    name = f"proxy_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _db_url(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Create a database for this test session; yields its URL and drops it afterwards."""
    with _temporary_database() as url:
        yield url


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """A database of its own for one test (for tests that count rows or restart things)."""
    with _temporary_database() as url:
        yield url


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A unique key prefix on the shared Redis; its keys are deleted afterwards."""
    ns = f"test-{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{ns}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


# --- the gateway in front of fake providers -------------------------------------------

UPSTREAM_SECRET = "sk-upstream-secret-do-not-leak"


def fake_provider_toml(openai_url: str, anthropic_url: str, first_byte_s: float = 2.0) -> str:
    return f"""
[providers.fake]
protocol = "openai"
base_url = "{openai_url}"
api_key_env = "FAKE_OPENAI_KEY"
regions = ["global"]
first_byte_timeout_s = {first_byte_s}
timeout_s = 10

[providers.fakeanthropic]
protocol = "anthropic"
base_url = "{anthropic_url}"
api_key_env = "FAKE_ANTHROPIC_KEY"
regions = ["global"]
first_byte_timeout_s = {first_byte_s}
timeout_s = 10

[providers.fakeeu]
protocol = "openai"
base_url = "{openai_url}"
api_key_env = "FAKE_OPENAI_KEY"
regions = ["eu"]

[[models]]
id = "fake/gpt"
provider = "fake"
upstream = "gpt-4o-mini-2024-07-18"
input_price = 0.15
cached_input_price = 0.075
output_price = 0.60
context_window = 128000

[[models]]
id = "fake/claude"
provider = "fakeanthropic"
upstream = "claude-3-5-haiku-20241022"
input_price = 0.80
cached_input_price = 0.08
cache_write_price = 1.00
output_price = 4.00
max_output_tokens = 8192

[[models]]
id = "fakeeu/gpt"
provider = "fakeeu"
upstream = "gpt-4o-mini"
input_price = 0.15
output_price = 0.60

[[models]]
id = "fake/embed"
provider = "fake"
upstream = "text-embedding-3-small"
kind = "embedding"
input_price = 0.02
"""


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def gateway(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    """The gateway (embedded defaults + fake providers) on a real port."""
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    settings = gateway_settings(
        tmp_path, fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url)
    )
    async with running_gateway(settings) as gw:
        yield gw


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- the dialect tests' gateway (Messages, Responses, Completions; tests/dialect_support.py)


@pytest.fixture
async def dgw(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    settings = gateway_settings(tmp_path, dialect_toml(fake_openai.base_url,
                                                       fake_anthropic.base_url))
    async with running_gateway(settings) as gw:
        yield gw
