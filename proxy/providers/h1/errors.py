"""What the upstream client raises besides `TimeoutError` (a call past its deadline).

The messages may name the upstream address: they go to logs, never to the client, whose
message `providers.http.transport_error` writes from the exception's type alone.
"""

from __future__ import annotations


class H1Error(Exception):
    """Any failure of an upstream HTTP call other than a timeout."""


class ConnectError(H1Error):
    """No connection could be made: DNS, refused, unreachable, TLS handshake."""


class ConnectionLost(H1Error):
    """The connection closed before the response was complete."""


class BadResponse(H1Error):
    """The upstream's bytes are not a valid HTTP/1.1 response (or a corrupt compressed body)."""
