"""PostgreSQL: connection pool and ordered, concurrency-safe migrations."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg

from worker.logs import get_logger

log = get_logger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
# Any constant shared by every migrating process: two `migrate` runs at once
# queue on this lock instead of racing on DDL.
MIGRATION_LOCK_KEY = 0x46414E46415245  # "FANFARE"

# PostgreSQL, or the road to it, is away: nothing about the request or the
# command is wrong, so callers answer 503 or pause and try again.
UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    ConnectionError,
    OSError,
    TimeoutError,
)
# Worth running the same transaction again: the server is away, or it chose
# this transaction as the victim of a deadlock or a serialization conflict.
RETRYABLE: tuple[type[BaseException], ...] = (
    *UNREACHABLE,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
# Anything the database can fail with: a leader loop (scheduler, relay) steps
# down and starts over rather than dying on a failed statement.
FAILURES: tuple[type[BaseException], ...] = (*UNREACHABLE, asyncpg.PostgresError)


# Every statement planned for the tables as they are when it runs. A drop
# fills admissions, reservations and carts from empty within seconds, far
# faster than autovacuum analyzes them, and a prepared statement's generic
# plan, made once while a table was empty, is kept until its statistics
# change: the batch's hold lookup by consumer then probed the operators'
# listing index (experience, created_at) and filtered every hold of the drop
# for each consumer (measured: 100-400 ms per batch of 500 admissions at
# 1,000 holds; PostgreSQL CPU per hot-SKU admission ~270 us, ~70 us planned
# afresh). Planning a batch's dozen statements costs far less.
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def create_pool(dsn: str, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=60,
        server_settings=SESSION_SETTINGS,
    )
    assert pool is not None
    return pool


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    return sorted(p for p in sql_dir.glob("[0-9][0-9][0-9]_*.sql"))


async def migrate(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations in order; returns the names applied now."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            done = await _applied_migrations(conn)
            return await _apply_pending(conn, sql_dir, done)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


async def _applied_migrations(conn: asyncpg.Connection) -> dict[str, str]:
    """The migrations applied before, by name, with their checksums."""
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               name TEXT PRIMARY KEY,
               checksum TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
    )
    return {
        r["name"]: r["checksum"]
        for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
    }


async def _apply_pending(
    conn: asyncpg.Connection, sql_dir: Path, done: dict[str, str]
) -> list[str]:
    """Each migration not applied yet, in its own transaction; one applied
    before must be unchanged."""
    applied_now: list[str] = []
    for path in migration_files(sql_dir):
        text = path.read_text()
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if path.name in done:
            if done[path.name] != checksum:
                raise RuntimeError(
                    f"migration {path.name} changed after it was applied; "
                    "add a new migration instead"
                )
            continue
        async with conn.transaction():
            await conn.execute(text)
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                path.name,
                checksum,
            )
        applied_now.append(path.name)
        log.info("migration_applied", migration=path.name)
    return applied_now
