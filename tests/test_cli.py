"""`python -m proxy serve`: embedded defaults, config errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=cwd, env={**environ, **(env or {})},
        capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('port = "abc"\n', "key `port`: Expected int, got str"),
        ("prot = 8080\n", "unknown field `prot`"),
        ('region = "mars"\n', "key `region`: must be one of global, eu"),
        ('[providers.x]\nprotocol = "openai"\nbase_url = "ftp://x"\n',
         "key `providers.x.base_url`"),
        ('[[models]]\nid = "a/b"\nprovider = "ghost"\nupstream = "b"\n',
         "unknown provider 'ghost'"),
        ('[policies.p]\nstrategy = "fallback"\nmodels = ["nope/x"]\n', "key `policies.p.models`"),
        ("workers = 3\n", "key `workers`: 3 workers need redis_url"),
        ("port = [\n", "not valid TOML"),
        ('admin_key = "sk-in-file"\n', "key `admin_key`: not allowed in the file"),
    ],
)
def test_bad_config_is_one_clear_line_and_exit_2(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = run_cli(["serve", "--config", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = run_cli(["serve", "--config", str(tmp_path / "none.toml")], cwd=tmp_path)
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_bad_environment_override_is_exit_2(tmp_path: Path) -> None:
    result = run_cli(["serve"], cwd=tmp_path, env={"PROXY_PORT": "eighty"})
    assert result.returncode == 2
    assert "PROXY_PORT" in result.stderr


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.output: list[str] = []


def start_server(cwd: Path, args: list[str], env: dict[str, str] | None = None) -> Server:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port), *args],
        cwd=cwd, env={**environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    server = Server(proc, port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read() if proc.stdout else "exited") from None
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("gateway did not start listening")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    config = tmp_path / "slow.toml"
    config.write_text(
        "shutdown_grace_s = 10\n[providers.simulated]\nprotocol = \"simulated\"\n"
        "tokens_per_second = 20\n"
    )
    server = start_server(tmp_path, ["--config", str(config)])
    yield server, tmp_path
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def admin_key_from(server: Server) -> str:
    assert server.proc.stdout is not None
    for _ in range(50):
        line = server.proc.stdout.readline()
        server.output.append(line)
        m = re.search(r"(sk-px-[A-Za-z0-9_-]+)", line)
        if m:
            return m.group(1)
    raise AssertionError("no admin key printed:\n" + "".join(server.output))


@pytest.mark.slow  # a subprocess gateway or writer
async def test_embedded_defaults_serve_a_completion_and_a_stream_with_the_printed_key(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, [])
    try:
        key = admin_key_from(server)
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as http:
            resp = await http.post(server.url + "/v1/chat/completions", json=body, headers=headers)
            assert resp.status == 200
            assert (await resp.json())["usage"]["cost"] > 0
            resp = await http.post(server.url + "/v1/chat/completions", headers=headers,
                                   json={**body, "stream": True})
            raw = await resp.read()
            assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"data: ") > 5
        assert (tmp_path / "proxy-data" / "proxy.db").exists()
        assert key not in (tmp_path / "proxy-data" / "admin-key.hmac").read_text()
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=20)
    # A second start keeps the stored key and prints none.
    again = start_server(tmp_path, [])
    try:
        again.proc.terminate()
        out, _ = again.proc.communicate(timeout=20)
        assert "sk-px-" not in out
    finally:
        if again.proc.poll() is None:
            again.proc.kill()


@pytest.mark.slow  # a subprocess gateway or writer
async def test_sigterm_lets_an_inflight_stream_finish_then_exits_cleanly(
    served: tuple[Server, Path],
) -> None:
    server, _ = served
    key = admin_key_from(server)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "simulated/chat", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(server.url + "/v1/chat/completions", json=body, headers=headers)
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        server.proc.send_signal(signal.SIGTERM)
        rest = await resp.read()  # ~1 s of paced tokens still to come
        assert rest.endswith(b"data: [DONE]\n\n")
        assert rest.count(b"data: ") >= 20
    code = await asyncio.to_thread(server.proc.wait, 20)
    assert code == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=0.5)
