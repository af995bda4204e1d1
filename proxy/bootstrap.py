"""First-start setup done once, in the parent process, before workers start.

The key-hashing secret and the admin key's hash live in the data directory. The admin key
is `PROXY_ADMIN_KEY` when set; otherwise one is generated on the first start, printed once,
and only its keyed hash is kept.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Final

from .auth import generate_key, key_digest
from .config import Settings

SECRET_ENV: Final = "PROXY_KEY_SECRET"


def _write_private(path: Path, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def key_secret(settings: Settings) -> bytes:
    """The HMAC secret keys are hashed with: env `PROXY_KEY_SECRET`, else a generated file.

    Instances that share one key database must share this secret (set the variable).
    """
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = Path(settings.data_dir) / "key-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_private(path, secrets.token_hex(32))
        except FileExistsError:
            pass  # another worker won the race
    return path.read_text().strip().encode()


def admin_digest(settings: Settings, secret: bytes, announce: bool = True) -> str:
    if settings.admin_key:
        return key_digest(secret, settings.admin_key)
    path = Path(settings.data_dir) / "admin-key.hmac"
    if path.exists():
        return path.read_text().strip()
    key = generate_key()
    digest = key_digest(secret, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_private(path, digest)
    except FileExistsError:
        return path.read_text().strip()
    if announce:
        print(
            "\n  Admin key (printed once; only its hash is stored):\n\n"
            f"    {key}\n\n  Set PROXY_ADMIN_KEY to choose your own.\n",
            file=sys.stdout,
            flush=True,
        )
    return digest
