"""A fake Google OAuth 2.0 token endpoint, and service account key files that point at it.

`POST /token` takes what google-auth sends for a service account (RFC 7523): form fields
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion`, a JWT signed
with the account's private key, whose audience is the token URI. The fake checks the
signature against the account's public key, the audience (Google's token endpoint, as
google-auth writes it, or this one), the scope and the expiry, and answers
`{"access_token", "expires_in", "token_type": "Bearer"}`. Tokens it issued are in
`issued`, for the fake Vertex AI to accept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

GRANT: str = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs the grant for Google's token endpoint whatever `token_uri` says.
GOOGLE_AUDIENCE: str = "https://oauth2.googleapis.com/token"


class FakeGoogleToken:
    """`expires_in` sets the life of the tokens it issues; `fail_next` refuses that many
    requests with 400 `invalid_grant` (as Google does to a key with a skewed clock)."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.fail_next = 0
        self.hits = 0
        self.issued: set[str] = set()
        self.last_issued = ""
        self.url = ""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self._runner: web.AppRunner | None = None

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def key_file(self, directory: Path, project: str = "fake-project") -> Path:
        """A service account key file, as the Cloud console downloads one."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info: dict[str, Any] = {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "fakekeyid0001",
            "private_key": pem,
            "client_email": f"gateway@{project}.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }
        path = directory / "service-account.json"
        path.write_text(json.dumps(info))
        return path

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/token", self._token)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _token(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT: Token must be a "
                 "short-lived token (60 minutes) and in a reasonable timeframe."}, status=400)
        form = await request.post()
        if form.get("grant_type") != GRANT or not isinstance(form.get("assertion"), str):
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "jwt-bearer only"},
                status=400)
        try:
            # google-auth leaves jwt.decode unannotated; it returns the claims mapping.
            claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                str(form["assertion"]), certs=self._public_pem,
                audience=[GOOGLE_AUDIENCE, self.token_uri])
        except ValueError as e:
            return web.json_response(
                {"error": "invalid_grant", "error_description": f"Invalid JWT: {e}"}, status=400)
        if "cloud-platform" not in str(claims.get("scope", "")) or claims["exp"] < time.time():
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = f"ya29.fake-token-{self.hits:04d}"
        self.issued.add(token)
        self.last_issued = token
        return web.json_response(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})
