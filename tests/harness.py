"""Runs the real gateway app on a real port for a test, configured from a TOML string."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from proxy.app import build_app
from proxy.config import Settings, load_settings
from proxy.migrate import migrate

ADMIN_KEY = "sk-test-admin-0123456789"


def gateway_settings(tmp_path: Path, toml: str = "", **env: str) -> Settings:
    config = tmp_path / "gateway.toml"
    config.write_text(toml)
    environ = {
        "PROXY_ADMIN_KEY": ADMIN_KEY,
        "PROXY_DATA_DIR": str(tmp_path / "data"),
        "PROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'proxy.db'}",
        **env,
    }
    return load_settings(str(config), env=environ)


class Gateway:
    def __init__(self, server: TestServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.url = str(server.make_url("")).rstrip("/")
        self.app = server.app

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    await migrate(settings.database_url)
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield Gateway(server, settings)
    finally:
        await server.close()


async def post_json(
    session: aiohttp.ClientSession, gw: Gateway, path: str, body: object, **kw: object
) -> aiohttp.ClientResponse:
    return await session.post(gw.url + path, json=body, headers=gw.headers, **kw)  # type: ignore[arg-type]
