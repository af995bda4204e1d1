"""Starting, probing, measuring and stopping the pieces a benchmark runs.

nginx (the fixed-body upstream), the fake upstream, the bare forwarder, the gateway with
every feature its config and admin API can switch on, and LiteLLM's proxy; each started
pinned to a core, each stopped by its own pid. CPU and memory are read from /proc for the
whole process tree. Standard library only: `bench.py` and `stream_scale.py` run it from
any Python 3.11.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import shapes

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


def _gateway_python() -> str:
    """The Python with the gateway installed: the repository's .venv (the one
    scripts/serve.sh and scripts/bench.sh make), else the Python running this."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


GATEWAY_PYTHON_DEFAULT: Final = _gateway_python()
# LiteLLM's proxy, only for bench.py's `litellm` target: its own venv, never the gateway's.
LITELLM_VENV_DEFAULT: Final = str(REPO / ".venv-litellm")
PG_DEFAULT: Final = "postgresql://postgres@127.0.0.1:5432"
REDIS_DEFAULT: Final = "redis://127.0.0.1:6379/0"


class BenchError(Exception):
    """The harness itself failed (a piece did not start, a probe answered wrong)."""


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(core), *cmd]


class Proc:
    """One started process (and its children), its log, and its /proc numbers."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - open for the process's lifetime
        self.popen = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        """This process and its descendants (taskset execs in place, so pid is the program)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out

    def cpu_ticks(self) -> int:
        """utime + stime of the whole tree, in clock ticks."""
        total = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
            except OSError:
                pass
        return total

    def rss_kb(self) -> tuple[int, int]:
        """(resident now, peak resident) of the tree, kB."""
        rss = hwm = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1])
                        elif line.startswith("VmHWM:"):
                            hwm += int(line.split()[1])
            except OSError:
                pass
        return rss, hwm

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)  # its own session: only what we started
                self.popen.wait(5)
        self._log_file.close()


