"""OAuth access tokens for Vertex AI, from Google's Application Default Credentials.

`google-auth` finds the credentials (`GOOGLE_APPLICATION_CREDENTIALS`: a service
account's key file, whose `token_uri` names the token endpoint; or a workload identity,
or a VM's metadata server) and fetches tokens. Its calls block (file reads, an HTTP
exchange through `requests`), so they run in a thread, and rarely: a token lives an hour.

The request path reads the cached `Authorization` header, nothing more. The first call
fetches a token (once for all the calls that arrive meanwhile) and starts a refresher
that replaces the token shortly before it expires (`margin`), retrying with backoff while
the old token is still good; a call only waits for a token when there is no valid one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Final

import google.auth
import google.auth.exceptions
from google.auth.credentials import Credentials
import requests
from google.auth.transport.requests import Request

log = logging.getLogger(__name__)

SCOPES: Final = ("https://www.googleapis.com/auth/cloud-platform",)
_MARGIN_S: Final = 300.0  # refresh this long before expiry (a quarter of a shorter life)
_RETRY_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_MISSING_S: Final = 30.0
_MIN_REFRESH_S: Final = 1.0  # credentials not found: look again after this long


class TokenError(Exception):
    """No credentials, or the token endpoint refused or could not be reached."""

    def __init__(self, message: str, *, configured: bool) -> None:
        super().__init__(message)
        self.configured = configured  # False: there are no credentials to try at all


Loader = Callable[[], tuple[Credentials, str | None]]


def load_default() -> tuple[Credentials, str | None]:
    """Application Default Credentials and the project they name (blocking)."""
    try:
        credentials, project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise TokenError(f"no Google credentials: {e}", configured=False) from None
    return credentials, project


class AccessTokens:
    """The current `Bearer` header, kept fresh by a background task once first asked for."""

    def __init__(self, load: Loader = load_default, margin_s: float = _MARGIN_S) -> None:
        self._load = load
        self._margin_s = margin_s
        self._credentials: Credentials | None = None
        self.project: str | None = None  # the credentials' project, once loaded
        self._header: str | None = None
        self._expires_at = 0.0  # wall-clock seconds
        self._fetching: asyncio.Future[None] | None = None
        self._missing: tuple[float, TokenError] | None = None  # until when, and why
        self._refresher: asyncio.Task[None] | None = None
        self.fetches = 0  # tokens fetched (for tests and logs)
        # One HTTP session for every token fetch (a `Request()` each would leave a pool open).
        self._session = requests.Session()
        self._transport = Request(self._session)

    def current(self) -> str | None:
        """The header while its token is valid; None when a call must wait for one."""
        if self._header is not None and time.time() < self._expires_at:
            return self._header
        return None

    async def header(self) -> str:
        """The header, fetching a token first if there is no valid one."""
        header = self.current()
        if header is None:
            await self._fetch_once()
            header = self.current()
            if header is None:  # pragma: no cover - a token that expired as it came
                raise TokenError("the token endpoint issued an expired token", configured=True)
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
        return header

    def invalidate(self, header: str) -> None:
        """The API refused `header` (revoked, say): the next call fetches a new token."""
        if header == self._header:
            self._expires_at = 0.0

    async def close(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._session.close()

    async def _fetch_once(self) -> None:
        """One fetch for every caller waiting at the same time."""
        if self._fetching is None:
            fetching = asyncio.ensure_future(self._fetch())
            self._fetching = fetching
            fetching.add_done_callback(self._fetched)
        await asyncio.shield(self._fetching)

    def _fetched(self, fut: asyncio.Future[None]) -> None:
        self._fetching = None
        if not fut.cancelled():
            fut.exception()  # retrieved here: the waiters raise it themselves

    async def _fetch(self) -> None:
        credentials = self._credentials
        if credentials is None:
            # Looking for credentials may probe a metadata server: a miss is remembered.
            if self._missing is not None and time.monotonic() < self._missing[0]:
                raise self._missing[1]
            try:
                loaded, self.project = await asyncio.to_thread(self._load)
            except TokenError as e:
                self._missing = (time.monotonic() + _MISSING_S, e)
                raise
            credentials = self._credentials = loaded
        try:
            await asyncio.to_thread(credentials.refresh, self._transport)
        except google.auth.exceptions.GoogleAuthError as e:
            raise TokenError(f"could not get an access token: {e}", configured=True) from None
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise TokenError("the token endpoint returned no token", configured=True)
        expiry = credentials.expiry  # naive UTC, as google-auth keeps it
        if expiry is None:
            expires_at = time.time() + 3600.0
        else:
            expires_at = expiry.replace(tzinfo=dt.UTC).timestamp()
        self._header = f"Bearer {token}"
        self._expires_at = expires_at
        self.fetches += 1

    def _next_refresh_in(self) -> float:
        # Never sooner than a second: a token endpoint that issues tokens already expiring
        # must not turn the refresher into a busy loop against it.
        life = self._expires_at - time.time()
        return max(life - min(self._margin_s, life / 4), _MIN_REFRESH_S)

    async def _refresh_loop(self) -> None:
        failures = 0
        while True:
            if failures:
                await asyncio.sleep(_RETRY_S[min(failures, len(_RETRY_S)) - 1])
            else:
                await asyncio.sleep(self._next_refresh_in())
            try:
                await self._fetch_once()
            except TokenError as e:
                failures += 1
                log.warning("vertex: token refresh failed (try %d): %s", failures, e)
            except Exception as e:  # noqa: BLE001 - the refresher must outlive a surprise: log, retry
                failures += 1
                log.warning("vertex: token refresh failed (try %d): %s", failures,
                            type(e).__name__)
            else:
                failures = 0
