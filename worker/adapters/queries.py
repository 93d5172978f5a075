"""Reads outside the unit of work, by name: what the expiry scheduler acts on
(due expiries, the next one, the database-wide gauges). Each takes a pool or
a connection and returns typed rows; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from worker.adapters.store import Conn

Reader = Conn | asyncpg.Pool


@dataclass(frozen=True)
class DueExpiry:
    """An active admission whose hold window has run out: the scheduler
    publishes its expiry."""

    grant_digest: str
    experience_id: str
    consumer_id: str
    expires_at: datetime


# --- the scheduler's reads ---------------------------------------------------------


async def due_expiries(db: Reader, now: datetime, limit: int) -> list[DueExpiry]:
    """Active admissions whose window ended at or before `now`, oldest first."""
    rows = await db.fetch(
        """SELECT admission_grant, experience_id, consumer_id, expires_at FROM admissions
           WHERE status = 'active' AND expires_at <= $1
           ORDER BY expires_at LIMIT $2""",
        now,
        limit,
    )
    return [
        DueExpiry(r["admission_grant"], r["experience_id"], r["consumer_id"], r["expires_at"])
        for r in rows
    ]


async def next_expiry(db: Reader, now: datetime) -> datetime | None:
    """When the next active admission's window ends after `now`; None: none does."""
    at: datetime | None = await db.fetchval(
        "SELECT min(expires_at) FROM admissions WHERE status = 'active' AND expires_at > $1",
        now,
    )
    return at


async def active_hold_count(db: Reader) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM reservations WHERE status = 'active'")
    return count


async def last_reconcile_drift(db: Reader) -> int | None:
    """Stock rows found drifting by the latest reconcile run; None: never run."""
    drift: int | None = await db.fetchval(
        "SELECT drift_rows FROM reconcile_runs ORDER BY id DESC LIMIT 1"
    )
    return drift