def service_pids(names: tuple[str, ...] = ("redis-server", "postgres")) -> list[int]:
    """The machine's Redis and PostgreSQL processes (read-only: their CPU is reported)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in names:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@contextmanager
def services_on(core: int | None) -> Iterator[str | None]:
    """Keep Redis and PostgreSQL on `core` (the load generator's) for the length of a run.

    Left to the scheduler, they often run on the server's core: a ledger COPY or a burst of
    Lua calls then preempts the gateway for milliseconds, which shows up as its latency
    tail, and is not where they run in production (another machine). New PostgreSQL
    backends inherit the postmaster's mask. Every service process gets back the affinity it
    had (new ones: all cores) at the end. Yields a line for the report, or None if skipped.
    """
    if core is None:
        yield None
        return
    everything = set(range(os.cpu_count() or 1))
    before: dict[int, set[int]] = {}
    for pid in service_pids():
        try:
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, {core})
        except OSError:  # gone, or not ours to move (not root): leave it
            pass
    try:
        yield f"Redis and PostgreSQL processes ({len(before)}) kept on core {core}" if before \
            else None
    finally:
        for pid in service_pids():
            with suppress(OSError):
                os.sched_setaffinity(pid, before.get(pid, everything))


def pids_cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process still alive, in clock ticks."""
    ticks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks


def ticks_delta(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU used between two snapshots by the processes alive in both (pids can be reused by
    new processes, whose totals start again: those count what they used since start)."""
    return sum(t - before[p] if t >= before.get(p, 0) else t
               for p, t in after.items() if p in before)


def cpu_jiffies(core: int) -> tuple[int, int]:
    """(busy, total) jiffies of one core from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v[:8]) - idle, sum(v[:8])
    return 0, 0


# --- HTTP -----------------------------------------------------------------------------------


def http(method: str, url: str, body: bytes | dict[str, Any] | None = None,
         key: str | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_http(url: str, proc: Proc | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited at start:\n{proc.tail()}")
        try:
            status, _, _ = http("GET", url, timeout=2)
            if status < 500:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{url} did not answer within {timeout:g}s"
                     + (f":\n{proc.tail()}" if proc else ""))


def probe(url: str, body: bytes, key: str | None, stream: bool) -> str | None:
    """One request by hand: None when the answer has the right shape, else what is wrong."""
    try:
        status, _, data = http("POST", url, body, key, timeout=30)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if status != 200:
        return f"status {status}: {data[:300]!r}"
    if stream:
        if not data.rstrip().endswith(b"data: [DONE]") or b'"chat.completion.chunk"' not in data:
            return f"not a complete SSE stream: ...{data[-200:]!r}"
    elif b'"chat.completion"' not in data or b'"choices"' not in data:
        return f"not a chat completion: {data[:200]!r}"
    return None


# --- nginx ----------------------------------------------------------------------------------


def _nginx_quote(body: bytes) -> str:
    text = body.decode()
    if "$" in text:
        raise BenchError("nginx `return` bodies must not contain `$`")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _nginx_pieces(name: str, body: bytes, size: int = 3000) -> tuple[str, str]:
    """nginx refuses config tokens over 4 KiB: a long body becomes `set` variables that
    `return` joins. Returns (the `set` lines, the `return` string)."""
    quoted = _nginx_quote(body)
    pieces, i = [], 0
    while i < len(quoted):
        j = min(i + size, len(quoted))
        while quoted[j - 1] == "\\" and j < len(quoted):  # never split an escape
            j += 1
        pieces.append(quoted[i:j])
        i = j
    sets = "\n".join(f'            set ${name}{k} "{p}";' for k, p in enumerate(pieces))
    return sets, "".join(f"${name}{k}" for k in range(len(pieces)))


def nginx_config(workdir: Path, port: int) -> Path:
    chat = shapes.chat_completion()
    events = shapes.stream_events()
    sse = shapes.sse_body()
    fields = {
        "DIR": str(workdir),
        "PORT": str(port),
        "CHAT_BYTES": str(len(chat)),
        "CHAT_BODY": _nginx_quote(chat),
        "STREAM_EVENTS": str(len(events)),
        "SSE_SET": _nginx_pieces("sse", sse)[0],
        "SSE_BODY": _nginx_pieces("sse", sse)[1],
        "EMBEDDING_BODY": _nginx_quote(shapes.embedding_response("text-embedding-3-small", 1, 256)),
        "GEMINI_BODY": _nginx_quote(shapes.gemini_response()),
        "GEMINI_SSE_SET": _nginx_pieces("gsse", shapes.gemini_sse_body())[0],
        "GEMINI_SSE_BODY": _nginx_pieces("gsse", shapes.gemini_sse_body())[1],
    }
    template = string.Template((HERE / "nginx.conf.template").read_text())
    conf = workdir / "nginx.conf"
    conf.write_text(template.substitute(fields))
    return conf


def start_nginx(workdir: Path, core: int | None) -> tuple[Proc, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise BenchError("nginx is not installed: apt-get install -y nginx-light")
    port = free_port()
    conf = nginx_config(workdir, port)
    cmd = pinned([nginx, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
                 core)
    proc = Proc("nginx", cmd, workdir / "nginx.out")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", proc)
    return proc, base


# --- fake upstream and bare forwarder --------------------------------------------------------


def start_fake_upstream(workdir: Path, python: str, core: int | None,
                        *args: str) -> tuple[Proc, str]:
    port = free_port()
    cmd = pinned([python, str(HERE / "fake_upstream.py"), "--port", str(port), *args], core)
    proc = Proc("fake upstream", cmd, workdir / "fake_upstream.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", proc)
    return proc, base


def start_bare(workdir: Path, python: str, core: int | None, upstream: str,
               wrapper: Sequence[str] = (), env: dict[str, str] | None = None,
               timeout: float = 30.0) -> tuple[Proc, str]:
    """The bare forwarder; `wrapper` and `env` as for Gateway."""
    port = free_port()
    cmd = pinned([*wrapper, python, str(HERE / "bare_forwarder.py"), "--port", str(port),
                  "--upstream", upstream], core)
    proc = Proc("bare forwarder", cmd, workdir / "bare.log",
                env={**os.environ, **env} if env else None)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/nothing", proc, timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return proc, base


# --- the gateway, everything on -----------------------------------------------------------------

CHAT_MODEL: Final = "bench/gpt-4o-mini"
STREAM_MODEL: Final = "bench-sse/gpt-4o-mini"
GEMINI_MODEL: Final = "bench-gemini/gemini-2.5-flash"  # bench target `gemini`


def gemini_toml(upstream: str) -> str:
    """The `gemini` bench target's provider and model (appended to the gateway's config)."""
    return "\n".join([
        "[providers.bench-gemini]", 'protocol = "gemini"',
        f"base_url = {json.dumps(upstream + '/v1beta')}",
        'api_key_env = "BENCH_UPSTREAM_KEY"', "", "[[models]]", f"id = {json.dumps(GEMINI_MODEL)}",
        'provider = "bench-gemini"', 'upstream = "gemini-2.5-flash"', "input_price = 0.30",
        "output_price = 2.50", "context_window = 1048576", "max_output_tokens = 65536", ""])
FALLBACK_POLICY: Final = "bench-fallback"


def gc_env(threshold: str | None, freeze: bool, log: bool,
           stall_ms: float | None = None) -> dict[str, str] | None:
    """The environment for a probe experiment (None: the gateway as it is)."""
    env = {}
    if stall_ms:
        env["BENCH_STALL_LOG"] = str(stall_ms)
    if threshold:
        env["BENCH_GC_THRESHOLD"] = threshold
    if freeze:
        env["BENCH_GC_FREEZE"] = "1"
    if log:
        env["BENCH_GC_LOG"] = "1"
    return env or None


def gateway_toml(port: int, data_dir: Path, database_url: str, redis_url: str | None,
                 namespace: str, chat_base: str, stream_base: str | None = None,
                 extra: str = "", max_connections: int = 1000) -> str:
    """Every feature the config can switch on today: PostgreSQL ledger and keys, Redis limits.

    `extra` is appended verbatim (bench.py --gateway-extra-toml), so sections that land later
    (metrics, cache, ...) can be switched on without editing this harness.
    """
    def q(s: str) -> str:
        return json.dumps(s)

    lines = [
        "# generated by loadtest/stack.py: the gateway with every feature on",
        'region = "global"',
        'host = "127.0.0.1"',
        f"port = {port}",
        "workers = 1",
        f"database_url = {q(database_url)}",
    ]
    if redis_url:
        lines += [f"redis_url = {q(redis_url)}", f"redis_namespace = {q(namespace)}"]
    lines += [
        f"data_dir = {q(str(data_dir))}",
        f"default_model = {q(CHAT_MODEL)}",
        "include_default_catalog = false",
        "",
    ]
    providers = {"bench": chat_base, "bench-sse": stream_base or chat_base}
    for name, base in providers.items():
        lines += [
            f"[providers.{name}]",
            'protocol = "openai"',
            f"base_url = {q(base)}",
            'api_key_env = "BENCH_UPSTREAM_KEY"',
            f"max_connections = {max_connections}  # the gateway's default is 1000",
            "",
        ]
    lines += [
        "[providers.bench-down]  # answers 503: the first step of the fallback policy",
        'protocol = "openai"',
        f"base_url = {q(chat_base)}",
        'api_key_env = "BENCH_UPSTREAM_KEY"',
        "",
    ]
    models = [(CHAT_MODEL, "bench", "gpt-4o-mini"), (STREAM_MODEL, "bench-sse", "gpt-4o-mini"),
              ("bench/down", "bench-down", "fail-503")]
    for mid, provider, upstream in models:
        lines += [
            "[[models]]",
            f"id = {q(mid)}",
            f"provider = {q(provider)}",
            f"upstream = {q(upstream)}",
            "input_price = 0.15",
            "output_price = 0.60",
            "cached_input_price = 0.075",
            "context_window = 128000",
            "max_output_tokens = 16384",
            "",
        ]
    lines += [
        "[[models]]",
        'id = "bench/text-embedding-3-small"',
        'provider = "bench"',
        'upstream = "text-embedding-3-small"',
        'kind = "embedding"',
        "input_price = 0.02",
        "",
        f"[policies.{FALLBACK_POLICY}]",
        'strategy = "fallback"',
        f'models = ["bench/down", {q(CHAT_MODEL)}]',
        "",
    ]
    return "\n".join(lines) + ("\n" + extra if extra else "")


def _psql(database_url: str, sql: str, python: str) -> None:
    """Run one statement on the server's `postgres` database (psql, else asyncpg)."""
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    if shutil.which("psql"):
        subprocess.run(["psql", admin, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
                       check=True, capture_output=True)
        return
    code = ("import asyncio, asyncpg, sys\n"
            "async def m():\n"
            " c = await asyncpg.connect(sys.argv[1]); await c.execute(sys.argv[2])\n"
            "asyncio.run(m())")
    subprocess.run([python, "-c", code, admin, sql], check=True, capture_output=True)


class Gateway:
    """The gateway started from a generated config, with a fresh database and its own key.

    `tree`: the checkout whose proxy/ runs (`python -m proxy serve` with cwd = tree puts
    it first on sys.path, whatever the venv's editable install points at). `wrapper`: a
    command the gateway runs under (count.py --tool callgrind: valgrind). `env`: added to its
    environment. The timeouts are for startup and for stopping (drain, last ledger flush).
    `key_limit_usd`: the user key's spend limit (None: a key with no limit at all).
    """

    def __init__(self, workdir: Path, python: str, core: int | None, chat_base: str,
                 stream_base: str | None, pg: str | None = PG_DEFAULT,
                 redis_url: str | None = REDIS_DEFAULT, extra_toml: str = "",
                 keep_db: bool = False, gc_env: dict[str, str] | None = None,
                 max_connections: int = 1000, tree: Path = REPO, wrapper: Sequence[str] = (),
                 env: dict[str, str] | None = None, start_timeout: float = 60.0,
                 stop_timeout: float = 15.0, key_limit_usd: float | None = 1_000_000) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.python = python
        self.keep_db = keep_db
        self.stop_timeout = stop_timeout
        self.tag = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        self.admin_key = (os.environ.get("PROXY_ADMIN_KEY")
                          or "sk-bench-admin-" + secrets.token_hex(8))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_name = f"proxy_bench_{self.tag}" if pg else ""
        self.database_url = (f"{pg}/{self.db_name}" if pg
                             else f"sqlite:///{workdir / 'gateway-data' / 'proxy.db'}")
        self.redis_url = redis_url
        self.namespace = f"bench-{self.tag}"
        self.features: dict[str, str] = {}
        self.key = self.admin_key
        if pg:
            _psql(self.database_url, f'CREATE DATABASE "{self.db_name}"', python)
        self.features["database"] = (f"PostgreSQL, fresh database {self.db_name}" if pg
                                     else "SQLite")
        self.features["redis"] = redis_url or "none (in-process)"
        config = workdir / "gateway.toml"
        config.write_text(gateway_toml(self.port, workdir / "gateway-data", self.database_url,
                                       redis_url, self.namespace, chat_base, stream_base,
                                       extra_toml, max_connections))
        self.config = config
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        full_env.update(PROXY_ADMIN_KEY=self.admin_key, PROXY_KEY_SECRET=secrets.token_hex(16),
                        BENCH_UPSTREAM_KEY="sk-bench-upstream", **(env or {}))
        if gc_env:  # garbage-collector experiments: gc_probe/sitecustomize.py reads these
            full_env.update(gc_env)
            full_env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(HERE / "gc_probe"), full_env.get("PYTHONPATH")]))
            self.features["gc experiment"] = ", ".join(f"{k}={v}" for k, v in gc_env.items())
        cmd = pinned([*wrapper, python, "-m", "proxy", "serve", "--config", str(config)], core)
        self.proc = Proc("gateway", cmd, workdir / "gateway.log", env=full_env, cwd=tree)
        try:
            wait_http(self.base + "/healthz", self.proc, timeout=start_timeout)
            self._create_key(key_limit_usd)
            self._check_endpoints()
        except BaseException:  # the process and the fresh database go too
            self.stop()
            raise

    def _create_key(self, limit_usd: float | None) -> None:
        """A user key with a spend limit (or none), through the admin API, when it exists."""
        body: dict[str, Any] = {"name": f"bench-{self.tag}", "labels": ["loadtest"]}
        if limit_usd is not None:
            body["limit"] = limit_usd
        status, _, data = http("POST", self.base + "/v1/api-keys", body, self.admin_key)
        if status in (200, 201):
            created = json.loads(data)
            self.key = created["key"]
            self.features["auth"] = (f"user key {created.get('id', '?')} created via "
                                     "POST /v1/api-keys")
            self.features["spend limit"] = (f"USD {created['limit']} on that key"
                                            if created.get("limit") is not None
                                            else "none on that key (nothing to enforce)")
        elif status in (404, 405, 501):
            self.features["auth"] = f"admin key (POST /v1/api-keys answered {status})"
            self.features["spend limit"] = "none (needs a user key)"
        else:
            raise BenchError(f"POST /v1/api-keys answered {status}: {data[:300]!r}")

    def _check_endpoints(self) -> None:
        status, _, _ = http("GET", self.base + "/metrics")
        self.features["metrics"] = "on (/metrics 200)" if status == 200 else f"/metrics {status}"
        status, _, _ = http("GET", self.base + "/readyz")
        self.features["readyz"] = str(status)

    def usage_report(self) -> str:
        """What the ledger saw, from the usage API (it answers 501 until the ledger lands)."""
        status, _, data = http("GET", self.base + "/v1/organization/usage?group_by=status",
                               key=self.admin_key, timeout=30)
        if status != 200:
            return f"/v1/organization/usage answered {status}"
        report = json.loads(data)
        rows = ", ".join(f"{r.get('status')}: {r.get('requests')}"
                         for r in report.get("breakdown", []))
        return (f"{report.get('total_requests')} requests, USD {report.get('total_cost')} "
                f"by status: {rows}")

    def gc_report(self) -> str | None:
        """gc_probe's totals line, once the gateway has exited."""
        for line in self.proc.log.read_text(errors="replace").splitlines():
            if line.startswith("gc_probe: totals"):
                return line.removeprefix("gc_probe: ")
        return None

    def errors_logged(self) -> list[str]:
        return [ln for ln in self.proc.log.read_text(errors="replace").splitlines()
                if " ERROR " in ln or "Traceback" in ln]

    def stop(self) -> None:
        self.proc.stop(timeout=self.stop_timeout)
        if self.redis_url and shutil.which("redis-cli"):
            host_port = self.redis_url.split("//", 1)[1].split("/", 1)[0]
            host, _, port = host_port.rpartition(":")
            keys = subprocess.run(["redis-cli", "-h", host, "-p", port or "6379", "--scan",
                                   "--pattern", f"{self.namespace}*"],
                                  capture_output=True, text=True, check=False).stdout.split()
            for i in range(0, len(keys), 500):
                subprocess.run(["redis-cli", "-h", host, "-p", port or "6379", "del",
                                *keys[i:i + 500]], capture_output=True, check=False)
        if self.db_name and not self.keep_db:
            try:
                _psql(self.database_url, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)',
                      self.python)
            except subprocess.CalledProcessError:
                pass


# --- LiteLLM --------------------------------------------------------------------------------


def litellm_config(chat_base: str, stream_base: str, master_key: str) -> str:
    return f"""# generated by loadtest/stack.py: LiteLLM's proxy in front of the same upstream
# (no database: the master key authenticates; LiteLLM refuses to start without one)
general_settings:
  master_key: {master_key}
model_list:
  - model_name: bench-gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {chat_base}
      api_key: sk-bench-upstream
  - model_name: bench-sse-gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {stream_base}
      api_key: sk-bench-upstream
litellm_settings:
  telemetry: false
  set_verbose: false
  drop_params: true
"""


def start_litellm(workdir: Path, venv: str, core: int | None, chat_base: str,
                  stream_base: str) -> tuple[Proc, str, str]:
    """Returns the process, its base URL and the master key to call it with."""
    exe = Path(venv) / "bin" / "litellm"
    if not exe.exists():
        raise BenchError(f"{exe} not found: python3 -m venv {venv} && "
                         f"{venv}/bin/pip install 'litellm[proxy]'")
    config = workdir / "litellm.yaml"
    master_key = "sk-" + secrets.token_hex(32)
    config.write_text(litellm_config(chat_base, stream_base, master_key))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "OPENAI"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
               LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION", DO_NOT_TRACK="1")
    cmd = pinned([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                  "--num_workers", "1", "--telemetry", "False"], core)
    proc = Proc("litellm", cmd, workdir / "litellm.log", env=env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health/liveliness", proc, timeout=180)
    return proc, base, master_key


# --- the machine and the versions ------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "n/a"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    version_file = Path("/etc/debian_version")
    debian = version_file.read_text().strip() if version_file.exists() else "?"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"Debian {debian}, kernel {platform.release()}",
        "loadavg at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def versions(gateway_python: str, litellm_venv: str | None) -> dict[str, str]:
    code = ("import sys, aiohttp, uvloop, msgspec; "
            "print(sys.version.split()[0], aiohttp.__version__, uvloop.__version__, "
            "msgspec.__version__)")
    out = _first_line([gateway_python, "-c", code]).split()
    v = {}
    if len(out) == 4:
        v["gateway stack"] = f"Python {out[0]}, aiohttp {out[1]}, uvloop {out[2]}, msgspec {out[3]}"
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"],
                           capture_output=True, text=True, check=False).stdout.strip()
    v["gateway commit"] = commit + (" (proxy/ has uncommitted changes)" if dirty else "")
    v["nginx"] = _first_line(["nginx", "-v"]).replace("nginx version: ", "")
    v["wrk"] = re.sub(r"\s*\[.*", "", _first_line(["wrk", "-v"]))
    if litellm_venv:
        py = Path(litellm_venv) / "bin" / "python"
        if py.exists():
            code = "import importlib.metadata as m; print(m.version('litellm'))"
            v["litellm"] = _first_line([str(py), "-c", code])
    v["harness python"] = sys.version.split()[0]
    return v
