"""Egress through an HTTP proxy, as `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` say.

Where a network lets traffic out only through a proxy, an https upstream is reached
through a CONNECT tunnel (the TLS session is the gateway's own, end to end, checked as
without a proxy), and an http upstream through the proxy's forwarding (the request line
names the absolute URL). The variables are read once, when a provider starts; the
lower-case spelling wins over the upper-case one, as curl and urllib do. Only http://
proxies are supported. `NO_PROXY` is a comma-separated list of host names (a name also
covers its subdomains; a leading `.` or `*.` is the same), `host:port`, IP addresses or
CIDR ranges, or `*` for every host. Proxy credentials in the URL (`http://user:pass@proxy:3128`) are
sent as `Proxy-Authorization: Basic`, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from .errors import ConnectError

_MAX_CONNECT_REPLY = 16 * 1024  # a CONNECT reply's head; more is not a proxy speaking


class Proxy:
    """One proxy server: where it is, and the `Proxy-Authorization` value if any."""

    __slots__ = ("authorization", "host", "port")

    def __init__(self, host: str, port: int, authorization: str | None) -> None:
        self.host = host
        self.port = port
        self.authorization = authorization

    @classmethod
    def parse(cls, url: str, variable: str) -> Proxy:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"{variable}: only http:// proxies are supported, with a host"
            )
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, parts.port or 80, auth)


class Proxies:
    """Which proxy, if any, serves a given upstream host."""

    __slots__ = ("_http", "_https", "_no_proxy")

    def __init__(self, http: Proxy | None, https: Proxy | None, no_proxy: str = "") -> None:
        self._http = http
        self._https = https
        self._no_proxy = no_proxy

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Proxies | None:
        """None when no proxy variable is set: the pool then skips every proxy check."""
        def get(name: str) -> tuple[str, str] | None:
            for var in (name.lower(), name.upper()):
                if env.get(var):
                    return env[var], var
            return None

        found = {name: get(name) for name in ("http_proxy", "https_proxy")}
        if not any(found.values()):
            return None
        http, https = (
            Proxy.parse(*value) if value else None
            for value in (found["http_proxy"], found["https_proxy"])
        )
        no = get("no_proxy")
        return cls(http, https, no[0] if no else "")

    def for_host(self, host: str, port: int, tls: bool) -> Proxy | None:
        proxy = self._https if tls else self._http
        if proxy is None or bypassed(self._no_proxy, host, port):
            return None
        return proxy


def bypassed(no_proxy: str, host: str, port: int) -> bool:
    """Whether `NO_PROXY` names `host` (and `port`, where an entry gives one)."""
    host = host.lower().rstrip(".")
    address = None
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host.strip("[]"))
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, sep, entry_port = entry.rpartition(":")
        if sep and entry_port.isdigit() and "]" not in entry_port and name.count(":") == 0:
            if int(entry_port) != port:
                continue
            entry = name
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            continue
        entry = entry.removeprefix("*").lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


async def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A socket to `proxy` on which a CONNECT to `host:port` succeeded: the caller starts
    TLS on it. Failures raise `ConnectError` naming the proxy's answer, not its address."""
    loop = asyncio.get_running_loop()
    sock = await _connect(loop, proxy)
    try:
        target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        # The reply is read to the end of its head and no further: after a 200 the proxy
        # is silent until the client's TLS hello, so nothing of the tunnel is consumed.
        while b"\r\n\r\n" not in head:
            data = await loop.sock_recv(sock, 1024)
            if not data:
                raise ConnectError("the proxy closed the connection during CONNECT",
                                   "the proxy closed the connection", "proxy")
            head += data
            if len(head) > _MAX_CONNECT_REPLY:
                raise ConnectError("the proxy's CONNECT reply is too long",
                                   "the proxy sent an invalid reply", "proxy")
        status_line = head.split(b"\r\n", 1)[0].split(None, 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if not 200 <= status < 300:
            raise ConnectError(f"the proxy refused CONNECT with status {status}",
                               f"the proxy refused the tunnel (status {status})", "proxy")
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, proxy: Proxy) -> socket.socket:
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConnectError(f"could not resolve the proxy {proxy.host}",
                           "the proxy's host name could not be resolved", "proxy") from e
    error: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as e:
            sock.close()
            error = e
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise ConnectError(f"could not connect to the proxy {proxy.host}:{proxy.port}",
                       "could not connect to the proxy", "proxy") from error
