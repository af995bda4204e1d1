"""Client-visible errors: one exception type each, mapped to a status and OpenAI's error body.

Handlers raise these; the error middleware turns them into
`{"error": {"message", "type", "code", "param"}}` with the right status. Anything else
becomes a bare 500 with no detail (the traceback goes to the log only).
"""

from __future__ import annotations

import math
from typing import Final

import msgspec
from aiohttp import web


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    # Class-level defaults; an instance may override them (status of a passed-through error).
    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> bytes:
        return _encode(ErrorEnvelope(ErrorBody(self.message, self.type, self.code, self.param)))

    def response(self) -> web.Response:
        return web.Response(
            body=self.body(),
            status=self.status,
            content_type="application/json",
            headers=self.headers,
        )


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class QuotaExceeded(ApiError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


# The Retry-After of a provider's 429 that gave none: the client waits about as long as
# the gateway's own first retry would have.
UPSTREAM_RETRY_AFTER_S: Final = 1.0


# A provider refused the gateway's credentials (a 401 or 403, an expired token): 502.
PROVIDER_AUTH_FAILED: Final = "provider_auth_failed"


class UpstreamError(ApiError):
    """The provider answered with an error, could not be reached, or timed out.

    `status` is what the client sees (`providers.faults` maps the provider's): 429 for a
    provider's rate limit, with Retry-After headers; the provider's other 4xx pass
    through, 401/403 become 502; 5xx and transport failures are 502; timeouts 504.
    `upstream_status` keeps what the provider said (0 for transport failures) so routing
    can decide whether to try elsewhere.
    """

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        upstream_status: int = 0,
        code: str | None = None,
        type_: str | None = None,
        retry_after: float | None = None,
        reason: str = "error",
    ) -> None:
        super().__init__(message, code=code, status=status)
        if type_:
            self.type = type_
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.reason = reason  # short label for metrics: status code, "timeout", "connect", ...
        if status == 429:
            # An SDK backs off on a 429 for as long as these say (OpenAI's reads the
            # milliseconds first), where it would retry a 502 at once.
            wait = UPSTREAM_RETRY_AFTER_S if retry_after is None else retry_after
            self.headers["retry-after"] = str(math.ceil(wait))
            self.headers["retry-after-ms"] = str(math.ceil(wait * 1000))

    @property
    def retryable(self) -> bool:
        """Could this succeed on another attempt or another model?"""
        return self.upstream_status not in (400, 401, 403, 404, 413, 422)

    @property
    def falls_back(self) -> bool:
        """Could another model answer? Whatever is retryable, and a provider refusing the
        gateway's own credentials: no retry fixes that, another provider has its own."""
        return self.retryable or self.code == PROVIDER_AUTH_FAILED

    def after_attempts(self, message: str) -> UpstreamError:
        """The client's answer when every attempt failed and this one came last: a 502,
        except a provider's rate limit, which stays a 429 with its Retry-After."""
        limited = self.status == 429
        return UpstreamError(
            message,
            status=429 if limited else 502,
            upstream_status=self.upstream_status,
            code=self.code if limited or self.code == PROVIDER_AUTH_FAILED else None,
            type_=self.type if limited else None,
            retry_after=self.retry_after,
            reason=self.reason,
        )


def malformed_response(provider: str) -> UpstreamError:
    """A provider's answer the gateway cannot read: a 502 that falls back to another model."""
    return UpstreamError(
        f"Upstream provider `{provider}` sent a malformed response.", reason="malformed"
    )


def malformed_event(provider: str) -> UpstreamError:
    """A stream event a provider sent that the gateway cannot read."""
    return UpstreamError(f"Upstream provider `{provider}` sent a malformed event.",
                         reason="malformed")


def stream_cut(provider: str) -> UpstreamError:
    """A provider's stream that ended before its end (no finish, no `[DONE]`)."""
    return UpstreamError(f"The stream from upstream provider `{provider}` ended early.",
                         reason="cut")


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str, *, reason: str = "timeout") -> None:
        super().__init__(message, status=504, code="upstream_timeout", reason=reason)
        self.type = "timeout_error"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class IdempotencyInProgress(ApiError):
    """A repeat of an `Idempotency-Key` whose first request is still in flight."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_in_progress"


class IdempotencyKeyReused(ApiError):
    """An `Idempotency-Key` sent again with another request than the one it was first used for."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"
