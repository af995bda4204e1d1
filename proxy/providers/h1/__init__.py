"""A lean HTTP/1.1 client for the upstream calls, in place of aiohttp's `ClientSession`.

Why: under load aiohttp's client cost about 48 µs of CPU per upstream call, a fifth of the
gateway's own cost, for features the gateway never uses (cookies, redirects, proxies,
multipart, tracing signals, per-request timeout objects). The upstream calls are all the
same shape: one POST of a JSON body to a few fixed URLs. So a request here is one
precomputed header block plus the body, written once; the response is parsed by httptools
(llhttp, the C parser behind uvloop's and uvicorn's HTTP) and its body handed on chunk by
chunk as the socket delivers it.

`Pool` owns the keep-alive connections of one provider; `Endpoint` is one encoded URL;
`Response` is what `Pool.post` returns. Failures raise `TimeoutError` or an `H1Error`.
`Proxies` (from `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`) routes connections through a proxy.
"""

from .endpoint import Endpoint
from .errors import BadResponse, ConnectError, ConnectionLost, H1Error, ResponseTooLarge
from .pool import DEFAULT_MAX_BODY_BYTES, Pool
from .proxy import Proxies, Proxy
from .response import Response

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BadResponse",
    "ConnectError",
    "ConnectionLost",
    "Endpoint",
    "H1Error",
    "Pool",
    "Proxies",
    "Proxy",
    "Response",
    "ResponseTooLarge",
]
