"""Typed settings: TOML file + environment overrides, validated once at start.

Every problem is reported as one line naming the file, the key and what is wrong
(`ConfigError`); `python -m proxy` prints it and exits with status 2.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

REGIONS: Final = ("global", "eu")
DEFAULT_CATALOG: Final = Path(__file__).resolve().parent.parent / "schemas" / "models.toml"

Protocol = Literal["openai", "anthropic", "simulated", "azure", "bedrock", "gemini", "vertex"]
Strategy = Literal["fallback", "loadbalance", "latency"]


class ConfigError(Exception):
    """A bad setting: the message names the file, the key and the problem."""


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ProviderConfig(_Strict, frozen=True):
    protocol: Protocol
    base_url: str = ""
    api_key_env: str | None = None
    regions: tuple[str, ...] = REGIONS
    timeout_s: float = 600.0  # total time for one upstream call
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 120.0  # a stalled first token counts as a timeout
    max_connections: int = 1000
    # Upstream client (`providers/h1`): a PEM bundle of the CAs trusted for this provider
    # instead of the system's store; the cap on a non-streamed response body (a bigger
    # one is a 502; streams are not capped, they are relayed as they come).
    ca_file: str | None = None
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    # simulated protocol only: pacing and fixed latency
    tokens_per_second: float = 0.0
    latency_ms: float = 0.0
    # openai protocol only: the provider serves OpenAI's Responses API (`/responses`), so
    # `/v1/responses` requests pass through to it instead of being translated to chat.
    responses_api: bool = False
    # azure: the `api-version` query parameter (e.g. "2024-10-21"); bedrock: the AWS region
    # (e.g. "eu-central-1") requests are signed for, and whose endpoint is the default base_url.
    api_version: str | None = None
    aws_region: str | None = None
    # vertex protocol only: the Google Cloud project (default: the credentials' project)
    # and location (a region, or "global"); base_url defaults to the location's endpoint.
    gcp_project: str | None = None
    gcp_location: str | None = None


class ModelConfig(_Strict, frozen=True):
    id: str
    provider: str
    upstream: str
    kind: Literal["chat", "embedding"] = "chat"
    input_price: float = 0.0  # USD per million prompt tokens
    output_price: float = 0.0  # USD per million completion tokens
    cached_input_price: float | None = None  # cache-read prompt tokens
    cache_write_price: float | None = None  # cache-write prompt tokens (Anthropic)
    context_window: int = 0
    max_output_tokens: int = 4096
    # Other names clients send for this model (Claude Code sends Anthropic's own ids, such
    # as `claude-sonnet-4-5-20250929`); unique across the catalog's ids and aliases.
    aliases: tuple[str, ...] = ()
    # vertex protocol only: whose model it is; by default `claude-...` is Anthropic's.
    publisher: Literal["google", "anthropic"] | None = None


class PolicyConfig(_Strict, frozen=True):
    strategy: Strategy
    models: tuple[str, ...]
    weights: tuple[float, ...] | None = None  # loadbalance only
    retries: int = 0  # per step, 0..10
    deadline_s: float = 120.0


class LimitsConfig(_Strict, frozen=True):
    fail_closed: bool = False  # refuse requests while Redis is unreachable
    # A reservation whose request never settles (a crashed worker) is charged at its
    # estimate this long after admission: longer than any request may take.
    reservation_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    sweep_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    snapshot_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0  # durable spend floor
    # Leases (with Redis; `limits/leases.py`): for a key with only a spend limit, a worker
    # reserves up to this many worst cases in one call and admits requests from them without
    # a round trip (0: every request reserves its own). What is unused goes back after lease_s.
    lease_requests: Annotated[int, msgspec.Meta(ge=0)] = 32
    lease_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class LedgerConfig(_Strict, frozen=True):
    flush_rows: int = 1000
    flush_interval_ms: int = 200
    queue_limit: int = 100_000  # past this, records go to the spool file, not to RAM
    spool_dir: str = ""  # default: <data_dir>/spool
    # "database" (the configured database_url). "memory" keeps records in the process and
    # loses them at exit: only for measuring what metering costs the request path.
    store: Literal["database", "memory"] = "database"


class CacheConfig(_Strict, frozen=True):
    ttl_s: int = 3600
    max_bytes: int = 64 * 1024 * 1024  # in-process LRU bound
    models: tuple[str, ...] = ()  # models whose requests are always cached


class IdempotencyConfig(_Strict, frozen=True):
    # How long a complete answer is replayed to a repeat of its `Idempotency-Key` (Stripe: 24 h).
    retention_s: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024  # in-process store bound


# The HTTP edge (proxy/edge.py): timeouts and a connection cap for slow or abandoned clients.
class EdgeConfig(_Strict, frozen=True):
    # From the connection's first byte (or the first byte of a keep-alive connection's next
    # request) until its request headers are complete: past it, 408 and close.
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # From the headers until the whole body has arrived: past it, 408 and close.
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # An idle keep-alive connection (and a new one that sends nothing) is closed after this;
    # longer than a load balancer's idle timeout (60 s on most), so the balancer closes first.
    keepalive_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 75.0
    # Open client connections per worker; past it a new connection gets 503 and is closed.
    # 0: half of what the file-descriptor limit leaves after a reserve (`edge.py`), so the
    # database, Redis, upstream connections and spool files always find a descriptor.
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0


class Settings(_Strict, frozen=True):
    region: str = "global"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    database_url: str = "sqlite:///proxy-data/proxy.db"
    redis_url: str | None = None
    redis_namespace: str = "proxy"  # prefix of every Redis key; lets instances share a Redis
    data_dir: str = "proxy-data"
    default_model: str = "openai/gpt-4o-mini"
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_grace_s: float = 30.0
    include_default_catalog: bool = True
    access_log: bool = True
    providers: dict[str, ProviderConfig] = {}
    models: tuple[ModelConfig, ...] = ()
    policies: dict[str, PolicyConfig] = {}
    limits: LimitsConfig = LimitsConfig()
    ledger: LedgerConfig = LedgerConfig()
    cache: CacheConfig = CacheConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    edge: EdgeConfig = EdgeConfig()
    # Never read from the file: these come from the environment only.
    admin_key: str | None = None
    source: str = "<defaults>"


_ENV_OVERRIDES: Final = {
    "PROXY_DATABASE_URL": "database_url",
    "PROXY_REDIS_URL": "redis_url",
    "PROXY_REGION": "region",
    "PROXY_HOST": "host",
    "PROXY_PORT": "port",
    "PROXY_WORKERS": "workers",
    "PROXY_DATA_DIR": "data_dir",
}
_INT_KEYS: Final = {"port", "workers"}
_PATH_RE: Final = re.compile(r"at `\$(.*)`")
_API_VERSION_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_AZURE_STREAM_USAGE_SINCE: Final = "2024-09-01"
_AWS_REGION_RE: Final = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}")


def load_settings(
    path: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), apply environment and CLI overrides, validate."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("PROXY_CONFIG") or None
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path:
        source = path
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        for forbidden in ("admin_key", "source"):
            if forbidden in raw:
                raise ConfigError(
                    f"{path}: key `{forbidden}`: not allowed in the file"
                    + ("; set PROXY_ADMIN_KEY in the environment"
                       if forbidden == "admin_key" else "")
                )
    for var, key in _ENV_OVERRIDES.items():
        if env.get(var):
            value: Any = env[var]
            if key in _INT_KEYS:
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(
                        f"environment: {var}: expected an integer, got {value!r}") from None
            raw[key] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    if env.get("PROXY_ADMIN_KEY"):
        raw["admin_key"] = env["PROXY_ADMIN_KEY"]
    raw["source"] = source
    try:
        settings = msgspec.convert(raw, Settings, str_keys=True)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None
    if settings.include_default_catalog:
        settings = _merge_default_catalog(settings)
    _validate(settings)
    return settings


def _describe(e: msgspec.ValidationError) -> str:
    """Turn msgspec's `... - at `$.providers.x.timeout_s``
    into `key `providers.x.timeout_s`: ...`."""
    text = str(e)
    m = _PATH_RE.search(text)
    if not m:
        return text
    key = m.group(1).lstrip(".").replace("`", "")
    problem = text[: m.start()].rstrip(" -")
    problem = problem.replace("`", "")
    return f"key `{key}`: {problem}" if key else problem


def _merge_default_catalog(settings: Settings) -> Settings:
    with open(DEFAULT_CATALOG, "rb") as f:
        raw = tomllib.load(f)
    try:
        base_providers = msgspec.convert(raw.get("providers", {}), dict[str, ProviderConfig])
        base_models = msgspec.convert(raw.get("models", []), list[ModelConfig])
    except msgspec.ValidationError as e:  # pragma: no cover - the shipped file is tested
        raise ConfigError(f"{DEFAULT_CATALOG}: {_describe(e)}") from None
    providers = {**base_providers, **settings.providers}
    own = {m.id for m in settings.models}
    # An alias the file gives one of its own models is taken from the default catalog's.
    claimed = {a for m in settings.models for a in m.aliases} | own
    base = tuple(
        msgspec.structs.replace(m, aliases=tuple(a for a in m.aliases if a not in claimed))
        if claimed.intersection(m.aliases) else m
        for m in base_models if m.id not in own
    )
    models = base + settings.models
    return msgspec.structs.replace(settings, providers=providers, models=models)


def _validate(s: Settings) -> None:
    src = s.source

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{src}: key `{key}`: {problem}")

    if s.region not in REGIONS:
        fail("region", f"must be one of {', '.join(REGIONS)}, got {s.region!r}")
    if not 0 < s.port < 65536:
        fail("port", f"must be between 1 and 65535, got {s.port}")
    if s.workers < 1:
        fail("workers", f"must be at least 1, got {s.workers}")
    if s.workers > 1 and not s.redis_url:
        fail(
            "workers",
            f"{s.workers} workers need redis_url (or PROXY_REDIS_URL): without Redis each worker "
            "would keep its own spend and rate-limit counters",
        )
    if not (s.database_url.startswith(("postgresql://", "postgres://", "sqlite:///"))):
        fail("database_url", "must start with postgresql:// or sqlite:///")
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        fail("redis_url", "must start with redis://, rediss:// or unix://")
    if s.max_body_bytes < 1024:
        fail("max_body_bytes", "must be at least 1024")
    for name, p in s.providers.items():
        for r in p.regions:
            if r not in REGIONS:
                fail(f"providers.{name}.regions", f"unknown region {r!r}")
        _validate_cloud(f"providers.{name}", p, fail)
        # bedrock and vertex: the region's or location's endpoint by default
        has_default_url = p.protocol in ("bedrock", "vertex") and not p.base_url
        if p.protocol != "simulated" and not has_default_url and not p.base_url.startswith(
            ("http://", "https://")
        ):
            fail(f"providers.{name}.base_url", "must be an http:// or https:// URL")
        _validate_gcp(f"providers.{name}", p, fail)
        if p.timeout_s <= 0 or p.connect_timeout_s <= 0 or p.first_byte_timeout_s <= 0:
            fail(f"providers.{name}", "timeouts must be positive")
        if p.ca_file is not None and not os.access(p.ca_file, os.R_OK):
            fail(f"providers.{name}.ca_file", f"cannot read {p.ca_file!r}")
    seen: set[str] = set()
    for i, m in enumerate(s.models):
        if m.id in seen:
            fail(f"models[{i}].id", f"duplicate model id {m.id!r}")
        seen.add(m.id)
        if m.provider not in s.providers:
            fail(f"models[{i}].provider", f"model {m.id!r} names unknown provider {m.provider!r}")
        if min(m.input_price, m.output_price) < 0:
            fail(f"models[{i}]", f"model {m.id!r} has a negative price")
    ids = {m.id for m in s.models}
    aliases: set[str] = set()
    for i, m in enumerate(s.models):
        for alias in m.aliases:
            if alias in ids or alias in aliases or not alias:
                fail(f"models[{i}].aliases", f"alias {alias!r} of model {m.id!r} is empty or "
                     "already names a model or another alias")
            aliases.add(alias)
        if m.publisher is not None and s.providers[m.provider].protocol != "vertex":
            fail(f"models[{i}].publisher", "only a vertex provider's models take a publisher")
    for name, pol in s.policies.items():
        key = f"policies.{name}"
        if not pol.models:
            fail(f"{key}.models", "must name at least one model")
        if len(set(pol.models)) != len(pol.models):
            fail(f"{key}.models", "lists a model twice")
        for mid in pol.models:
            if mid not in seen:
                fail(f"{key}.models", f"unknown model {mid!r}")
        if pol.weights is not None:
            if pol.strategy != "loadbalance":
                fail(f"{key}.weights", "only a loadbalance policy takes weights")
            if len(pol.weights) != len(pol.models) or any(w < 0 for w in pol.weights):
                fail(f"{key}.weights", "needs one non-negative weight per model")
            if sum(pol.weights) <= 0:
                fail(f"{key}.weights", "must not all be zero")
        if not 0 <= pol.retries <= 10:
            fail(f"{key}.retries", "must be between 0 and 10")
    if s.default_model not in seen and not (
        s.default_model.startswith("policy/") and s.default_model[7:] in s.policies
    ):
        fail("default_model", f"unknown model {s.default_model!r}")


def _validate_cloud(key: str, p: ProviderConfig, fail: Callable[[str, str], None]) -> None:
    """`api_version` (azure) and `aws_region` (bedrock): required by their protocol,
    refused by the others, so a misplaced key is not silently ignored."""
    if p.protocol == "azure":
        if not p.api_version:
            fail(f"{key}.api_version", 'is required for protocol "azure" (e.g. "2024-10-21")')
        elif not _API_VERSION_RE.fullmatch(p.api_version):
            fail(f"{key}.api_version", f"must look like 2024-10-21, got {p.api_version!r}")
        elif p.api_version < _AZURE_STREAM_USAGE_SINCE:
            # Every stream asks for its usage (stream_options.include_usage), to be metered.
            fail(f"{key}.api_version", f"must be {_AZURE_STREAM_USAGE_SINCE} or later: older "
                 "versions refuse stream_options, which metering streams needs")
    elif p.api_version is not None:
        fail(f"{key}.api_version", 'applies only to protocol "azure"')
    if p.protocol == "bedrock":
        if not p.aws_region:
            fail(f"{key}.aws_region", 'is required for protocol "bedrock" (e.g. "eu-central-1")')
        elif not _AWS_REGION_RE.fullmatch(p.aws_region):
            fail(f"{key}.aws_region",
                 f"must be an AWS region such as eu-central-1, got {p.aws_region!r}")
    elif p.aws_region is not None:
        fail(f"{key}.aws_region", 'applies only to protocol "bedrock"')


# A project id or number, a location: each goes into a URL path (and the location into the
# default host name), so nothing that could change the URL's shape.
_GCP_PROJECT: Final = re.compile(r"[a-z0-9][a-z0-9.:\-]{0,62}")
_GCP_LOCATION: Final = re.compile(r"[a-z][a-z0-9\-]{0,62}")


def _validate_gcp(key: str, p: ProviderConfig, fail: Callable[[str, str], None]) -> None:
    if p.protocol != "vertex":
        if p.gcp_project is not None:
            fail(f"{key}.gcp_project", "only a vertex provider takes it")
        if p.gcp_location is not None:
            fail(f"{key}.gcp_location", "only a vertex provider takes it")
        return
    if p.gcp_project is not None and not _GCP_PROJECT.fullmatch(p.gcp_project):
        fail(f"{key}.gcp_project", "must be a Google Cloud project id (lower-case letters, "
             "digits, hyphens), or be left out for the credentials' own project")
    if p.gcp_location is None or not _GCP_LOCATION.fullmatch(p.gcp_location):
        fail(f"{key}.gcp_location", "a vertex provider needs its location, such as "
             "europe-west4 or global")
