"""What the upstream client raises besides `TimeoutError` (a call past its deadline).

The messages may name the upstream address: they go to logs, never to the client, whose
message `providers.http.transport_error` writes from the exception's type and, for a
failed connection, its `reason` (which names no address and no secret).
"""

from __future__ import annotations

import socket
import ssl
from typing import Final

# OpenSSL's X509_V_ERR_* codes that an operator needs told apart, in words.
_VERIFY_REASONS: Final = {
    62: "the certificate does not match the host name",
    10: "the certificate has expired",
    9: "the certificate is not yet valid",
    18: "the certificate is self-signed",
    19: "the certificate chain ends in an unknown certificate authority",
    20: "the certificate is signed by an unknown certificate authority",
    21: "the certificate is signed by an unknown certificate authority",
    2: "the certificate is signed by an unknown certificate authority",
    23: "the certificate has been revoked",
}


class H1Error(Exception):
    """Any failure of an upstream HTTP call other than a timeout."""


class ConnectError(H1Error):
    """No connection could be made: DNS, refused, unreachable, TLS handshake, proxy.

    `reason` says why in words safe to show anyone (no address, no secret); `kind` is a
    label for metrics: "connect", "tls" or "proxy".
    """

    def __init__(self, message: str, reason: str = "", kind: str = "connect") -> None:
        super().__init__(message)
        self.reason = reason
        self.kind = kind


class ConnectionLost(H1Error):
    """The connection closed before the response was complete."""


class BadResponse(H1Error):
    """The upstream's bytes are not a valid HTTP/1.1 response (or a corrupt compressed body)."""


class ResponseTooLarge(BadResponse):
    """The response's headers or body are over the client's cap; the connection is closed."""


def describe(exc: BaseException) -> tuple[str, str]:
    """Why a connection attempt failed: (reason in words, kind). Never the address."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS: " + _VERIFY_REASONS.get(
            exc.verify_code, "the certificate could not be verified"
        ), "tls"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: the handshake failed ({exc.reason or type(exc).__name__})", "tls"
    if isinstance(exc, socket.gaierror):
        return "the host name could not be resolved", "connect"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused", "connect"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset", "connect"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower(), "connect"
    return type(exc).__name__, "connect"
