"""One upstream URL and its fixed headers, encoded to bytes once per provider.

A request is then a single concatenation: header block, body length, body.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

Key = tuple[str, str, int]  # scheme, host, port: what a pooled connection is good for


class Endpoint:
    __slots__ = ("_forwarded", "_head", "_lines", "host", "key", "port", "tls", "url")

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream URL must be http:// or https:// with a host")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.key: Key = (parts.scheme, self.host, self.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rpartition("@")[2]
        self.url = f"{parts.scheme}://{netloc}{target}"  # for a proxy's request line
        # No Accept-Encoding (answers come uncompressed) and no User-Agent, as before.
        lines = [f"Host: {netloc}"]
        for name, value in headers.items():
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"the {name} header contains a line break")
            lines.append(f"{name}: {value}")
        self._lines = lines
        self._head = self._encode_head(f"POST {target} HTTP/1.1", lines)
        self._forwarded: tuple[str | None, bytes] | None = None

    @staticmethod
    def _encode_head(request_line: str, lines: list[str]) -> bytes:
        return ("\r\n".join([request_line, *lines]) + "\r\nContent-Length: ").encode("latin-1")

    def encode(self, body: bytes) -> bytes:
        """The whole request: head and body, for one `transport.write`."""
        return b"%b%d\r\n\r\n%b" % (self._head, len(body), body)

    def encode_forwarded(self, body: bytes, proxy_authorization: str | None) -> bytes:
        """The request as a forwarding proxy takes it: the absolute URL in the request
        line, and the proxy's credentials (http upstreams only; https ones are tunnelled)."""
        cached = self._forwarded
        if cached is None or cached[0] != proxy_authorization:
            lines = list(self._lines)
            if proxy_authorization:
                lines.append(f"Proxy-Authorization: {proxy_authorization}")
            cached = self._forwarded = (
                proxy_authorization, self._encode_head(f"POST {self.url} HTTP/1.1", lines)
            )
        return b"%b%d\r\n\r\n%b" % (cached[1], len(body), body)
