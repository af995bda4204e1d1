"""AWS Signature Version 4 for Bedrock Runtime, by botocore (service `bedrock`).

botocore is AWS's own implementation, the one boto3 and the AWS CLI sign with: the
canonical request (a model id's `:` is encoded twice in the path, as SigV4 wants for
every service but S3), the scope and the session token are its concern, not ours. A
signature covers the body's hash and the time, so each request is signed on its own
(measured: see `tests/test_bedrock_signing.py` for what one costs).

Credentials come from the standard environment variables, read when the provider is
built: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for temporary credentials,
`AWS_SESSION_TOKEN`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE: Final = "bedrock"


class Signer:
    __slots__ = ("_auth", "access_key", "secret_key", "token")

    def __init__(self, region: str, access_key: str, secret_key: str, token: str | None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token
        self._auth = SigV4Auth(Credentials(access_key, secret_key, token), SERVICE, region)

    @classmethod
    def from_env(cls, region: str, env: Mapping[str, str]) -> Signer | None:
        """None when the environment holds no key pair."""
        access_key = env.get("AWS_ACCESS_KEY_ID")
        secret_key = env.get("AWS_SECRET_ACCESS_KEY")
        if not access_key or not secret_key:
            return None
        return cls(region, access_key, secret_key, env.get("AWS_SESSION_TOKEN") or None)

    def headers(self, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` plus the signature's (`X-Amz-Date`, `Authorization` and, with a
        session token, `X-Amz-Security-Token`) for a POST of `body` to `url`."""
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        self._auth.add_auth(request)
        return dict(request.headers.items())
