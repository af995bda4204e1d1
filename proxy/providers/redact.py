"""Provider error text made safe to show a client.

A provider's error message may reflect what it was sent or where it runs: "Incorrect API
key provided: Bearer sk-...", "upstream 10.1.2.3:8443 refused". Before such text reaches a
client, anything that looks like a credential or an internal address is replaced. The
patterns err on the side of hiding: a version number shaped like an IPv4 address is lost
from an error message, a leaked key is not. This runs on error paths only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

SECRET: Final = "[redacted]"
ADDRESS: Final = "[address]"

# Schemes and key=value pairs: what follows is the secret, the label stays readable.
_LABELLED: Final = re.compile(
    r"(?i)\b(bearer|basic|token|api[_-]?key|x-api-key|authorization|secret|password|"
    r"access[_-]?token|key)(\s*[:=]\s*[\"']?|\s+)(?=[^\s\"',;]*[0-9_\-])[^\s\"',;&]{6,}"
)
_KEYS: Final = re.compile(
    r"\b(?:"
    r"(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}"  # OpenAI, Anthropic (sk-ant-...), and their look-alikes
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_\-]{30,}"  # Google API key
    r"|(?:gsk|xai|hf|ghp|gho|ghs|glpat|r8)[_-][A-Za-z0-9_\-]{16,}"
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"  # a JWT
    r")"
)
# Any long opaque run with letters and digits: most keys, whatever their prefix.
_OPAQUE: Final = re.compile(r"(?<![\w\-])(?=[\w\-]*\d)(?=[\w\-]*[A-Za-z])[\w\-]{32,}(?![\w\-])")
_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")
_IPV6: Final = re.compile(
    r"(?<![\w:.])\[?(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}\]?(?::\d{1,5})?")
_INTERNAL_HOST: Final = re.compile(
    r"(?i)(?<![\w\-.])(?:[a-z0-9\-]+\.)*(?:localhost|[a-z0-9\-]+\.(?:internal|local|localdomain|"
    r"lan|corp|intranet|home\.arpa|svc|cluster\.local))(?::\d{1,5})?(?![\w\-])"
)


def _ipv6(m: re.Match[str]) -> str:
    text = m.group(0)
    # "12:30:45" is a time, "a::b" or five groups an address.
    return ADDRESS if "::" in text or text.count(":") >= 4 else text


class Redactor:
    """Replaces credentials and internal addresses in text; `literals` are replaced as
    they are first (the provider's own key and upstream host, known exactly)."""

    __slots__ = ("_literals",)

    def __init__(self, literals: Iterable[tuple[str, str]] = ()) -> None:
        # Longest first, so a key is not half-replaced by a shorter literal inside it.
        self._literals = tuple(
            sorted({(s, r) for s, r in literals if len(s) >= 4}, key=lambda p: -len(p[0]))
        )

    @classmethod
    def for_provider(cls, base_url: str, api_key: str | None) -> Redactor:
        literals = [(api_key, SECRET)] if api_key else []
        host = urlsplit(base_url).hostname if base_url else None
        if host:
            literals.append((host, ADDRESS))
        return cls(literals)

    def __call__(self, text: str) -> str:
        for literal, replacement in self._literals:
            text = text.replace(literal, replacement)
        text = _LABELLED.sub(lambda m: m.group(1) + m.group(2) + SECRET, text)
        text = _KEYS.sub(SECRET, text)
        text = _OPAQUE.sub(SECRET, text)
        text = _IPV4.sub(ADDRESS, text)
        text = _IPV6.sub(_ipv6, text)
        return _INTERNAL_HOST.sub(ADDRESS, text)


PATTERNS_ONLY: Final = Redactor()
