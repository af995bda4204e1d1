"""API keys: the store (PostgreSQL or SQLite), the in-process cache, invalidation."""

from __future__ import annotations

from ..config import Settings
from ..migrate import is_sqlite, sqlite_path
from .events import KeyEvents
from .model import KeyRow
from .registry import KeyRegistry
from .sqlite import SqliteKeyStore
from .store import KeyStore, PostgresKeyStore

__all__ = ["KeyEvents", "KeyRegistry", "KeyRow", "KeyStore", "create_registry"]


def create_registry(settings: Settings) -> KeyRegistry:
    url = settings.database_url
    store: KeyStore = SqliteKeyStore(sqlite_path(url)) if is_sqlite(url) else PostgresKeyStore(url)
    events = KeyEvents(settings.redis_url, settings.redis_namespace) if settings.redis_url else None
    return KeyRegistry(store, events)
