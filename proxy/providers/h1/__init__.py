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
"""

from .endpoint import Endpoint
from .errors import BadResponse, ConnectError, ConnectionLost, H1Error
from .pool import Pool
from .response import Response

__all__ = [
    "BadResponse",
    "ConnectError",
    "ConnectionLost",
    "Endpoint",
    "H1Error",
    "Pool",
    "Response",
]
