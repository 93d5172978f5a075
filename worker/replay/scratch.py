"""Databases next to the live one: a target created on demand, and scratch
databases created and dropped on the live server for a rebuild or a
reprocess to compare against."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from worker.adapters import postgres


def with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(dsn: str) -> bool:
    """Create the database `dsn` names if it does not exist; True if created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await admin.execute(f"CREATE DATABASE {_ident(database_name(dsn))}")
    finally:
        await admin.close()
    return True


@contextlib.asynccontextmanager
async def scratch_database(live_dsn: str, purpose: str) -> AsyncIterator[str]:
    """A fresh, migrated database on the live server, dropped afterwards."""
    name = f"{purpose}_{uuid.uuid4().hex[:12]}"
    # CREATE DATABASE runs from any database of the server; the live one is
    # the one we know we may connect to.
    admin = await asyncpg.connect(live_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {_ident(name)}")
    finally:
        await admin.close()
    dsn = with_database(live_dsn, name)
    try:
        await postgres.migrate(dsn)
        yield dsn
    finally:
        admin = await asyncpg.connect(live_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        finally:
            await admin.close()
