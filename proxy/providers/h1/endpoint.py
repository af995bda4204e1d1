"""One upstream URL and its fixed headers, encoded to bytes once per provider.

A request is then a single concatenation: header block, body length, body.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

Key = tuple[str, str, int]  # scheme, host, port: what a pooled connection is good for


class Endpoint:
    __slots__ = ("_head", "host", "key", "port", "tls")

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream URL must be http:// or https:// with a host")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.key: Key = (parts.scheme, self.host, self.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # No Accept-Encoding (answers come uncompressed) and no User-Agent, as before.
        lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}"]
        for name, value in headers.items():
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"the {name} header contains a line break")
            lines.append(f"{name}: {value}")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    def encode(self, body: bytes) -> bytes:
        """The whole request: head and body, for one `transport.write`."""
        return b"%b%d\r\n\r\n%b" % (self._head, len(body), body)
