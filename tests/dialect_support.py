"""The gateway for the dialect tests (Messages, Responses, Completions): the fake OpenAI
and Anthropic upstreams, an OpenAI-compatible provider that serves the Responses API, a
Claude model with the alias Claude Code sends, and the ledger read back from SQLite.

Prices are whole nano-USD per token (USD per million tokens), so the expected cost of a
record is an exact integer: upstream-reported usage x prices, computed here on its own.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import aiohttp
from harness import Gateway
from ledger_support import wait_for

# nano-USD per token: (input, cached input, cache write, output)
PRICES: dict[str, tuple[int, int, int, int]] = {  # the TOML's USD per million x 1000
    "d/gpt": (150, 75, 150, 600),
    "d/resp": (250, 125, 250, 1000),
    "d/claude": (800, 80, 1000, 4000),
}
CLAUDE_ALIAS = "claude-sonnet-4-5-20250929"


def dialect_toml(openai_url: str, anthropic_url: str) -> str:
    return f"""
[ledger]
flush_interval_ms = 20

[providers.dopenai]
protocol = "openai"
base_url = "{openai_url}"
api_key_env = "FAKE_OPENAI_KEY"
regions = ["global"]
first_byte_timeout_s = 5
timeout_s = 10

[providers.dresp]
protocol = "openai"
base_url = "{openai_url}"
api_key_env = "FAKE_OPENAI_KEY"
regions = ["global"]
responses_api = true
timeout_s = 10

[providers.danthropic]
protocol = "anthropic"
base_url = "{anthropic_url}"
api_key_env = "FAKE_ANTHROPIC_KEY"
regions = ["global"]
first_byte_timeout_s = 5
timeout_s = 10

[[models]]
id = "d/gpt"
provider = "dopenai"
upstream = "gpt-4o-mini-2024-07-18"
input_price = 0.15
cached_input_price = 0.075
output_price = 0.60
context_window = 128000

[[models]]
id = "d/resp"
provider = "dresp"
upstream = "gpt-5-mini"
input_price = 0.25
cached_input_price = 0.125
output_price = 1.00
context_window = 128000

[[models]]
id = "d/claude"
provider = "danthropic"
upstream = "claude-sonnet-4-5-20250929"
aliases = ["{CLAUDE_ALIAS}"]
input_price = 0.80
cached_input_price = 0.08
cache_write_price = 1.00
output_price = 4.00
context_window = 200000
max_output_tokens = 8192

[policies.mixed]
strategy = "fallback"
models = ["d/claude", "d/gpt"]
"""


def _rows(gw: Gateway) -> list[dict[str, Any]]:
    path = gw.settings.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM usage_records ORDER BY ts")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def records(gw: Gateway, n: int) -> list[dict[str, Any]]:
    """The ledger's records once `n` are in (the writer flushes every 20 ms)."""
    await wait_for(lambda: len(_rows(gw)) >= n)
    return _rows(gw)


def cost(model: str, prompt: int, completion: int, cached: int = 0, written: int = 0) -> int:
    """nano-USD for usage as the gateway counts it (`prompt` includes cache reads/writes)."""
    inp, cin, cw, out = PRICES[model]
    return (prompt - cached - written) * inp + cached * cin + written * cw + completion * out


async def read_sse(resp: aiohttp.ClientResponse, buf: bytearray,
                   timeout: float = 5.0) -> tuple[str | None, Any]:
    """The next whole SSE event: (its `event:` name or None, its data decoded)."""
    async def one() -> tuple[str | None, Any]:
        while b"\n\n" not in buf:
            chunk = await resp.content.readany()
            if not chunk:
                raise EOFError
            buf.extend(chunk)
        end = buf.index(b"\n\n")
        block = bytes(buf[:end]).decode()
        del buf[: end + 2]
        name, data = None, ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        return name, (data if data == "[DONE]" else json.loads(data))

    return await asyncio.wait_for(one(), timeout)
