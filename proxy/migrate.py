"""Numbered SQL migrations for PostgreSQL (`sql/NNNN_*.sql`) and SQLite (`sql/sqlite/NNNN_*.sql`).

Each file runs once, in its own transaction, and is recorded in `schema_migrations`.
Running again applies nothing. Concurrent starters (several workers) serialize on an
advisory lock in PostgreSQL and on SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Final

import asyncpg

SQL_DIR: Final = Path(__file__).resolve().parent.parent / "sql"
_LOCK_ID: Final = 0x70726F7879  # "proxy"


def sqlite_path(database_url: str) -> str:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` to a filesystem path."""
    return database_url.removeprefix("sqlite:///")


def is_sqlite(database_url: str) -> bool:
    return database_url.startswith("sqlite:///")


def _files(folder: Path) -> list[tuple[str, Path]]:
    return sorted((p.name.split("_", 1)[0], p) for p in folder.glob("[0-9]*_*.sql"))


async def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the versions applied."""
    if is_sqlite(database_url):
        return await asyncio.to_thread(_migrate_sqlite, sqlite_path(database_url))
    return await _migrate_postgres(database_url)


async def _migrate_postgres(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, path in _files(SQL_DIR):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
        finally:
            await conn.close()
    return applied


def _migrate_sqlite(path: str) -> list[str]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    applied: list[str] = []
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")  # one migrator at a time
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, file in _files(SQL_DIR / "sqlite"):
            if version in done:
                continue
            # executescript would COMMIT our transaction; split statements instead.
            for statement in _statements(file.read_text()):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            applied.append(version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return applied


def _statements(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
