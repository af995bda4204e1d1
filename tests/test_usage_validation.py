"""Usage a provider reports is checked before it is charged, on PostgreSQL and Redis: counts
that cannot be true (negative, past the context window, past the request's output cap) are
treated as unreported, so the call is estimated and flagged, its cost is never negative and
never lost, and the spend counter and the ledger stay equal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from conftest import UPSTREAM_SECRET
from fakes import FakeAnthropic, FakeOpenAI, Reply
from harness import Gateway
from ledger_gateway import new_key, pg_redis_gateway, settled

USER = [{"role": "user", "content": "How many tokens is this?"}]
HUGE = 10**18


class LyingEmbeddings(FakeOpenAI):
    """The fake OpenAI, whose embeddings report `embedding_tokens` when it is set, and no
    usage at all with `omit_embedding_usage`."""

    embedding_tokens: int | None = None
    omit_embedding_usage = False

    def _embedding_list(self, reply: Reply, req: Any, number: int) -> bytes:
        body = msgspec.json.decode(super()._embedding_list(reply, req, number))
        if self.embedding_tokens is not None:
            body["usage"] = {"prompt_tokens": self.embedding_tokens,
                             "total_tokens": self.embedding_tokens}
        if self.omit_embedding_usage:
            del body["usage"]
        return msgspec.json.encode(body)


@pytest.fixture
async def upstream() -> AsyncIterator[LyingEmbeddings]:
    async with LyingEmbeddings() as fake:
        yield fake


@pytest.fixture
async def gw(tmp_path: Path, upstream: LyingEmbeddings, fake_anthropic: FakeAnthropic,
             fresh_pg: str, redis_url: str, redis_namespace: str,
             monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    async with pg_redis_gateway(tmp_path, upstream.base_url, fake_anthropic.base_url,
                                fresh_pg, redis_url, redis_namespace) as g:
        yield g


async def records_of(pg: str, key_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT prompt_tokens, completion_tokens, cached_tokens, cost_nusd, estimated "
            "FROM usage_records WHERE key_id = $1", key_id)
        return rows
    finally:
        await conn.close()


async def chat(http: aiohttp.ClientSession, gw: Gateway, key: str, model: str,
               stream: bool, **extra: Any) -> dict[str, Any]:
    """The response's usage (from the last chunk of a stream)."""
    body: dict[str, Any] = {"model": model, "messages": USER, **extra}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    resp = await http.post(gw.url + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    if not stream:
        usage: dict[str, Any] = (await resp.json())["usage"]
        return usage
    events = [line[6:] for line in (await resp.text()).splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    last: dict[str, Any] = msgspec.json.decode(events[-1])
    return dict(last["usage"])


UNTRUE: list[tuple[str, str, Reply, dict[str, Any]]] = [
    ("negative counts", "fake/gpt", Reply(prompt_tokens=-40_000, completion_tokens=-5), {}),
    ("negative cached tokens", "fake/gpt", Reply(prompt_tokens=20, cached_tokens=-10**9), {}),
    ("10^18 tokens", "fake/gpt", Reply(prompt_tokens=HUGE, completion_tokens=HUGE), {}),
    ("a prompt past the context window", "fake/gpt", Reply(prompt_tokens=128_001), {}),
    ("a completion past max_tokens", "fake/gpt", Reply(completion_tokens=500),
     {"max_tokens": 16}),
    ("negative counts from Anthropic", "fake/claude",
     Reply(prompt_tokens=-7, completion_tokens=-3), {}),
    ("10^18 tokens from Anthropic", "fake/claude",
     Reply(prompt_tokens=HUGE, completion_tokens=HUGE), {}),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("what", "model", "reply", "extra"), UNTRUE,
                         ids=[u[0] for u in UNTRUE])
async def test_untrue_provider_usage_is_estimated_never_negative_and_charged_as_recorded(
        gw: Gateway, upstream: LyingEmbeddings, fake_anthropic: FakeAnthropic,
        http: aiohttp.ClientSession, fresh_pg: str, stream: bool, what: str, model: str,
        reply: Reply, extra: dict[str, Any]) -> None:
    (fake_anthropic if model == "fake/claude" else upstream).script(reply)
    key = await new_key(http, gw)
    usage = await chat(http, gw, key["key"], model, stream, **extra)
    # The client is shown what is charged: the estimate, flagged, with its cost.
    assert usage["estimated"] is True
    assert 0 < usage["prompt_tokens"] < 100 and 0 < usage["completion_tokens"] < 100
    assert usage["cost"] > 0
    charged, recorded = await settled(http, gw, fresh_pg, key["id"], records=1)
    assert charged == recorded == round(usage["cost"] * 1e9)
    [row] = await records_of(fresh_pg, key["id"])
    assert row["estimated"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"],
                                                                usage["completion_tokens"])
    assert row["cached_tokens"] == 0
    # The counters the scrape reads took it too: /metrics still answers.
    assert (await http.get(gw.url + "/metrics")).status == 200


async def test_plausible_provider_usage_is_charged_as_reported(
        gw: Gateway, upstream: LyingEmbeddings, http: aiohttp.ClientSession,
        fresh_pg: str) -> None:
    upstream.script(Reply(prompt_tokens=128_000, completion_tokens=16))
    key = await new_key(http, gw)
    usage = await chat(http, gw, key["key"], "fake/gpt", False, max_tokens=16)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (128_000, 16)
    assert "estimated" not in usage
    charged, recorded = await settled(http, gw, fresh_pg, key["id"], records=1)
    # 0.15 and 0.60 USD per million tokens, in nano-USD, rounded half up.
    assert charged == recorded == (128_000 * 150_000_000 + 16 * 600_000_000
                                   + 500_000) // 1_000_000
    [row] = await records_of(fresh_pg, key["id"])
    assert row["estimated"] is False


@pytest.mark.parametrize("reported", [-1_000_000, HUGE, None],
                         ids=["negative", "10^18", "none"])
async def test_untrue_or_missing_embedding_usage_is_estimated_and_charged_as_recorded(
        gw: Gateway, upstream: LyingEmbeddings, http: aiohttp.ClientSession, fresh_pg: str,
        reported: int | None) -> None:
    upstream.embedding_tokens = reported
    upstream.omit_embedding_usage = reported is None
    key = await new_key(http, gw)
    resp = await http.post(gw.url + "/v1/embeddings",
                           json={"model": "fake/embed", "input": ["one text", "and another"]},
                           headers={"Authorization": f"Bearer {key['key']}"})
    assert resp.status == 200, await resp.text()
    usage = (await resp.json())["usage"]
    assert usage["estimated"] is True and usage["prompt_tokens"] == 5  # 8 and 11 characters
    charged, recorded = await settled(http, gw, fresh_pg, key["id"], records=1)
    assert charged == recorded == round(usage["cost"] * 1e9) > 0
    [row] = await records_of(fresh_pg, key["id"])
    assert row["estimated"] is True and row["prompt_tokens"] == 5
